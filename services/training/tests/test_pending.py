"""Courses that reference registry data not yet seen wait as pending and are decided by registry events."""

from __future__ import annotations

from typing import Any

import pytest

from shared.contracts import training as ev
from shared.testing import token, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.asyncio(loop_scope="module")]

ADMIN = token("admin")


def course(code: str, team_code: str, unit_code: str) -> dict[str, Any]:
    return {
        "client_ref": f"ref-{code}",
        "code": code,
        "title": "An toàn trên không gian mạng",
        "team_code": team_code,
        "unit_code": unit_code,
        "audience": "general",
        "mode": "online",
        "topics": ["online_safety"],
        "starts_on": "2025-07-01",
        "ends_on": "2025-07-31",
    }


async def status_becomes(training: Any, code: str, status: str) -> dict[str, Any]:
    async def reached() -> bool:
        doc = await training.course_doc(code)
        return doc is not None and doc["status"] == status

    await wait_until(reached, timeout=30)
    return (await training.client.get(f"/v1/courses/{code}", headers=ADMIN)).json()


async def test_pending_course_is_scheduled_with_its_event_when_the_registry_team_arrives(
    training, registry_events
) -> None:
    c = training.client
    r = await c.post("/v1/courses", json=course("P-MC", "LIT-MC", "QN-MC"), headers=token("field", teams=["LIT-MC"]))
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["unit_path"]) == ("pending", None)
    assert "LIT-MC" in r.json()["problem"]
    session = {"client_ref": "P-MC/s", "held_on": "2025-07-02", "duration_minutes": 60, "attendance": {"count": 9}}
    early = await c.post("/v1/courses/P-MC/sessions", json=session, headers=ADMIN)
    assert early.status_code == 409
    assert early.json()["type"].endswith("course-pending")
    assert training.events_of("P-MC") == []

    await training.registry(registry_events.unit("QN-MC", "Phường Móng Cái 1", "ward", ["QN", "QN-MC"]))
    await training.registry(registry_events.team("LIT-MC", "literacy", ["QN", "QN-MC"]))
    doc = await status_becomes(training, "P-MC", "scheduled")
    assert (doc["unit_path"], doc["problem"]) == (["QN", "QN-MC"], None)
    got = await training.events("P-MC", 1)
    assert [p.envelope.type for p in got] == [ev.COURSE_SCHEDULED]
    assert got[0].envelope.data["course"]["unit_path"] == ["QN", "QN-MC"]
    assert (await c.post("/v1/courses/P-MC/sessions", json=session, headers=ADMIN)).status_code == 201


async def test_pending_course_waits_for_its_unit_then_for_a_teaching_member(training, registry_events) -> None:
    c = training.client
    r = await c.post("/v1/courses", json=course("P-UNIT", "CAMP-HL", "QN-HL-NEW"), headers=ADMIN)
    assert r.json()["status"] == "pending"
    await training.registry(registry_events.unit("QN-HL-NEW", "Khu phố Cái Dăm", "ward", ["QN", "QN-HL", "QN-HL-NEW"]))
    await status_becomes(training, "P-UNIT", "scheduled")

    r = await c.post("/v1/courses", json=course("P-TEACH", "CAMP-NEW", "QN-HL"), headers=ADMIN)
    assert r.json()["status"] == "pending"
    await training.registry(registry_events.team("CAMP-NEW", "campaign", ["QN", "QN-HL"], "Đội hình Mùa hè xanh 2"))

    async def waits_for_teacher() -> bool:
        doc = await training.course_doc("P-TEACH")
        return doc is not None and "teaching" in (doc["problem"] or "")

    await wait_until(waits_for_teacher, timeout=30)
    assert (await training.course_doc("P-TEACH"))["status"] == "pending"
    await training.registry(
        registry_events.volunteer("V-NEW", ["QN", "QN-HL"], ["teaching"]),
        registry_events.membership("CAMP-NEW", "V-NEW"),
    )
    await status_becomes(training, "P-TEACH", "scheduled")
    assert [p.envelope.type for p in await training.events("P-TEACH", 1)] == [ev.COURSE_SCHEDULED]


