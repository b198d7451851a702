"""A roster upload is one compare-and-set of its course, and stays exact through retries and crashes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.contracts import training as ev
from shared.testing import token
from training.repository import LAST_APPLIED_MIGRATION
from training.service import child_id

from .factories import course, dies_at

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.asyncio(loop_scope="module")]

ADMIN = token("admin")
HALONG_MANAGER = token("manager", "QN-HL", sub="manager-halong")


def person(ref: str, group: str = "elderly", **over: Any) -> dict[str, Any]:
    return {"client_ref": ref, "group": group, **over}


def roster(code: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [person(f"{code}/p{i}") for i in range(start, start + n)]


def pid(ref: str) -> str:
    return child_id("participant", ref)


async def create(training: Any, code: str, **over: Any) -> None:
    r = await training.client.post("/v1/courses", json=course(code, **over), headers=ADMIN)
    assert r.status_code == 201, r.text


async def enrol(training: Any, code: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = await training.client.post(f"/v1/courses/{code}/participants", json={"items": items}, headers=ADMIN)
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["items"]
    return out


def course_writes(training: Any, monkeypatch: pytest.MonkeyPatch, code: str) -> list[str]:
    """Records every course write (compare-and-set) of ``code`` from now on."""
    repo = training.app.state.training._repo
    real = repo.update_course
    writes: list[str] = []

    async def counted(course_code: str, *args: Any, **kwargs: Any) -> bool:
        if course_code == code:
            writes.append(course_code)
        ok: bool = await real(course_code, *args, **kwargs)
        return ok

    monkeypatch.setattr(repo, "update_course", counted)
    return writes


async def participants(training: Any, code: str) -> dict[str, dict[str, Any]]:
    """The stored participant documents of course ``code``, counted or not, by client_ref."""
    return {d["client_ref"]: d async for d in training.db["participants"].find({"course_code": code})}


async def enrolled_changes(training: Any, code: str, count: int) -> list[tuple[str, int, int]]:
    """(participant_id, before, after) of the course's ParticipantEnrolled events, once ``count`` arrived."""
    got = await training.events(code, count)
    return [
        (d["participant_id"], d["participants"]["before"], d["participants"]["after"])
        for d in (p.envelope.data for p in got if p.envelope.type == ev.PARTICIPANT_ENROLLED)
    ]


async def test_a_roster_of_30_is_one_compare_and_set_with_an_event_per_participant(training, monkeypatch) -> None:
    await create(training, "B-ONE")
    rev = (await training.course_doc("B-ONE"))["rev"]
    writes = course_writes(training, monkeypatch, "B-ONE")
    repo = training.app.state.training._repo
    real_mark = repo.mark_children_applied
    flag_writes: list[int] = []

    async def mark(kind: str, ids: list[str]) -> None:
        flag_writes.append(len(ids))
        await real_mark(kind, ids)

    monkeypatch.setattr(repo, "mark_children_applied", mark)

    items = roster("B-ONE", 30)
    out = await enrol(training, "B-ONE", items)

    assert [(i["client_ref"], i["status"]) for i in out] == [(p["client_ref"], "created") for p in items]
    ids = [i["id"] for i in out]
    assert ids == [pid(p["client_ref"]) for p in items]
    assert writes == ["B-ONE"]
    assert flag_writes == [30]
    doc = await training.course_doc("B-ONE")
    assert doc["rev"] == rev + 1
    assert (doc["enrolled"], doc["participants_counted"]) == (30, 30)
    assert doc["last_applied"] == {"kind": "enrol", "ids": ids}
    stored = await participants(training, "B-ONE")
    assert all(d["counted"] for d in stored.values())
    assert len(stored) == 30
    # Each participant keeps its own audit entry, written with its insert.
    assert all([e["action"] for e in d["audit"]] == ["participant.enrolled"] for d in stored.values())
    assert await enrolled_changes(training, "B-ONE", 31) == [(ids[i], i, i + 1) for i in range(30)]


async def test_a_roster_on_a_head_count_course_says_what_single_enrolments_would_have(training) -> None:
    await create(training, "B-SWITCH")
    session = {
        "client_ref": "B-SWITCH/s1",
        "held_on": "2025-07-03",
        "duration_minutes": 60,
        "attendance": {"count": 20},
    }
    r = await training.client.post("/v1/courses/B-SWITCH/sessions", json=session, headers=ADMIN)
    assert r.status_code == 201, r.text
    out = await enrol(training, "B-SWITCH", roster("B-SWITCH", 3))
    ids = [i["id"] for i in out]
    # The first enrolment switches the figure from the largest head count to the roster.
    assert await enrolled_changes(training, "B-SWITCH", 6) == [(ids[0], 20, 1), (ids[1], 1, 2), (ids[2], 2, 3)]


