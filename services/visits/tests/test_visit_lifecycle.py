"""Corrections, voids and pending records: the events they emit and when."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from shared.consumer import Consumed
from shared.contracts import visits as ev
from shared.envelope import Envelope
from shared.outbox import PENDING
from shared.registry_view import RegistryView
from shared.testing import collect_events, token, wait_until
from shared.topics import REGISTRY_TOPIC, VISITS_TOPIC
from visits.service import utcnow

from .conftest import Visits
from .factories import HL, QL, VD, joined, team, unit, visit_body, volunteer

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

ADMIN = token("admin")


async def visit_events(app: Visits, count: int) -> list[Envelope]:
    got = await collect_events(
        app.settings.kafka_bootstrap, [app.settings.topic(VISITS_TOPIC)], count=count, timeout=30, settle=1.0
    )
    return [r.envelope for r in got]


SERVICE_COUNTS = (
    "vneid_installed",
    "vneid_activated",
    "online_applications_l3",
    "online_applications_l4",
    "digital_skills_guidance",
)


def figures(body: dict[str, Any], unit_path: list[str]) -> dict[str, Any]:
    services = dict.fromkeys(SERVICE_COUNTS, 0)
    return {
        "unit_code": body["unit_code"],
        "unit_path": unit_path,
        "visited_on": body["visited_on"],
        "households": body["households"],
        "people": {"elderly": 0, "women": 0, "veterans": 0, **body["people"]},
        "services": {**services, **body["services"]},
        "area": body["area"],
        "team_code": body["team_code"],
    }


async def test_correction_and_void_emit_events_with_previous_and_removed_figures(seeded: Visits) -> None:
    body = visit_body()
    created = await seeded.client.post("/v1/visits", json=body, headers=ADMIN)
    vid = created.json()["id"]
    corrected_body = {
        **body,
        "unit_code": "QN-VD-QL",
        "area": "border",
        "people": {"total": 5, "elderly": 3, "women": 2, "veterans": 0},
        "services": {"vneid_installed": 4},
        "volunteer_ids": ["vol-huong"],
    }
    r = await seeded.client.post(f"/v1/visits/{vid}:correct", json=corrected_body, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["people"]["total"] == 5
    assert r.json()["unit_path"] == QL
    assert r.json()["corrected_at"] is not None

    # Retrying the same correction changes nothing and emits nothing.
    again = await seeded.client.post(f"/v1/visits/{vid}:correct", json=corrected_body, headers=ADMIN)
    assert again.status_code == 200

    void = await seeded.client.post(f"/v1/visits/{vid}:void", json={"reason": "Ghi trùng"}, headers=ADMIN)
    assert void.status_code == 200
    assert void.json()["status"] == "voided"
    assert void.json()["void_reason"] == "Ghi trùng"
    twice = await seeded.client.post(f"/v1/visits/{vid}:void", json={"reason": "lần hai"}, headers=ADMIN)
    assert twice.status_code == 200
    assert twice.json()["void_reason"] == "Ghi trùng"

    late = await seeded.client.post(f"/v1/visits/{vid}:correct", json=corrected_body, headers=ADMIN)
    assert late.status_code == 409
    assert late.json()["type"].endswith("/visit-voided")

    events = await visit_events(seeded, 3)
    assert [e.type for e in events] == [ev.VISIT_RECORDED, ev.VISIT_CORRECTED, ev.VISIT_VOIDED]
    assert {e.key for e in events} == {vid}
    recorded, corrected, voided = (e.data for e in events)
    assert corrected["previous"] == recorded["figures"] == figures(body, VD)
    assert corrected["figures"] == figures(corrected_body, QL)
    assert corrected["volunteer_ids"] == ["vol-huong"]
    assert voided["figures"] == corrected["figures"]
    # The area moves with the figures: out of "island", into "border", and out of "border" on the void.
    assert (corrected["previous"]["area"], corrected["figures"]["area"], voided["figures"]["area"]) == (
        "island",
        "border",
        "border",
    )
    assert voided["reason"] == "Ghi trùng"
    assert all("notes" not in e.data for e in events)


async def test_corrections_are_checked_like_new_records(seeded: Visits) -> None:
    body = visit_body()
    vid = (await seeded.client.post("/v1/visits", json=body, headers=ADMIN)).json()["id"]
    cases = [
        ({**body, "volunteer_ids": ["vol-ended"]}, 422),
        ({**body, "people": {"total": 1, "veterans": 2}}, 422),
        ({**body, "client_ref": str(uuid.uuid4())}, 422),
        ({**body, "team_code": "NOT-YET-KNOWN"}, 422),
    ]
    for correction, status in cases:
        r = await seeded.client.post(f"/v1/visits/{vid}:correct", json=correction, headers=ADMIN)
        assert r.status_code == status, r.text
    missing = await seeded.client.post(f"/v1/visits/{uuid.uuid4()}:correct", json=body, headers=ADMIN)
    assert missing.status_code == 404
    stored = await seeded.client.get(f"/v1/visits/{vid}", headers=ADMIN)
    assert stored.json()["people"] == body["people"]
    assert stored.json().get("corrected_at") is None


async def test_a_record_for_an_unknown_team_is_pending_until_the_registry_event_arrives(visits_app: Visits) -> None:
    body = visit_body(team_code="VD-NEW", volunteer_ids=["vol-hoa"])
    r = await visits_app.client.post("/v1/visits", json=body, headers=ADMIN)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending"
    assert r.json()["unit_path"] is None
    vid = r.json()["id"]
    assert (await visits_app.client.post("/v1/visits", json=body, headers=ADMIN)).status_code == 200

    # Units and the team arrive first: still waiting for the volunteer's membership.
    await visits_app.registry_sends(
        unit("QN", "Tỉnh Quảng Ninh", ["QN"], kind="province"),
        unit("QN-VD", "Đặc khu Vân Đồn", VD, kind="special_zone"),
        team("VD-NEW", VD),
        volunteer("vol-hoa", VD),
    )
    pending = (await visits_app.client.get(f"/v1/visits/{vid}", headers=ADMIN)).json()
    assert pending["status"] == "pending"
    assert pending["unit_path"] == VD
    assert await visits_app.visits().count_documents(PENDING) == 0

    await visits_app.registry_sends(joined("VD-NEW", "vol-hoa"))

    async def recorded() -> bool:
        got = await visits_app.client.get(f"/v1/visits/{vid}", headers=ADMIN)
        return bool(got.json()["status"] == "recorded")

    await wait_until(recorded, timeout=20)
    events = await visit_events(visits_app, 1)
    assert len(events) == 1
    assert events[0].type == ev.VISIT_RECORDED
    assert events[0].key == vid
    assert events[0].data["figures"]["unit_path"] == VD
    assert events[0].data["figures"]["visited_on"] == body["visited_on"]


async def test_a_pending_record_that_turns_out_invalid_is_rejected_with_its_problem(visits_app: Visits) -> None:
    body = visit_body(team_code="HL-LATE", unit_code="QN-VD", volunteer_ids=[])
    batch = await visits_app.client.post("/v1/visits:batch", json={"items": [body]}, headers=ADMIN)
    (item,) = batch.json()["items"]
    assert item["status"] == "pending"

    # The team turns out to belong to Phường Hạ Long, so a record at Vân Đồn is outside it.
    await visits_app.registry_sends(
        unit("QN-VD", "Đặc khu Vân Đồn", VD, kind="special_zone"), team("HL-LATE", HL, kind="permanent")
    )
    got = (await visits_app.client.get(f"/v1/visits/{item['id']}", headers=ADMIN)).json()
    assert got["status"] == "rejected"
    assert got["problem"]["status"] == 422
    assert "is not team HL-LATE's unit (QN-HL) or below it" in got["problem"]["detail"]
    assert await visits_app.visits().count_documents(PENDING) == 0
    assert await visits_app.visits().count_documents({}) == 1


async def test_a_pending_record_can_be_voided_without_any_event(visits_app: Visits) -> None:
    r = await visits_app.client.post("/v1/visits", json=visit_body(team_code="VD-GHOST"), headers=ADMIN)
    vid = r.json()["id"]
    void = await visits_app.client.post(f"/v1/visits/{vid}:void", json={"reason": "Nhập nhầm đội"}, headers=ADMIN)
    assert void.status_code == 200
    assert void.json()["status"] == "voided"
    await visits_app.registry_sends(team("VD-GHOST", VD))
    got = (await visits_app.client.get(f"/v1/visits/{vid}", headers=ADMIN)).json()
    assert got["status"] == "voided"
    assert await visits_app.visits().count_documents(PENDING) == 0
    assert (
        await visits_app.client.post(f"/v1/visits/{vid}:correct", json=visit_body(), headers=ADMIN)
    ).status_code == 409


async def membership_before_team(app: Visits, team_code: str, volunteer_id: str) -> Any:
    """A team's membership heard before the team itself, then a visit by that team.

    Membership events are keyed by team/volunteer, team events by team: no order between them.
    """
    await app.registry_sends(
        unit("QN", "Tỉnh Quảng Ninh", ["QN"], kind="province"),
        unit("QN-VD", "Đặc khu Vân Đồn", VD, kind="special_zone"),
        volunteer(volunteer_id, VD),
        joined(team_code, volunteer_id),
    )
    body = visit_body(team_code=team_code, volunteer_ids=[volunteer_id])
    return await app.client.post("/v1/visits", json=body, headers=ADMIN)


async def test_a_membership_heard_before_its_team_leaves_the_record_pending_not_failing(visits_app: Visits) -> None:
    r = await membership_before_team(visits_app, "VD-EARLY", "vol-tam")
    assert r.status_code == 202, r.text  # held until the team is known, not a 500 on the membership's stub
    await visits_app.registry_sends(team("VD-EARLY", VD))

    async def recorded() -> bool:
        got = await visits_app.client.get(f"/v1/visits/{r.json()['id']}", headers=ADMIN)
        return bool(got.json()["status"] == "recorded")

    await wait_until(recorded, timeout=20)


async def test_a_team_another_replica_applied_after_this_one_cached_its_stub_is_seen_after_insert(
    visits_app: Visits,
) -> None:
    # Replica A caches the team's stub (a membership came first); replica B then applies the team event
    # and its listener finds nothing pending yet. A's record must not wait for another registry event.
    first = await membership_before_team(visits_app, "VD-LATE", "vol-thu")
    assert first.status_code == 202, first.text  # the stub is now in this replica's cache

    other_replica = RegistryView(visits_app.runtime.view_db, team_members=False)  # its own cache: ours is never told
    await other_replica.apply([Consumed(team("VD-LATE", VD), REGISTRY_TOPIC, 0, 10**9)])

    second = await visits_app.client.post(
        "/v1/visits", json=visit_body(team_code="VD-LATE", volunteer_ids=["vol-thu"]), headers=ADMIN
    )
    assert second.status_code == 201, second.text
    assert second.json()["status"] == "recorded"


async def test_a_registry_change_keeps_the_index_entry_of_a_record_being_stored_and_drops_an_old_orphan(
    visits_app: Visits,
) -> None:
    # The entry is written before its record; a listener that runs in between must not take it away,
    # or the record, still waiting on another key after its own re-check, is never looked at again.
    service = visits_app.app.state.visits
    index = visits_app.runtime.db["pending_index"]
    await service.pending.add("visit", ["being-stored"], [["team:VD-SOON"]])
    await service.on_registry_change([("team", "VD-SOON")])
    assert await index.find_one({"_id": "visit:being-stored"}) is not None
    # A crash between index and insert leaves an entry that never gets its record: dropped once old.
    await index.update_one({"_id": "visit:being-stored"}, {"$set": {"at": utcnow() - timedelta(minutes=6)}})
    await service.on_registry_change([("team", "VD-SOON")])
    assert await index.find_one({"_id": "visit:being-stored"}) is None


async def test_one_registry_batch_settles_hundreds_of_pending_records_each_once(visits_app: Visits) -> None:
    # A roster arriving after the field's uploads: every record waits on its volunteer's membership,
    # and the batch that brings them all must settle all of them (one read, concurrent writes).
    await visits_app.registry_sends(
        unit("QN", "Tỉnh Quảng Ninh", ["QN"], kind="province"),
        unit("QN-VD", "Đặc khu Vân Đồn", VD, kind="special_zone"),
        team("VD-ROSTER", VD),
    )
    # Re-checked a few at a time, as a far larger batch would be: every chunk still settles.
    service = visits_app.app.state.visits
    service.recheck_chunk = 40
    read_at_once: list[int] = []
    get_many = service.records.get_many

    async def noted(ids: Any) -> Any:
        ids = list(ids)
        read_at_once.append(len(ids))
        return await get_many(ids)

    service.records.get_many = noted
    volunteers = [f"vol-r{i:03d}" for i in range(150)]
    items = [visit_body(team_code="VD-ROSTER", volunteer_ids=[v]) for v in volunteers]
    batch = await visits_app.client.post("/v1/visits:batch", json={"items": items}, headers=ADMIN)
    assert batch.status_code == 200, batch.text
    assert {i["status"] for i in batch.json()["items"]} == {"pending"}
    assert await visits_app.runtime.db["pending_index"].count_documents({}) == 150
    # Each record is named by the keys it waits on (its volunteer's membership among them).
    assert await visits_app.runtime.db["pending_keys"].count_documents({}) >= 150

    await visits_app.registry_sends(
        *(volunteer(v, VD) for v in volunteers), *(joined("VD-ROSTER", v) for v in volunteers)
    )

    async def all_recorded() -> bool:
        return await visits_app.visits().count_documents({"status": "recorded"}) == 150

    await wait_until(all_recorded, timeout=30)
    assert await visits_app.runtime.db["pending_index"].count_documents({}) == 0
    assert await visits_app.runtime.db["pending_keys"].count_documents({}) == 0
    assert max(read_at_once) <= 40
    assert sum(read_at_once) >= 150
    events = await visit_events(visits_app, 150)  # and a second of quiet after it: none may come twice
    assert len(events) == 150
    assert {e.key for e in events} == {i["id"] for i in batch.json()["items"]}
    # This service reads memberships by _id only, so its read model keeps no member lists.
    stored = await visits_app.runtime.view_db["rm_teams"].find_one({"_id": "VD-ROSTER"})
    assert stored is not None
    assert "members" not in stored
