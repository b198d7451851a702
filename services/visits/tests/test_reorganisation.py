"""Records naming units that were merged, split or closed: offline devices keep sending old codes."""

from __future__ import annotations

from typing import Any

import pytest

from shared.contracts import visits as ev
from shared.testing import collect_events, token, wait_until
from shared.topics import VISITS_TOPIC

from .conftest import Visits
from .factories import HL, post_body, team, team_moved, unit, unit_closed, unit_merged, unit_split, visit_body

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

ADMIN = token("admin")
CL = ["QN", "QN-CL"]
THCS = [*HL, "QN-HL-THCS"]
CT = ["QN", "QN-CT"]
CLOSE_REASON = "Sáp nhập vào Trường THCS Hạ Long 1"


async def reorganise(app: Visits) -> None:
    """Xã Cẩm La merged into Phường Hạ Long (its team moved first), a school closed, Cô Tô split."""
    await app.registry_sends(
        unit("QN-CL", "Xã Cẩm La", CL),
        team("CL-MOBILE", CL),
        unit("QN-HL-THCS", "Trường THCS Hạ Long 3", THCS, kind="school"),
        unit("QN-CT", "Huyện Cô Tô", CT),
    )
    await app.registry_sends(
        team_moved("CL-MOBILE", HL, CL),
        unit_merged("QN-CL", HL),
        unit_closed("QN-HL-THCS", THCS, CLOSE_REASON),
        unit_split("QN-CT", ["QN-CT-DT", "QN-CT-TL"]),
    )


async def visit_events(app: Visits, count: int) -> list[Any]:
    got = await collect_events(
        app.settings.kafka_bootstrap, [app.settings.topic(VISITS_TOPIC)], count=count, timeout=30, settle=1.0
    )
    return [r.envelope for r in got]


async def test_an_offline_visit_for_a_merged_units_old_code_is_recorded_under_its_successor(seeded: Visits) -> None:
    await reorganise(seeded)
    device = token("field", teams=["CL-MOBILE"], sub="vol-cam-la")
    body = visit_body(team_code="CL-MOBILE", unit_code="QN-CL", volunteer_ids=[])
    r = await seeded.client.post("/v1/visits", json=body, headers=device)
    assert r.status_code == 201, r.text
    visit = r.json()
    assert (visit["status"], visit["unit_code"], visit["unit_path"], visit["resolved_from"]) == (
        "recorded",
        "QN-HL",
        HL,
        "QN-CL",
    )
    stored = await seeded.visits().find_one({"_id": visit["id"]})
    assert (stored["unit_code"], stored["unit_path"], stored["resolved_from"]) == ("QN-HL", HL, "QN-CL")
    # Counted where the unit's figures now live: Phường Hạ Long's subtree.
    listed = await seeded.client.get("/v1/visits", params={"unit": "QN-HL"}, headers=ADMIN)
    assert [v["id"] for v in listed.json()["items"]] == [visit["id"]]

    again = await seeded.client.post("/v1/visits", json=body, headers=device)
    assert again.status_code == 200
    assert (again.json()["id"], again.json()["resolved_from"]) == (visit["id"], "QN-CL")

    corrected = await seeded.client.post(
        f"/v1/visits/{visit['id']}:correct", json={**body, "people": {"total": 5, "elderly": 3}}, headers=device
    )
    assert corrected.status_code == 200, corrected.text
    assert (corrected.json()["unit_code"], corrected.json()["resolved_from"]) == ("QN-HL", "QN-CL")

    post = await seeded.client.post(
        "/v1/outreach", json=post_body(unit_code="QN-CL", team_code="CL-MOBILE"), headers=device
    )
    assert post.status_code == 201, post.text
    assert (post.json()["unit_code"], post.json()["unit_path"], post.json()["resolved_from"]) == (
        "QN-HL",
        HL,
        "QN-CL",
    )

    events = await visit_events(seeded, 3)
    by_type = {e.type: e.data for e in events}
    assert set(by_type) == {ev.VISIT_RECORDED, ev.VISIT_CORRECTED, ev.OUTREACH_PUBLISHED}
    recorded = by_type[ev.VISIT_RECORDED]["figures"]
    assert (recorded["unit_code"], recorded["unit_path"]) == ("QN-HL", HL)
    assert by_type[ev.VISIT_CORRECTED]["figures"]["unit_path"] == HL
    assert by_type[ev.OUTREACH_PUBLISHED]["unit_path"] == HL