async def test_a_mixed_roster_answers_each_item_as_single_requests_would(training, monkeypatch) -> None:
    c = training.client
    await create(training, "B-MIX", capacity=4)
    await create(training, "B-MIX-2")
    first = await c.post("/v1/courses/B-MIX/participants", json=person("B-MIX/p0"), headers=ADMIN)
    assert first.status_code == 201, first.text
    elsewhere = await c.post("/v1/courses/B-MIX-2/participants", json=person("B-MIX/elsewhere"), headers=ADMIN)
    assert elsewhere.status_code == 201, elsewhere.text
    rev = (await training.course_doc("B-MIX"))["rev"]
    writes = course_writes(training, monkeypatch, "B-MIX")

    items = [
        person("B-MIX/p1", "youth", display_name="Đỗ Văn Nam"),
        person("B-MIX/p0"),  # enrolled before
        person("B-MIX/elsewhere"),  # enrolled someone in another course
        person("B-MIX/p2", "robot"),
        person("B-MIX/p1", "child", display_name="another name"),  # the same client_ref again
        person("B-MIX/p3"),
        person("B-MIX/p4"),
        person("B-MIX/p5"),  # past capacity
        person("B-MIX/p5"),
        person("B-MIX/p6"),
    ]
    out = await enrol(training, "B-MIX", items)

    assert [(i["client_ref"], i["status"]) for i in out] == [
        ("B-MIX/p1", "created"),
        ("B-MIX/p0", "duplicate"),
        ("B-MIX/elsewhere", "rejected"),
        ("B-MIX/p2", "rejected"),
        ("B-MIX/p1", "duplicate"),
        ("B-MIX/p3", "created"),
        ("B-MIX/p4", "created"),
        ("B-MIX/p5", "rejected"),
        ("B-MIX/p5", "rejected"),
        ("B-MIX/p6", "rejected"),
    ]
    assert out[1]["id"] == first.json()["id"]
    assert out[4]["id"] == out[0]["id"]
    reused = out[2]["problem"]
    assert (reused["status"], reused["type"].split("/")[-1]) == (409, "client-ref-reused")
    assert "B-MIX-2" in reused["detail"]
    assert out[3]["problem"]["status"] == 422
    assert [e["field"] for e in out[3]["problem"]["errors"]] == ["group"]
    for full in out[7:]:
        assert (full["problem"]["status"], full["problem"]["type"].split("/")[-1]) == (409, "course-full")
        assert full["problem"]["detail"] == "course B-MIX is full (4 places)"
        assert full["id"] is None

    assert writes == ["B-MIX"]
    doc = await training.course_doc("B-MIX")
    assert (doc["rev"], doc["enrolled"], doc["participants_counted"]) == (rev + 1, 4, 4)
    stored = await participants(training, "B-MIX")
    assert sorted(stored) == ["B-MIX/p0", "B-MIX/p1", "B-MIX/p3", "B-MIX/p4"]
    assert all(d["counted"] for d in stored.values())
    assert (stored["B-MIX/p1"]["group"], stored["B-MIX/p1"]["display_name"]) == ("youth", "Đỗ Văn Nam")
    assert (await participants(training, "B-MIX-2"))["B-MIX/elsewhere"]["counted"]
    assert (await training.course_doc("B-MIX-2"))["enrolled"] == 1
    changes = await enrolled_changes(training, "B-MIX", 5)
    assert changes == [(first.json()["id"], 0, 1), (out[0]["id"], 1, 2), (out[5]["id"], 2, 3), (out[6]["id"], 3, 4)]

    # Sent again: the same answers, nothing counted, no course write.
    again = await enrol(training, "B-MIX", items)
    assert [i["status"] for i in again] == ["duplicate"] * 2 + ["rejected"] * 2 + ["duplicate"] * 3 + ["rejected"] * 3
    assert [i["id"] for i in again if i["status"] == "duplicate"] == [
        out[0]["id"],
        out[1]["id"],
        out[0]["id"],
        out[5]["id"],
        out[6]["id"],
    ]
    assert writes == ["B-MIX"]
    assert (await training.course_doc("B-MIX"))["rev"] == rev + 1


