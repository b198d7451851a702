"""Bad input is refused with problem+json and nothing written; roles and unit scopes are enforced."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared.testing import token
from training.service import local_today

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.asyncio(loop_scope="module")]

ADMIN = token("admin")
PROBLEM = "application/problem+json"


def course(code: str, **over: Any) -> dict[str, Any]:
    body = {
        "client_ref": f"ref-{code}",
        "code": code,
        "title": "Kỹ năng số cho thiếu nhi",
        "team_code": "LIT-HL",
        "unit_code": "QN-HL",
        "audience": "youth_children",
        "mode": "in_person",
        "topics": ["digital_skills", "online_safety"],
        "starts_on": "2025-07-01",
        "ends_on": "2025-07-31",
    }
    return {**body, **over}


def session(ref: str, held_on: str = "2025-07-05", **attendance: Any) -> dict[str, Any]:
    return {"client_ref": ref, "held_on": held_on, "duration_minutes": 60, "attendance": attendance}


async def refused(response: Any, status: int, slug: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    if slug:
        assert response.json()["type"].endswith("/" + slug), response.json()


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"starts_on": "2025-07-10", "ends_on": "2025-07-09"}, "body"),
        ({"audience": "veterans"}, "audience"),
        ({"topics": ["vneid", "cooking"]}, "topics.1"),
        ({"mode": "radio"}, "mode"),
        ({"code": "bad code!"}, "code"),
    ],
)
async def test_invalid_course_is_refused_and_not_stored(training, over: dict[str, Any], field: str) -> None:
    r = await training.client.post("/v1/courses", json={**course("BAD-C"), **over}, headers=ADMIN)
    await refused(r, 422, "validation")
    assert any(e["field"] == field for e in r.json()["errors"]), r.json()
    assert await training.db["courses"].count_documents({"client_ref": "ref-BAD-C"}) == 0


@pytest.mark.parametrize(
    ("over", "slug"),
    [
        ({"team_code": "OLD-HL"}, "team-inactive"),
        ({"team_code": "LIT-VD"}, "unit-outside-team"),
        ({"team_code": "CAMP-NOTEACH"}, "team-cannot-teach"),
        ({"unit_code": "QN"}, "unit-outside-team"),
    ],
)
async def test_course_with_invalid_registry_references_is_refused(training, over: dict[str, Any], slug: str) -> None:
    r = await training.client.post("/v1/courses", json=course("BAD-REF", **over), headers=ADMIN)
    await refused(r, 422, slug)
    assert await training.course_doc("BAD-REF") is None


async def test_team_with_a_teaching_member_may_run_a_course_in_a_unit_below_its_own(training) -> None:
    body = course("CAMP-SCHOOL", team_code="CAMP-HL", unit_code="QN-HL-THPT")
    r = await training.client.post("/v1/courses", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["unit_path"]) == ("scheduled", ["QN", "QN-HL", "QN-HL-THPT"])


async def test_bad_sessions_and_enrolments_are_refused_with_nothing_written(training) -> None:
    c = training.client
    today = local_today()
    body = course("RULES", capacity=2, ends_on=(today + timedelta(days=30)).isoformat())
    assert (await c.post("/v1/courses", json=body, headers=ADMIN)).status_code == 201
    ids = []
    for i in range(2):
        r = await c.post(
            "/v1/courses/RULES/participants", json={"client_ref": f"RULES/p{i}", "group": "child"}, headers=ADMIN
        )
        ids.append(r.json()["id"])
    other = course("RULES-2", client_ref="ref-RULES-2")
    assert (await c.post("/v1/courses", json=other, headers=ADMIN)).status_code == 201
    stranger = await c.post(
        "/v1/courses/RULES-2/participants", json={"client_ref": "RULES-2/p", "group": "youth"}, headers=ADMIN
    )
    stranger_id = stranger.json()["id"]

    before = await training.counts("RULES")
    checks = [
        (session("RULES/s1", count=3), 422, "attendance-over-enrolment"),
        (session("RULES/s2", "2025-06-30", count=1), 422, "session-outside-course"),
        (session("RULES/s3", (today + timedelta(days=1)).isoformat(), count=1), 422, "session-in-future"),
        (session("RULES/s4", participant_ids=[ids[0], stranger_id]), 422, "participant-not-enrolled"),
        (session("RULES/s5", participant_ids=[ids[0], ids[0]]), 422, "validation"),
        ({**session("RULES/s6", count=1), "attendance": {"count": 1, "participant_ids": []}}, 422, "validation"),
    ]
    for payload, status, slug in checks:
        await refused(await c.post("/v1/courses/RULES/sessions", json=payload, headers=ADMIN), status, slug)
    full = await c.post(
        "/v1/courses/RULES/participants", json={"client_ref": "RULES/p9", "group": "child"}, headers=ADMIN
    )
    await refused(full, 409, "course-full")
    await refused(await c.post("/v1/courses/RULES/participants/nobody:complete", headers=ADMIN), 404, "not-enrolled")
    await refused(
        await c.post(f"/v1/courses/RULES/participants/{stranger_id}:complete", headers=ADMIN), 404, "not-enrolled"
    )
    await refused(await c.post("/v1/courses/NO-SUCH/participants/x:complete", headers=ADMIN), 404)
    alien = await c.post(
        "/v1/courses/RULES/participants", json={"client_ref": "RULES/p8", "group": "alien"}, headers=ADMIN
    )
    await refused(alien, 422, "validation")
    assert [e["field"] for e in alien.json()["errors"]] == ["group"]
    await refused(
        await c.post("/v1/courses/RULES:complete", json={"final_participants": 5}, headers=ADMIN),
        422,
        "final-participants-mismatch",
    )
    await refused(
        await c.post("/v1/courses/RULES:complete", json={"final_completions": 3}, headers=ADMIN),
        422,
        "final-completions-too-high",
    )
    assert await training.counts("RULES") == before

    # Sessions on a completed course are refused too.
    await c.post(f"/v1/courses/RULES/participants/{ids[0]}:complete", headers=ADMIN)
    await refused(
        await c.post("/v1/courses/RULES:complete", json={"final_completions": 0}, headers=ADMIN),
        422,
        "final-completions-too-low",
    )
    assert (await c.post("/v1/courses/RULES:complete", headers=ADMIN)).json()["completions"] == 1
    before = await training.counts("RULES")
    await refused(
        await c.post("/v1/courses/RULES/sessions", json=session("RULES/s7", count=1), headers=ADMIN),
        409,
        "course-closed",
    )
    assert await training.counts("RULES") == before
    await refused(
        await c.post("/v1/courses/RULES:cancel", json={"reason": "muộn"}, headers=ADMIN), 409, "course-closed"
    )


async def test_head_count_final_completions_cannot_exceed_final_participants(training) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("HC-FINAL"), headers=ADMIN)).status_code == 201
    r = await c.post(
        "/v1/courses/HC-FINAL:complete", json={"final_participants": 10, "final_completions": 11}, headers=ADMIN
    )
    await refused(r, 422, "final-completions-too-high")
    assert (await training.course_doc("HC-FINAL"))["status"] == "scheduled"


async def test_roles_and_scopes_decide_who_may_write_and_read(training) -> None:
    c = training.client
    field_hl = token("field", "QN-HL", teams=["LIT-HL"])
    field_vd = token("field", "QN-VD", teams=["LIT-VD"])
    manager_hl = token("manager", "QN-HL")
    manager_vd = token("manager", "QN-VD")
    viewer_qn = token("viewer", "QN")
    integrator_vd = token("integrator", "QN-VD")

    await refused(await c.post("/v1/courses", json=course("AUTH")), 401)
    await refused(await c.post("/v1/courses", json=course("AUTH"), headers=viewer_qn), 403)
    await refused(await c.post("/v1/courses", json=course("AUTH"), headers=field_vd), 403, "not-your-team")
    await refused(await c.post("/v1/courses", json=course("AUTH"), headers=manager_vd), 403, "out-of-scope")
    assert await training.course_doc("AUTH") is None
    assert (await c.post("/v1/courses", json=course("AUTH"), headers=manager_hl)).status_code == 201

    part = {"client_ref": "AUTH/p", "group": "youth"}
    await refused(await c.post("/v1/courses/AUTH/participants", json=part, headers=field_vd), 403)
    await refused(await c.post("/v1/courses/AUTH/participants", json=part, headers=manager_vd), 403)
    await refused(await c.post("/v1/courses/AUTH/participants", json=part, headers=viewer_qn), 403)
    assert (await c.post("/v1/courses/AUTH/participants", json=part, headers=field_hl)).status_code == 201

    assert (await c.get("/v1/courses/AUTH", headers=viewer_qn)).status_code == 200
    assert (await c.get("/v1/courses/AUTH/participants", headers=field_hl)).status_code == 200
    await refused(await c.get("/v1/courses/AUTH", headers=integrator_vd), 403)
    await refused(await c.get("/v1/courses/AUTH", headers=field_vd), 403)
    await refused(await c.get("/v1/courses/NOPE", headers=ADMIN), 404)


async def test_course_list_filters_by_subtree_team_audience_mode_status_and_dates(training) -> None:
    c = training.client
    specs = [
        course("L-1", client_ref="L-1", starts_on="2025-07-01"),
        course("L-2", client_ref="L-2", unit_code="QN-HL-THPT", audience="elderly_middle_aged", starts_on="2025-07-15"),
        course("L-3", client_ref="L-3", team_code="LIT-VD", unit_code="QN-VD", mode="online", starts_on="2025-07-20"),
    ]
    for s in specs:
        assert (await c.post("/v1/courses", json=s, headers=ADMIN)).status_code == 201
    await c.post("/v1/courses/L-1:cancel", json={"reason": "thiếu giáo viên"}, headers=ADMIN)

    async def codes(query: str, headers: dict[str, str] = ADMIN) -> set[str]:
        r = await c.get(f"/v1/courses?{query}", headers=headers)
        assert r.status_code == 200, r.text
        return {i["code"] for i in r.json()["items"]} & {"L-1", "L-2", "L-3"}

    assert await codes("unit=QN-HL") == {"L-1", "L-2"}
    assert await codes("unit=QN-HL-THPT") == {"L-2"}
    assert await codes("team=LIT-VD") == {"L-3"}
    assert await codes("audience=elderly_middle_aged") == {"L-2"}
    assert await codes("mode=online") == {"L-3"}
    assert await codes("status=cancelled") == {"L-1"}
    assert await codes("starts_from=2025-07-10&starts_to=2025-07-16") == {"L-2"}
    assert await codes("unit=QN-VD", token("manager", "QN-HL")) == set()
    assert await codes("", token("manager", "QN-HL")) == {"L-1", "L-2"}
    assert await codes("", token("field", None, teams=["LIT-VD"])) == {"L-3"}
    await refused(await c.get("/v1/courses?audience=veterans", headers=ADMIN), 422)

    seen: list[str] = []
    cursor = ""
    while True:
        r = (await c.get(f"/v1/courses?limit=2{cursor}", headers=ADMIN)).json()
        seen += [i["code"] for i in r["items"]]
        if r["next_cursor"] is None:
            break
        cursor = f"&cursor={r['next_cursor']}"
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) >= 3
