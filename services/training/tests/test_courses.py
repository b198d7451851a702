"""Course lifecycle, counting rule, idempotent intake and ordering, against real Kafka and FerretDB."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.contracts import training as ev
from shared.testing import token

from .factories import course, session

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.asyncio(loop_scope="module")]

ADMIN = token("admin")
FIELD_HL = token("field", "QN-HL", teams=["LIT-HL"])


def change(data: dict[str, Any], name: str = "participants") -> tuple[int, int]:
    return data[name]["before"], data[name]["after"]


async def test_roster_course_lifecycle_emits_every_event_in_order_on_one_key_and_partition(training) -> None:
    c = training.client
    r = await c.post("/v1/courses", json=course("R-LIFE", capacity=30), headers=FIELD_HL)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "scheduled"
    assert r.json()["unit_path"] == ["QN", "QN-HL"]

    names = ["Nguyễn Thị Hương", "Trần Văn Đức", "Lê Thị Mai"]
    ids = []
    for i, name in enumerate(names):
        r = await c.post(
            "/v1/courses/R-LIFE/participants",
            json={"client_ref": f"R-LIFE/p{i}", "display_name": name, "birth_year": 1955 + i, "group": "elderly"},
            headers=FIELD_HL,
        )
        assert r.status_code == 201, r.text
        assert r.json()["display_name"] == name
        ids.append(r.json()["id"])

    r = await c.post(
        "/v1/courses/R-LIFE/sessions", json=session("R-LIFE/s1", participant_ids=ids[:2]), headers=FIELD_HL
    )
    assert r.status_code == 201, r.text
    assert r.json()["attendance_kind"] == "roster"
    assert r.json()["attendance"] == 2
    r = await c.post("/v1/courses/R-LIFE/sessions", json=session("R-LIFE/s2", "2025-07-06", count=3), headers=FIELD_HL)
    assert r.status_code == 201, r.text
    for pid in ids[:2]:
        r = await c.post(f"/v1/courses/R-LIFE/participants/{pid}:complete", headers=FIELD_HL)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "completed"
    r = await c.post("/v1/courses/R-LIFE:complete", json={"final_completions": 2}, headers=FIELD_HL)
    assert r.status_code == 200, r.text
    done = r.json()
    assert (done["status"], done["participants"], done["completions"]) == ("completed", 3, 2)
    again = await c.post("/v1/courses/R-LIFE:complete", json={"final_completions": 2}, headers=FIELD_HL)
    assert again.status_code == 200
    assert again.json() == done

    got = await training.events("R-LIFE", 10)
    types = [p.envelope.type for p in got]
    assert types == [
        ev.COURSE_SCHEDULED,
        ev.PARTICIPANT_ENROLLED,
        ev.PARTICIPANT_ENROLLED,
        ev.PARTICIPANT_ENROLLED,
        ev.COURSE_STARTED,
        ev.SESSION_HELD,
        ev.SESSION_HELD,
        ev.PARTICIPANT_COMPLETED,
        ev.PARTICIPANT_COMPLETED,
        ev.COURSE_COMPLETED,
    ]
    assert {p.envelope.key for p in got} == {"R-LIFE"}
    assert len({p.partition for p in got}) == 1
    data = [p.envelope.data for p in got]
    assert [change(d) for d in data[1:4]] == [(0, 1), (1, 2), (2, 3)]
    assert data[4]["started_on"] == "2025-07-05"
    assert change(data[5]) == (3, 3)
    assert data[5]["attendance_kind"] == "roster"
    assert change(data[6]) == (3, 3)
    assert data[6]["attendance"] == 3
    assert [change(d, "completions") for d in data[7:9]] == [(0, 1), (1, 2)]
    assert change(data[9]) == (3, 3)
    assert change(data[9], "completions") == (2, 2)
    assert data[9]["final_participants"] == 3
    for d in data:
        assert d["course"]["unit_path"] == ["QN", "QN-HL"]
        assert d["course"]["audience"] == "elderly_middle_aged"
        assert d["course"]["mode"] == "in_person"
    # Names are personal data: they stay in the training service.
    assert not any(name in str(d) for d in data for name in names)


async def test_head_count_course_counts_largest_head_count_then_final_count(training) -> None:
    c = training.client
    body = course("H-COUNT", audience="youth_children", topics=["digital_skills"], mode="online")
    assert (await c.post("/v1/courses", json=body, headers=ADMIN)).status_code == 201
    for i, count in enumerate((30, 38, 25)):
        r = await c.post(
            "/v1/courses/H-COUNT/sessions",
            json=session(f"H-COUNT/s{i}", f"2025-07-0{i + 2}", count=count),
            headers=ADMIN,
        )
        assert r.status_code == 201, r.text
    doc = (await c.get("/v1/courses/H-COUNT", headers=ADMIN)).json()
    assert (doc["counting"], doc["participants"], doc["largest_head_count"], doc["status"]) == (
        "head_count",
        38,
        38,
        "running",
    )
    participants = (await c.get("/v1/courses/H-COUNT/participants", headers=ADMIN)).json()
    assert participants["items"] == []
    r = await c.post(
        "/v1/courses/H-COUNT:complete", json={"final_participants": 41, "final_completions": 35}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    assert (r.json()["participants"], r.json()["completions"]) == (41, 35)

    got = await training.events("H-COUNT", 6)
    assert [p.envelope.type for p in got] == [
        ev.COURSE_SCHEDULED,
        ev.COURSE_STARTED,
        ev.SESSION_HELD,
        ev.SESSION_HELD,
        ev.SESSION_HELD,
        ev.COURSE_COMPLETED,
    ]
    held = [p.envelope.data for p in got if p.envelope.type == ev.SESSION_HELD]
    assert [change(d) for d in held] == [(0, 30), (30, 38), (38, 38)]
    assert all(d["attendance_kind"] == "head_count" for d in held)
    completed = got[-1].envelope.data
    # An online course says so on every event, so online courses and their participants can be counted.
    assert [p.envelope.data["course"]["mode"] for p in got] == ["online"] * 6
    assert change(completed) == (38, 41)
    assert change(completed, "completions") == (0, 35)


async def test_head_count_course_completed_without_finals_keeps_largest_head_count(training) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("H-NOFINAL"), headers=ADMIN)).status_code == 201
    await c.post("/v1/courses/H-NOFINAL/sessions", json=session("H-NOFINAL/s", count=12), headers=ADMIN)
    r = await c.post("/v1/courses/H-NOFINAL:complete", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert (r.json()["participants"], r.json()["completions"]) == (12, 0)


async def test_first_enrolment_turns_a_head_count_course_into_a_roster_course(training) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("SWITCH"), headers=ADMIN)).status_code == 201
    await c.post("/v1/courses/SWITCH/sessions", json=session("SWITCH/s1", count=20), headers=ADMIN)
    r = await c.post(
        "/v1/courses/SWITCH/participants", json={"client_ref": "SWITCH/p", "group": "youth"}, headers=ADMIN
    )
    assert r.status_code == 201
    doc = (await c.get("/v1/courses/SWITCH", headers=ADMIN)).json()
    assert (doc["counting"], doc["participants"]) == ("roster", 1)
    got = await training.events("SWITCH", 4)
    assert change(got[-1].envelope.data) == (20, 1)


async def test_retried_enrolment_does_not_double(training) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("RETRY"), headers=ADMIN)).status_code == 201
    body = {"client_ref": "RETRY/p1", "display_name": "Phạm Thị Lan", "group": "middle_aged"}
    first = await c.post("/v1/courses/RETRY/participants", json=body, headers=ADMIN)
    assert first.status_code == 201
    again = await c.post("/v1/courses/RETRY/participants", json=body, headers=ADMIN)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    # The same participant sent concurrently, and inside an offline batch, still counts once.
    body2 = {"client_ref": "RETRY/p2", "group": "youth"}
    rs = await asyncio.gather(*(c.post("/v1/courses/RETRY/participants", json=body2, headers=ADMIN) for _ in range(5)))
    assert sorted(r.status_code for r in rs) == [200, 200, 200, 200, 201]
    assert len({r.json()["id"] for r in rs}) == 1
    batch = await c.post(
        "/v1/courses/RETRY/participants",
        json={"items": [body, body2, {"client_ref": "RETRY/p3", "group": "child"}]},
        headers=ADMIN,
    )
    assert batch.status_code == 200, batch.text
    assert [i["status"] for i in batch.json()["items"]] == ["duplicate", "duplicate", "created"]
    assert batch.json()["items"][0]["id"] == first.json()["id"]

    doc = (await c.get("/v1/courses/RETRY", headers=ADMIN)).json()
    assert (doc["enrolled"], doc["participants"]) == (3, 3)
    assert await training.db["participants"].count_documents({"course_code": "RETRY"}) == 3
    got = await training.events("RETRY", 4)
    enrolled = [p.envelope.data for p in got if p.envelope.type == ev.PARTICIPANT_ENROLLED]
    assert [change(d) for d in enrolled] == [(0, 1), (1, 2), (2, 3)]


async def test_enrolment_interrupted_between_its_writes_is_counted_exactly_once_on_retry(training, monkeypatch) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("CRASH"), headers=ADMIN)).status_code == 201
    repo = training.app.state.training._repo
    real_mark = repo.mark_children_applied
    real_update = repo.update_course

    async def crash_after_course_update(kind: str, ids: list[str]) -> None:
        raise ConnectionError("process died after the course write")

    async def crash_before_course_update(*args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("process died before the course write")

    def enrol(ref: str) -> Any:
        return c.post("/v1/courses/CRASH/participants", json={"client_ref": ref, "group": "elderly"}, headers=ADMIN)

    # Crash after the course write (counted, participant not flagged): the retry must not count again.
    monkeypatch.setattr(repo, "mark_children_applied", crash_after_course_update)
    with pytest.raises(ConnectionError):  # the in-process transport re-raises what would be a 500
        await enrol("CRASH/p1")
    monkeypatch.setattr(repo, "mark_children_applied", real_mark)
    r = await enrol("CRASH/p1")
    assert r.status_code == 200, r.text

    # Crash before the course write (participant stored, not counted): the retry counts it once.
    monkeypatch.setattr(repo, "update_course", crash_before_course_update)
    with pytest.raises(ConnectionError):
        await enrol("CRASH/p2")
    monkeypatch.setattr(repo, "update_course", real_update)
    listed = (await c.get("/v1/courses/CRASH/participants", headers=ADMIN)).json()["items"]
    assert [p["client_ref"] for p in listed] == ["CRASH/p1"]  # the uncounted one is not shown as enrolled
    r = await enrol("CRASH/p2")
    assert r.status_code == 201, r.text
    assert (await enrol("CRASH/p2")).status_code == 200

    doc = (await c.get("/v1/courses/CRASH", headers=ADMIN)).json()
    assert doc["enrolled"] == 2
    got = await training.events("CRASH", 3)
    assert [change(p.envelope.data) for p in got[1:]] == [(0, 1), (1, 2)]


async def test_cancelling_a_running_course_zeroes_its_figures_and_closes_it(training) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("CANCEL"), headers=ADMIN)).status_code == 201
    pids = []
    for i in range(2):
        r = await c.post(
            "/v1/courses/CANCEL/participants", json={"client_ref": f"CANCEL/p{i}", "group": "other"}, headers=ADMIN
        )
        pids.append(r.json()["id"])
    await c.post("/v1/courses/CANCEL/sessions", json=session("CANCEL/s", count=2), headers=ADMIN)
    await c.post(f"/v1/courses/CANCEL/participants/{pids[0]}:complete", headers=ADMIN)
    r = await c.post("/v1/courses/CANCEL:cancel", json={"reason": "Bão số 3: lớp học tạm dừng"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["participants"], r.json()["completions"]) == ("cancelled", 0, 0)
    again = await c.post("/v1/courses/CANCEL:cancel", json={"reason": "lần nữa"}, headers=ADMIN)
    assert again.status_code == 200
    assert again.json()["cancel_reason"] == "Bão số 3: lớp học tạm dừng"

    before = await training.counts("CANCEL")
    closed = [
        await c.post("/v1/courses/CANCEL/sessions", json=session("CANCEL/s2", count=1), headers=ADMIN),
        await c.post(
            "/v1/courses/CANCEL/participants", json={"client_ref": "CANCEL/p9", "group": "youth"}, headers=ADMIN
        ),
        await c.post(f"/v1/courses/CANCEL/participants/{pids[1]}:complete", headers=ADMIN),
        await c.post("/v1/courses/CANCEL:complete", headers=ADMIN),
    ]
    assert [r.status_code for r in closed] == [409, 409, 409, 409]
    assert all(r.headers["content-type"] == "application/problem+json" for r in closed)
    assert await training.counts("CANCEL") == before

    got = await training.events("CANCEL", 7)
    assert got[-1].envelope.type == ev.COURSE_CANCELLED
    data = got[-1].envelope.data
    assert change(data) == (2, 0)
    assert change(data, "completions") == (1, 0)
    assert data["reason"] == "Bão số 3: lớp học tạm dừng"
    assert data["course"]["mode"] == "in_person"


async def test_same_client_ref_returns_the_existing_course(training) -> None:
    c = training.client
    first = await c.post("/v1/courses", json=course("IDEM"), headers=ADMIN)
    again = await c.post("/v1/courses", json=course("IDEM"), headers=ADMIN)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    other = await c.post("/v1/courses", json=course("IDEM", client_ref="another"), headers=ADMIN)
    assert other.status_code == 409
    assert len(await training.events("IDEM", 1)) == 1


async def test_session_batch_answers_each_item_in_request_order(training) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("BATCH", capacity=5), headers=ADMIN)).status_code == 201
    items = [
        session("BATCH/s1", "2025-07-02", count=10),
        session("BATCH/s2", "2025-07-03", count=14),
        session("BATCH/s1", "2025-07-02", count=10),
        session("BATCH/s3", "2025-08-15", count=9),
        {"client_ref": "BATCH/s4", "held_on": "2025-07-04", "duration_minutes": 0, "attendance": {"count": 1}},
        session("BATCH/s5", "2025-07-05", count=12),
    ]
    r = await c.post("/v1/courses/BATCH/sessions:batch", json={"items": items}, headers=ADMIN)
    assert r.status_code == 200, r.text
    out = r.json()["items"]
    assert [(i["client_ref"], i["status"]) for i in out] == [
        ("BATCH/s1", "created"),
        ("BATCH/s2", "created"),
        ("BATCH/s1", "duplicate"),
        ("BATCH/s3", "rejected"),
        ("BATCH/s4", "rejected"),
        ("BATCH/s5", "created"),
    ]
    assert out[2]["id"] == out[0]["id"]
    assert out[3]["problem"]["status"] == 422
    assert "outside" in out[3]["problem"]["detail"]
    assert out[4]["problem"]["errors"][0]["field"] == "duration_minutes"
    assert await training.db["sessions"].count_documents({"course_code": "BATCH"}) == 3
    listed = (await c.get("/v1/courses/BATCH/sessions", headers=ADMIN)).json()["items"]
    assert sorted(s["client_ref"] for s in listed) == ["BATCH/s1", "BATCH/s2", "BATCH/s5"]
    assert (await c.get("/v1/courses/BATCH", headers=ADMIN)).json()["participants"] == 14
    too_many = await c.post("/v1/courses/BATCH/sessions:batch", json={"items": items * 84}, headers=ADMIN)
    assert too_many.status_code == 422


async def test_participant_batch_rejects_items_past_capacity_and_keeps_the_rest(training) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("CAP", capacity=2), headers=ADMIN)).status_code == 201
    items = [
        {"client_ref": "CAP/p1", "display_name": "Vũ Minh Châu", "group": "child"},
        {"client_ref": "CAP/p2", "group": "robot"},
        {"client_ref": "CAP/p3", "group": "youth"},
        {"client_ref": "CAP/p4", "group": "youth"},
    ]
    r = await c.post("/v1/courses/CAP/participants", json={"items": items}, headers=ADMIN)
    assert r.status_code == 200, r.text
    out = r.json()["items"]
    assert [i["status"] for i in out] == ["created", "rejected", "created", "rejected"]
    assert out[1]["problem"]["status"] == 422
    assert out[3]["problem"]["status"] == 409
    assert out[3]["problem"]["type"].endswith("course-full")
    assert await training.db["participants"].count_documents({"course_code": "CAP"}) == 2
    page1 = (await c.get("/v1/courses/CAP/participants?limit=1", headers=ADMIN)).json()
    page2 = (await c.get(f"/v1/courses/CAP/participants?limit=1&cursor={page1['next_cursor']}", headers=ADMIN)).json()
    assert page2["next_cursor"] is None
    assert {p["client_ref"] for p in page1["items"] + page2["items"]} == {"CAP/p1", "CAP/p3"}