async def test_a_roster_crashed_after_its_course_write_is_finished_by_the_next_write(training, monkeypatch) -> None:
    await create(training, "B-AFTER")
    first = roster("B-AFTER", 10)
    await dies_at(training, monkeypatch, "mark_children_applied", lambda: enrol(training, "B-AFTER", first))
    ids = [pid(p["client_ref"]) for p in first]
    doc = await training.course_doc("B-AFTER")
    assert (doc["enrolled"], doc["last_applied"]) == (10, {"kind": "enrol", "ids": ids})
    assert not any(d["counted"] for d in (await participants(training, "B-AFTER")).values())

    # Another roster moves the marker on: the first one's participants are flagged before it does.
    second = await enrol(training, "B-AFTER", roster("B-AFTER", 5, start=10))
    assert [i["status"] for i in second] == ["created"] * 5
    stored = await participants(training, "B-AFTER")
    assert len(stored) == 15
    assert all(d["counted"] for d in stored.values())
    doc = await training.course_doc("B-AFTER")
    assert doc["last_applied"] == {"kind": "enrol", "ids": [i["id"] for i in second]}
    rev = doc["rev"]

    again = await enrol(training, "B-AFTER", first)
    assert [(i["status"], i["id"]) for i in again] == [("duplicate", i) for i in ids]
    doc = await training.course_doc("B-AFTER")
    assert (doc["rev"], doc["enrolled"]) == (rev, 15)
    changes = await enrolled_changes(training, "B-AFTER", 16)
    assert changes == [(p, i, i + 1) for i, p in enumerate(ids + [i["id"] for i in second])]


async def test_a_roster_crashed_after_its_course_write_and_sent_again_counts_each_once(training, monkeypatch) -> None:
    await create(training, "B-RESEND", capacity=11)
    items = roster("B-RESEND", 10)
    await dies_at(training, monkeypatch, "mark_children_applied", lambda: enrol(training, "B-RESEND", items))
    rev = (await training.course_doc("B-RESEND"))["rev"]

    # Sent again with one more person: the ten take no second place, so the eleventh fits.
    again = await enrol(training, "B-RESEND", [*items, person("B-RESEND/p10")])
    ids = [pid(p["client_ref"]) for p in items]
    assert [(i["status"], i["id"]) for i in again] == [("duplicate", i) for i in ids] + [
        ("created", pid("B-RESEND/p10"))
    ]
    stored = await participants(training, "B-RESEND")
    assert len(stored) == 11
    assert all(d["counted"] for d in stored.values())
    doc = await training.course_doc("B-RESEND")
    assert (doc["rev"], doc["enrolled"]) == (rev + 1, 11)
    changes = await enrolled_changes(training, "B-RESEND", 12)
    assert changes == [(p, i, i + 1) for i, p in enumerate([*ids, pid("B-RESEND/p10")])]


async def test_a_roster_crashed_before_its_course_write_counts_each_once_when_sent_again(training, monkeypatch) -> None:
    c = training.client
    await create(training, "B-BEFORE")
    items = roster("B-BEFORE", 10)
    await dies_at(training, monkeypatch, "update_course", lambda: enrol(training, "B-BEFORE", items))
    assert len(await participants(training, "B-BEFORE")) == 10  # stored, not counted
    doc = await training.course_doc("B-BEFORE")
    assert (doc["rev"], doc["enrolled"], doc["last_applied"]) == (1, 0, None)
    assert (await c.get("/v1/courses/B-BEFORE/participants", headers=ADMIN)).json()["items"] == []

    out = await enrol(training, "B-BEFORE", items)
    ids = [pid(p["client_ref"]) for p in items]
    assert [(i["status"], i["id"]) for i in out] == [("created", i) for i in ids]
    again = await enrol(training, "B-BEFORE", items)
    assert [i["status"] for i in again] == ["duplicate"] * 10
    doc = await training.course_doc("B-BEFORE")
    assert (doc["rev"], doc["enrolled"]) == (2, 10)
    assert all(d["counted"] for d in (await participants(training, "B-BEFORE")).values())
    assert await enrolled_changes(training, "B-BEFORE", 11) == [(p, i, i + 1) for i, p in enumerate(ids)]


async def test_stored_participants_the_course_has_no_room_for_any_more_are_refused_and_discarded(
    training, monkeypatch
) -> None:
    await create(training, "B-ROOM", capacity=3)
    late = roster("B-ROOM", 3)
    await dies_at(training, monkeypatch, "update_course", lambda: enrol(training, "B-ROOM", late))
    early = await enrol(training, "B-ROOM", roster("B-ROOM", 2, start=10))
    assert [i["status"] for i in early] == ["created"] * 2

    out = await enrol(training, "B-ROOM", late)
    assert [i["status"] for i in out] == ["created", "rejected", "rejected"]
    assert all(i["problem"]["type"].endswith("/course-full") for i in out[1:])
    stored = await participants(training, "B-ROOM")
    assert sorted(stored) == ["B-ROOM/p0", "B-ROOM/p10", "B-ROOM/p11"]  # p1 and p2 discarded
    assert all(d["counted"] for d in stored.values())
    assert (await training.course_doc("B-ROOM"))["enrolled"] == 3
    changes = await enrolled_changes(training, "B-ROOM", 4)
    assert [(before, after) for _, before, after in changes] == [(0, 1), (1, 2), (2, 3)]
    assert changes[-1][0] == out[0]["id"]