async def test_a_closed_or_split_unit_refuses_records_with_a_unit_closed_problem(seeded: Visits) -> None:
    await reorganise(seeded)
    closed = await seeded.client.post(
        "/v1/visits", json=visit_body(team_code="HL-PERM", unit_code="QN-HL-THCS", volunteer_ids=[]), headers=ADMIN
    )
    assert closed.status_code == 409, closed.text
    assert closed.headers["content-type"].startswith("application/problem+json")
    problem = closed.json()
    assert problem["type"].endswith("/unit-closed")
    assert "QN-HL-THCS" in problem["detail"]
    assert CLOSE_REASON in problem["detail"]

    split = await seeded.client.post("/v1/outreach", json=post_body(unit_code="QN-CT", team_code=None), headers=ADMIN)
    assert split.status_code == 409, split.text
    assert split.json()["type"].endswith("/unit-closed")
    assert "QN-CT was split" in split.json()["detail"]
    assert "QN-CT-DT, QN-CT-TL" in split.json()["detail"]
    assert split.json()["successors"] == ["QN-CT-DT", "QN-CT-TL"]

    assert await seeded.visits().count_documents({}) == 0
    assert await seeded.runtime.db["outreach"].count_documents({}) == 0


async def test_a_batch_mixing_an_old_code_a_closed_unit_and_a_normal_record_reports_each(seeded: Visits) -> None:
    await reorganise(seeded)
    old_code = visit_body(team_code="CL-MOBILE", unit_code="QN-CL", volunteer_ids=[])
    closed = visit_body(team_code="HL-PERM", unit_code="QN-HL-THCS", volunteer_ids=[])
    split = visit_body(team_code="HL-PERM", unit_code="QN-CT", volunteer_ids=[])
    normal = visit_body()
    r = await seeded.client.post("/v1/visits:batch", json={"items": [old_code, closed, split, normal]}, headers=ADMIN)
    assert r.status_code == 200, r.text
    results = r.json()["items"]
    assert [x["status"] for x in results] == ["created", "rejected", "rejected", "created"]
    assert [x["resolved_from"] for x in results] == ["QN-CL", None, None, None]
    for rejected in results[1:3]:
        assert rejected["problem"]["status"] == 409
        assert rejected["problem"]["type"].endswith("/unit-closed")
    assert CLOSE_REASON in results[1]["problem"]["detail"]
    assert "QN-CT-DT" in results[2]["problem"]["detail"]

    stored = {d["client_ref"]: d async for d in seeded.visits().find({})}
    assert set(stored) == {old_code["client_ref"], normal["client_ref"]}
    assert stored[old_code["client_ref"]]["unit_path"] == HL
    events = await visit_events(seeded, 2)
    assert sorted(e.data["figures"]["unit_code"] for e in events) == ["QN-HL", "QN-VD"]