async def test_pending_course_is_rejected_without_an_event_when_the_registry_disproves_it(
    training, registry_events
) -> None:
    c = training.client
    r = await c.post("/v1/courses", json=course("P-BAD", "LIT-FAR", "QN-HL"), headers=ADMIN)
    assert r.json()["status"] == "pending"
    r = await c.post("/v1/courses", json=course("P-SCOPE", "LIT-HL", "QN-HL-KP2"), headers=token("manager", "QN-VD"))
    assert r.json()["status"] == "pending"

    await training.registry(
        registry_events.team("LIT-FAR", "literacy", ["QN", "QN-VD"]),
        registry_events.unit("QN-HL-KP2", "Khu phố 2", "ward", ["QN", "QN-HL", "QN-HL-KP2"]),
    )
    doc = await status_becomes(training, "P-BAD", "rejected")
    assert "outside team LIT-FAR" in doc["problem"]
    doc = await status_becomes(training, "P-SCOPE", "rejected")
    assert "scope" in doc["problem"]  # the QN-VD manager who sent it may not act in Hạ Long
    await training.events("P-BAD", 0, settle=1.0)
    assert training.events_of("P-BAD") == []
    assert training.events_of("P-SCOPE") == []


async def test_cancelling_a_pending_course_emits_nothing(training, registry_events) -> None:
    c = training.client
    assert (
        await c.post("/v1/courses", json=course("P-CANCEL", "LIT-NEVER", "QN-HL"), headers=ADMIN)
    ).status_code == 201
    r = await c.post("/v1/courses/P-CANCEL:cancel", json={"reason": "Đội chưa thành lập"}, headers=ADMIN)
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    await training.registry(registry_events.team("LIT-NEVER", "literacy", ["QN", "QN-HL"]))
    await training.events("P-CANCEL", 0, settle=1.5)
    assert training.events_of("P-CANCEL") == []
    assert (await training.course_doc("P-CANCEL"))["status"] == "cancelled"


async def test_a_course_held_pending_before_the_index_existed_is_indexed_once_and_decided(
    training, registry_events
) -> None:
    r = await training.client.post("/v1/courses", json=course("P-OLD", "LIT-OLD", "QN-HL"), headers=ADMIN)
    assert r.json()["status"] == "pending"
    index = training.db["pending_courses"]
    assert await index.find_one({"_id": "P-OLD"}) is not None
    # As stored by the service before the index: no entry, and the migration not yet recorded.
    await index.delete_one({"_id": "P-OLD"})
    await training.db["migrations"].delete_one({"_id": "0003-pending-courses-index"})
    await training.app.state.training._repo.migrate_pending_index()
    assert await index.find_one({"_id": "P-OLD"}) is not None

    await training.registry(registry_events.team("LIT-OLD", "literacy", ["QN", "QN-HL"]))
    await status_becomes(training, "P-OLD", "scheduled")

    async def released() -> bool:
        return await index.find_one({"_id": "P-OLD"}) is None

    await wait_until(released, timeout=10)


async def test_a_registry_change_keeps_the_entry_of_a_course_being_stored_and_drops_an_old_orphan(training) -> None:
    from datetime import UTC, datetime, timedelta

    repo = training.app.state.training._repo
    index = training.db["pending_courses"]
    await repo.hold("P-SOON")  # written before the course's insert
    assert await repo.pending_courses() == []
    assert await index.find_one({"_id": "P-SOON"}) is not None
    await index.update_one({"_id": "P-SOON"}, {"$set": {"at": datetime.now(UTC) - timedelta(minutes=6)}})
    await repo.pending_courses()
    assert await index.find_one({"_id": "P-SOON"}) is None  # a crash's leftover, once old


async def test_a_member_who_learns_to_teach_later_unblocks_their_teams_course(training, registry_events) -> None:
    # The volunteer's change alone (no membership in the batch): the listener finds the course
    # through its team's members.
    await training.registry(
        registry_events.team("CAMP-LEARN", "campaign", ["QN", "QN-HL"], "Đội hình Tình nguyện Hạ Long"),
        registry_events.volunteer("V-LEARN", ["QN", "QN-HL"], []),
        registry_events.membership("CAMP-LEARN", "V-LEARN"),
    )
    r = await training.client.post("/v1/courses", json=course("P-LEARN", "CAMP-LEARN", "QN-HL"), headers=ADMIN)
    assert r.json()["status"] == "pending"
    await training.registry(registry_events.volunteer("V-LEARN", ["QN", "QN-HL"], ["teaching"]))
    await status_becomes(training, "P-LEARN", "scheduled")
    assert [p.envelope.type for p in await training.events("P-LEARN", 1)] == [ev.COURSE_SCHEDULED]