async def test_concurrent_rosters_of_one_course_count_everyone_once(training) -> None:
    await create(training, "B-RACE")
    shared = roster("B-RACE", 20)
    other = roster("B-RACE", 20, start=20)
    answers = await asyncio.gather(
        enrol(training, "B-RACE", shared), enrol(training, "B-RACE", shared), enrol(training, "B-RACE", other)
    )
    for i in range(20):
        assert sorted(a[i]["status"] for a in answers[:2]) == ["created", "duplicate"]
    assert [i["status"] for i in answers[2]] == ["created"] * 20
    doc = await training.course_doc("B-RACE")
    assert (doc["enrolled"], doc["participants_counted"]) == (40, 40)
    stored = await participants(training, "B-RACE")
    assert len(stored) == 40
    assert all(d["counted"] for d in stored.values())
    changes = await enrolled_changes(training, "B-RACE", 41)
    assert [(before, after) for _, before, after in changes] == [(i, i + 1) for i in range(40)]
    assert sorted(p for p, _, _ in changes) == sorted(d["_id"] for d in stored.values())


async def test_markers_naming_one_child_are_migrated_to_lists_and_then_rolled_forward(training) -> None:
    c = training.client
    db = training.db
    service = training.app.state.training
    for code in ("B-MIG", "B-MIG-C", "B-MIG-NEW"):
        await create(training, code)
    r = await c.post("/v1/courses/B-MIG-NEW/participants", json=person("B-MIG-NEW/p0"), headers=ADMIN)
    assert r.status_code == 201, r.text
    new_form = await training.course_doc("B-MIG-NEW")
    assert new_form["last_applied"] == {"kind": "enrol", "ids": [r.json()["id"]]}
    enrolled = (await c.post("/v1/courses/B-MIG/participants", json=person("B-MIG/p0"), headers=ADMIN)).json()["id"]
    marked = (await c.post("/v1/courses/B-MIG-C/participants", json=person("B-MIG-C/p0"), headers=ADMIN)).json()["id"]
    # As an earlier version left them after a crash between steps 2 and 3: counted by the course, the
    # child not flagged, the marker naming one child.
    await db["participants"].update_one({"_id": enrolled}, {"$set": {"counted": False}})
    await db["courses"].update_one({"_id": "B-MIG"}, {"$set": {"last_applied": {"kind": "enrol", "id": enrolled}}})
    by = {"sub": "manager-halong", "role": "manager"}
    await db["courses"].update_one(
        {"_id": "B-MIG-C"},
        {
            "$set": {"last_applied": {"kind": "complete", "id": marked, "by": by}},
            "$inc": {"completed": 1, "completions_counted": 1},
        },
    )
    revs = [(await training.course_doc(code))["rev"] for code in ("B-MIG", "B-MIG-C")]

    await db["migrations"].delete_one({"_id": LAST_APPLIED_MIGRATION})
    service._flagged.clear()  # a new process: it remembers no flags
    await service._repo.migrate_pending_index()

    mig = await training.course_doc("B-MIG")
    mig_c = await training.course_doc("B-MIG-C")
    assert mig["last_applied"] == {"kind": "enrol", "ids": [enrolled]}
    assert mig_c["last_applied"] == {"kind": "complete", "ids": [marked], "by": by}
    assert [mig["rev"], mig_c["rev"]] == [r + 1 for r in revs]
    assert (await db["migrations"].find_one({"_id": LAST_APPLIED_MIGRATION}))["documents"] == 2
    left = await training.course_doc("B-MIG-NEW")  # a list already: left as it was
    assert (left["rev"], left["last_applied"]) == (new_form["rev"], new_form["last_applied"])
    await service._repo.migrate_pending_index()  # once is enough; again is harmless
    assert (await training.course_doc("B-MIG"))["rev"] == mig["rev"]

    # The next request on each course finishes step 3 from the list.
    listed = (await c.get("/v1/courses/B-MIG/participants", headers=ADMIN)).json()["items"]
    assert [p["id"] for p in listed] == [enrolled]
    assert (await db["participants"].find_one({"_id": enrolled}))["counted"] is True
    assert (await c.get("/v1/courses/B-MIG-C/participants", headers=ADMIN)).status_code == 200
    assert (await db["participants"].find_one({"_id": marked}))["status"] == "completed"
    r = await c.get("/v1/audit", params={"entity_id": marked, "action": "participant.completed"}, headers=ADMIN)
    assert [e["actor"] for e in r.json()["items"]] == [by]
    again = await c.post(f"/v1/courses/B-MIG-C/participants/{marked}:complete", headers=HALONG_MANAGER)
    assert again.status_code == 200, again.text
    assert (await training.course_doc("B-MIG-C"))["completed"] == 1