async def test_pending_records_are_judged_by_the_merge_or_closure_that_arrives_later(visits_app: Visits) -> None:
    # Nothing is known yet: both records wait.
    merged = visit_body(team_code="MC-MOBILE", unit_code="QN-MC", volunteer_ids=[])
    closing = visit_body(team_code="MC-MOBILE", unit_code="QN-MC-TH9", volunteer_ids=[])
    r = await visits_app.client.post("/v1/visits:batch", json={"items": [merged, closing]}, headers=ADMIN)
    assert [x["status"] for x in r.json()["items"]] == ["pending", "pending"]
    merged_id, closing_id = (x["id"] for x in r.json()["items"])

    moi = ["QN", "QN-MC-MOI"]
    # Xã Móng Cái 1 was merged into a unit this read model has not heard of yet (another key, so
    # possibly another partition, applied later): the record keeps waiting, for the successor now.
    await visits_app.registry_sends(
        unit("QN", "Tỉnh Quảng Ninh", ["QN"], kind="province"),
        unit("QN-MC", "Phường Móng Cái 1", ["QN", "QN-MC"], kind="ward"),
        unit_merged("QN-MC", moi),
        team("MC-MOBILE", moi),
        unit("QN-MC-TH9", "Trường Tiểu học Móng Cái 9", [*moi, "QN-MC-TH9"], kind="school"),
        unit_closed("QN-MC-TH9", [*moi, "QN-MC-TH9"], "Giải thể theo quyết định của UBND tỉnh"),
    )
    rejected = (await visits_app.client.get(f"/v1/visits/{closing_id}", headers=ADMIN)).json()
    assert rejected["status"] == "rejected"
    assert rejected["problem"]["type"].endswith("/unit-closed")
    assert "Giải thể theo quyết định của UBND tỉnh" in rejected["problem"]["detail"]
    still = (await visits_app.client.get(f"/v1/visits/{merged_id}", headers=ADMIN)).json()
    assert still["status"] == "pending"
    index = await visits_app.runtime.db["pending_index"].find_one({"_id": f"visit:{merged_id}"})
    assert "unit:QN-MC-MOI" in index["keys"]  # the successor's event is what it waits for now

    await visits_app.registry_sends(unit("QN-MC-MOI", "Phường Móng Cái", moi, kind="ward"))

    async def recorded() -> bool:
        got = await visits_app.client.get(f"/v1/visits/{merged_id}", headers=ADMIN)
        return bool(got.json()["status"] == "recorded")

    await wait_until(recorded, timeout=20)
    got = (await visits_app.client.get(f"/v1/visits/{merged_id}", headers=ADMIN)).json()
    assert (got["unit_code"], got["unit_path"], got["resolved_from"]) == ("QN-MC-MOI", moi, "QN-MC")
    (event,) = await visit_events(visits_app, 1)
    assert event.key == merged_id
    assert (event.data["figures"]["unit_code"], event.data["figures"]["unit_path"]) == ("QN-MC-MOI", moi)


async def test_an_office_can_ask_how_visits_takes_records_for_a_unit(seeded: Visits) -> None:
    await reorganise(seeded)
    merged = (await seeded.client.get("/v1/units/QN-CL", headers=ADMIN)).json()
    assert merged == {
        "code": "QN-CL",
        "takes_records_as": "QN-HL",
        "status": "merged",
        "path": HL,
        "closed_because": None,
    }
    closed = (await seeded.client.get("/v1/units/QN-HL-THCS", headers=ADMIN)).json()
    assert (closed["status"], closed["takes_records_as"]) == ("closed", None)
    assert CLOSE_REASON in closed["closed_because"]
    active = (await seeded.client.get("/v1/units/QN-HL", headers=ADMIN)).json()
    assert (active["status"], active["takes_records_as"], active["path"]) == ("active", "QN-HL", HL)
    unknown = await seeded.client.get("/v1/units/QN-KHONG-CO", headers=ADMIN)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")


async def test_a_manager_of_the_successor_reads_the_merged_units_earlier_records(seeded: Visits) -> None:
    await seeded.registry_sends(unit("QN-CL", "Xã Cẩm La", CL), team("CL-MOBILE", CL), unit("QN-CT", "Huyện Cô Tô", CT))
    r = await seeded.client.post(
        "/v1/visits", json=visit_body(team_code="CL-MOBILE", unit_code="QN-CL", volunteer_ids=[]), headers=ADMIN
    )
    assert (r.status_code, r.json()["unit_path"]) == (201, CL), r.text
    old = r.json()["id"]
    halong, coto = token("manager", "QN-HL", sub="manager-hl"), token("manager", "QN-CT", sub="manager-ct")
    assert (await seeded.client.get(f"/v1/visits/{old}", headers=halong)).status_code == 404  # not merged yet
    await seeded.registry_sends(team_moved("CL-MOBILE", HL, CL), unit_merged("QN-CL", HL))

    listed = await seeded.client.get("/v1/visits", headers=halong)
    assert old in [v["id"] for v in listed.json()["items"]]
    got = await seeded.client.get(f"/v1/visits/{old}", headers=halong)
    assert (got.status_code, got.json()["unit_path"]) == (200, CL)  # its history keeps the old path
    assert old not in [v["id"] for v in (await seeded.client.get("/v1/visits", headers=coto)).json()["items"]]
    assert (await seeded.client.get(f"/v1/visits/{old}", headers=coto)).status_code == 404
