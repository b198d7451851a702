"""A sessions upload is one compare-and-set of its course, answering as sessions sent one by one would."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.contracts import training as ev
from shared.testing import token
from training.service import child_id

from .factories import course, dies_at, session

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.asyncio(loop_scope="module")]

ADMIN = token("admin")


def sid(ref: str) -> str:
    return child_id("session", ref)


async def create(training: Any, code: str, **over: Any) -> None:
    r = await training.client.post("/v1/courses", json=course(code, **over), headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "scheduled"


async def enrol(training: Any, code: str, refs: list[str]) -> list[str]:
    items = [{"client_ref": ref, "group": "elderly"} for ref in refs]
    r = await training.client.post(f"/v1/courses/{code}/participants", json={"items": items}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert [i["status"] for i in r.json()["items"]] == ["created"] * len(refs)
    return [i["id"] for i in r.json()["items"]]


async def record(training: Any, code: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = await training.client.post(f"/v1/courses/{code}/sessions:batch", json={"items": items}, headers=ADMIN)
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["items"]
    return out


def spy(training: Any, monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[Any, ...]]:
    """Records the arguments of every call of the repository's ``name`` from now on."""
    repo = training.app.state.training._repo
    real = getattr(repo, name)
    calls: list[tuple[Any, ...]] = []

    async def recorded(*args: Any) -> Any:
        calls.append(args)
        return await real(*args)

    monkeypatch.setattr(repo, name, recorded)
    return calls


async def sessions(training: Any, code: str) -> dict[str, dict[str, Any]]:
    """The stored session documents of course ``code``, counted or not, by client_ref."""
    return {d["client_ref"]: d async for d in training.db["sessions"].find({"course_code": code})}


async def held(training: Any, code: str, count: int) -> list[tuple[str, str, int, int, int]]:
    """(session_id, kind, attendance, before, after) of the SessionHeld events, once ``count`` events arrived."""
    got = await training.events(code, count)
    return [
        (
            d["session_id"],
            d["attendance_kind"],
            d["attendance"],
            d["participants"]["before"],
            d["participants"]["after"],
        )
        for d in (p.envelope.data for p in got if p.envelope.type == ev.SESSION_HELD)
    ]


async def types_after_scheduled(training: Any, code: str, count: int) -> list[str]:
    return [p.envelope.type for p in await training.events(code, count)][1:]


async def test_six_mixed_sessions_are_one_course_write_with_the_events_single_sessions_give(
    training, monkeypatch
) -> None:
    await create(training, "S-ONE")
    people = await enrol(training, "S-ONE", ["S-ONE/p0", "S-ONE/p1", "S-ONE/p2"])
    rev = (await training.course_doc("S-ONE"))["rev"]
    writes = spy(training, monkeypatch, "update_course")
    reads = spy(training, monkeypatch, "counted_participant_ids")
    flags = spy(training, monkeypatch, "mark_children_applied")

    items = [
        session("S-ONE/s0", "2025-07-10", count=2),  # the first recorded, not the earliest held
        session("S-ONE/s1", "2025-07-02", participant_ids=people),
        session("S-ONE/s2", "2025-07-03", count=1),
        session("S-ONE/s3", "2025-07-04", participant_ids=people[1:2]),
        session("S-ONE/s4", "2025-07-05", count=3),
        session("S-ONE/s5", "2025-07-06", participant_ids=[people[2], people[0]]),
    ]
    out = await record(training, "S-ONE", items)

    ids = [sid(i["client_ref"]) for i in items]
    assert [(i["client_ref"], i["status"], i["id"]) for i in out] == [
        (s["client_ref"], "created", i) for s, i in zip(items, ids, strict=True)
    ]
    assert [args[0] for args in writes] == ["S-ONE"]
    assert [(args[0], len(args[1])) for args in flags] == [("session", 6)]
    # The three rosters' participants are looked up once, together.
    assert [sorted(args[1]) for args in reads] == [sorted(people)]
    doc = await training.course_doc("S-ONE")
    assert doc["rev"] == rev + 1
    assert (doc["status"], doc["started_on"], doc["sessions_held"]) == ("running", "2025-07-10", 6)
    assert (doc["largest_head_count"], doc["participants_counted"], doc["enrolled"]) == (3, 3, 3)
    assert doc["last_applied"] == {"kind": "session", "ids": ids}
    stored = await sessions(training, "S-ONE")
    assert sorted(stored) == sorted(i["client_ref"] for i in items)
    assert all(d["counted"] for d in stored.values())
    assert all([e["action"] for e in d["audit"]] == ["session.recorded"] for d in stored.values())
    assert stored["S-ONE/s5"]["participant_ids"] == [people[2], people[0]]

    # Sent one by one: started by the first, each a roster course's figure of 3 (its enrolment).
    assert (
        await types_after_scheduled(training, "S-ONE", 11)
        == [ev.PARTICIPANT_ENROLLED] * 3 + [ev.COURSE_STARTED] + [ev.SESSION_HELD] * 6
    )
    started = next(p.envelope.data for p in training.events_of("S-ONE") if p.envelope.type == ev.COURSE_STARTED)
    assert started["started_on"] == "2025-07-10"
    assert await held(training, "S-ONE", 11) == [
        (ids[0], "head_count", 2, 3, 3),
        (ids[1], "roster", 3, 3, 3),
        (ids[2], "head_count", 1, 3, 3),
        (ids[3], "roster", 1, 3, 3),
        (ids[4], "head_count", 3, 3, 3),
        (ids[5], "roster", 2, 3, 3),
    ]
    held_on = [p.envelope.data["held_on"] for p in training.events_of("S-ONE") if p.envelope.type == ev.SESSION_HELD]
    assert held_on == [i["held_on"] for i in items]


async def test_head_counts_in_one_upload_move_the_figure_session_by_session(training, monkeypatch) -> None:
    await create(training, "S-HEAD")
    rev = (await training.course_doc("S-HEAD"))["rev"]
    writes = spy(training, monkeypatch, "update_course")
    counts = [30, 38, 25, 41, 12, 41]
    items = [session(f"S-HEAD/s{i}", f"2025-07-0{i + 2}", count=n) for i, n in enumerate(counts)]

    out = await record(training, "S-HEAD", items)

    assert [i["status"] for i in out] == ["created"] * 6
    assert [args[0] for args in writes] == ["S-HEAD"]
    doc = await training.course_doc("S-HEAD")
    assert (doc["rev"], doc["sessions_held"], doc["started_on"]) == (rev + 1, 6, "2025-07-02")
    assert (doc["largest_head_count"], doc["participants_counted"]) == (41, 41)
    ids = [sid(i["client_ref"]) for i in items]
    # By hand: the largest head count so far, before and after each session.
    changes = [(0, 30), (30, 38), (38, 38), (38, 41), (41, 41), (41, 41)]
    expected = [(i, "head_count", n, b, a) for i, n, (b, a) in zip(ids, counts, changes, strict=True)]
    assert await held(training, "S-HEAD", 8) == expected
    assert await types_after_scheduled(training, "S-HEAD", 8) == [ev.COURSE_STARTED] + [ev.SESSION_HELD] * 6

    # A single session afterwards goes on from there, and the course is not started twice.
    r = await training.client.post(
        "/v1/courses/S-HEAD/sessions", json=session("S-HEAD/s9", "2025-07-20", count=50), headers=ADMIN
    )
    assert r.status_code == 201, r.text
    assert (r.json()["id"], r.json()["attendance"]) == (sid("S-HEAD/s9"), 50)
    again = await training.client.post(
        "/v1/courses/S-HEAD/sessions", json=session("S-HEAD/s9", "2025-07-20", count=50), headers=ADMIN
    )
    assert (again.status_code, again.json()) == (200, r.json())
    assert (await held(training, "S-HEAD", 9))[-1] == (sid("S-HEAD/s9"), "head_count", 50, 41, 50)
    assert (await training.course_doc("S-HEAD"))["sessions_held"] == 7


async def test_a_mixed_upload_answers_each_item_as_single_sessions_would(training, monkeypatch) -> None:
    c = training.client
    await create(training, "S-MIX")
    await create(training, "S-MIX-2")
    people = await enrol(training, "S-MIX", ["S-MIX/p0", "S-MIX/p1"])
    (stranger,) = await enrol(training, "S-MIX-2", ["S-MIX-2/p0"])
    first = await c.post("/v1/courses/S-MIX/sessions", json=session("S-MIX/s0", "2025-07-02", count=2), headers=ADMIN)
    assert first.status_code == 201, first.text
    elsewhere = await c.post("/v1/courses/S-MIX-2/sessions", json=session("S-MIX/elsewhere", count=1), headers=ADMIN)
    assert elsewhere.status_code == 201, elsewhere.text
    rev = (await training.course_doc("S-MIX"))["rev"]
    writes = spy(training, monkeypatch, "update_course")

    items = [
        session("S-MIX/s1", "2025-07-03", count=2),
        session("S-MIX/s0", "2025-07-02", count=2),  # recorded before
        session("S-MIX/s1", "2025-07-03", count=2),  # the same client_ref again
        session("S-MIX/elsewhere", count=1),  # recorded a session of another course
        {"client_ref": "S-MIX/s4", "held_on": "2025-07-04", "duration_minutes": 0, "attendance": {"count": 1}},
        session("S-MIX/s5", "2025-08-15", count=1),  # after the course
        session("S-MIX/s6", participant_ids=[people[0], stranger]),  # one of them enrolled elsewhere
        session("S-MIX/s7", "2025-07-07", participant_ids=people),
        session("S-MIX/s8", count=3),  # more than the two enrolled
        session("S-MIX/s5", "2025-07-08", count=1),  # corrected: alone it would be recorded now
        session("S-MIX/s5", "2025-07-09", count=2),  # and this one would then be its duplicate
    ]
    out = await record(training, "S-MIX", items)

    assert [(i["client_ref"], i["status"]) for i in out] == [
        ("S-MIX/s1", "created"),
        ("S-MIX/s0", "duplicate"),
        ("S-MIX/s1", "duplicate"),
        ("S-MIX/elsewhere", "rejected"),
        ("S-MIX/s4", "rejected"),
        ("S-MIX/s5", "rejected"),
        ("S-MIX/s6", "rejected"),
        ("S-MIX/s7", "created"),
        ("S-MIX/s8", "rejected"),
        ("S-MIX/s5", "created"),
        ("S-MIX/s5", "duplicate"),
    ]
    assert [out[i]["id"] for i in (0, 1, 2, 7, 9, 10)] == [
        sid("S-MIX/s1"),
        first.json()["id"],
        sid("S-MIX/s1"),
        sid("S-MIX/s7"),
        sid("S-MIX/s5"),
        sid("S-MIX/s5"),
    ]
    problems = {i: (out[i]["problem"]["status"], out[i]["problem"]["type"].split("/")[-1]) for i in (3, 5, 6, 8)}
    assert problems == {
        3: (409, "client-ref-reused"),
        5: (422, "session-outside-course"),
        6: (422, "participant-not-enrolled"),
        8: (422, "attendance-over-enrolment"),
    }
    assert out[3]["problem"]["detail"] == "client_ref S-MIX/elsewhere already recorded a session of course S-MIX-2"
    assert out[6]["problem"]["participant_ids"] == [stranger]
    assert [e["field"] for e in out[4]["problem"]["errors"]] == ["duration_minutes"]
    assert all(out[i]["id"] is None for i in (3, 4, 5, 6, 8))

    assert [args[0] for args in writes] == ["S-MIX"]
    doc = await training.course_doc("S-MIX")
    assert (doc["rev"], doc["sessions_held"], doc["started_on"]) == (rev + 1, 4, "2025-07-02")
    stored = await sessions(training, "S-MIX")
    assert sorted(stored) == ["S-MIX/s0", "S-MIX/s1", "S-MIX/s5", "S-MIX/s7"]
    assert all(d["counted"] for d in stored.values())
    assert stored["S-MIX/s5"]["held_on"] == "2025-07-08"
    assert (await sessions(training, "S-MIX-2"))["S-MIX/elsewhere"]["counted"]
    assert (await training.course_doc("S-MIX-2"))["sessions_held"] == 1
    ids = [sid("S-MIX/s0"), sid("S-MIX/s1"), sid("S-MIX/s7"), sid("S-MIX/s5")]
    assert [h[0] for h in await held(training, "S-MIX", 8)] == ids

    # Sent again: what is recorded now answers as a duplicate (S-MIX/s5 too, whatever its date), the
    # rest is refused as before; no course write.
    again = await record(training, "S-MIX", items)
    assert [i["status"] for i in again] == [
        "duplicate",
        "duplicate",
        "duplicate",
        "rejected",
        "rejected",
        "duplicate",
        "rejected",
        "duplicate",
        "rejected",
        "duplicate",
        "duplicate",
    ]
    assert [i["id"] for i in again] == [i["id"] for i in out[:5]] + [sid("S-MIX/s5")] + [i["id"] for i in out[6:]]
    assert [again[i]["problem"] for i in (3, 4, 6, 8)] == [out[i]["problem"] for i in (3, 4, 6, 8)]
    assert [args[0] for args in writes] == ["S-MIX"]
    assert (await training.course_doc("S-MIX"))["rev"] == rev + 1


async def test_an_upload_crashed_after_its_course_write_and_sent_again_counts_each_once(training, monkeypatch) -> None:
    await create(training, "S-AFTER")
    items = [session(f"S-AFTER/s{i}", f"2025-07-0{i + 2}", count=n) for i, n in enumerate([8, 12, 10, 15])]
    ids = [sid(i["client_ref"]) for i in items]

    await dies_at(training, monkeypatch, "mark_children_applied", lambda: record(training, "S-AFTER", items))
    doc = await training.course_doc("S-AFTER")
    assert (doc["sessions_held"], doc["last_applied"]) == (4, {"kind": "session", "ids": ids})
    assert not any(d["counted"] for d in (await sessions(training, "S-AFTER")).values())
    rev = doc["rev"]

    # Sent again with one more session: the four are counted already; only the fifth is new.
    more = session("S-AFTER/s4", "2025-07-09", count=20)
    again = await record(training, "S-AFTER", [*items, more])
    assert [(i["status"], i["id"]) for i in again] == [("duplicate", i) for i in ids] + [("created", sid("S-AFTER/s4"))]
    stored = await sessions(training, "S-AFTER")
    assert len(stored) == 5
    assert all(d["counted"] for d in stored.values())
    doc = await training.course_doc("S-AFTER")
    assert (doc["rev"], doc["sessions_held"], doc["participants_counted"]) == (rev + 1, 5, 20)
    assert [(h[0], h[3], h[4]) for h in await held(training, "S-AFTER", 7)] == [
        (ids[0], 0, 8),
        (ids[1], 8, 12),
        (ids[2], 12, 12),
        (ids[3], 12, 15),
        (sid("S-AFTER/s4"), 15, 20),
    ]
    assert await types_after_scheduled(training, "S-AFTER", 7) == [ev.COURSE_STARTED] + [ev.SESSION_HELD] * 5


async def test_an_upload_crashed_before_its_course_write_counts_each_once_when_sent_again(
    training, monkeypatch
) -> None:
    c = training.client
    await create(training, "S-BEFORE")
    items = [session(f"S-BEFORE/s{i}", f"2025-07-0{i + 2}", count=n) for i, n in enumerate([5, 9, 7, 11])]
    ids = [sid(i["client_ref"]) for i in items]

    await dies_at(training, monkeypatch, "update_course", lambda: record(training, "S-BEFORE", items))
    stored = await sessions(training, "S-BEFORE")
    assert len(stored) == 4  # stored in one insert, none counted
    assert not any(d["counted"] for d in stored.values())
    doc = await training.course_doc("S-BEFORE")
    assert (doc["rev"], doc["sessions_held"], doc["last_applied"]) == (1, 0, None)
    assert (await c.get("/v1/courses/S-BEFORE/sessions", headers=ADMIN)).json()["items"] == []

    # Sent again behind a new session: the stored ones are counted after it, in request order.
    first = session("S-BEFORE/s9", "2025-07-01", count=6)
    out = await record(training, "S-BEFORE", [first, *items])
    assert [(i["status"], i["id"]) for i in out] == [("created", i) for i in [sid("S-BEFORE/s9"), *ids]]
    again = await record(training, "S-BEFORE", items)
    assert [(i["status"], i["id"]) for i in again] == [("duplicate", i) for i in ids]
    doc = await training.course_doc("S-BEFORE")
    assert (doc["rev"], doc["sessions_held"], doc["participants_counted"]) == (2, 5, 11)
    assert doc["started_on"] == "2025-07-01"
    stored = await sessions(training, "S-BEFORE")
    assert len(stored) == 5
    assert all(d["counted"] for d in stored.values())
    assert [(h[0], h[3], h[4]) for h in await held(training, "S-BEFORE", 7)] == [
        (sid("S-BEFORE/s9"), 0, 6),
        (ids[0], 6, 6),
        (ids[1], 6, 9),
        (ids[2], 9, 9),
        (ids[3], 9, 11),
    ]


async def test_stored_sessions_a_closed_course_refuses_are_discarded(training, monkeypatch) -> None:
    c = training.client
    await create(training, "S-CLOSED")
    items = [session(f"S-CLOSED/s{i}", count=3) for i in range(3)]

    await dies_at(training, monkeypatch, "update_course", lambda: record(training, "S-CLOSED", items))
    assert len(await sessions(training, "S-CLOSED")) == 3
    r = await c.post("/v1/courses/S-CLOSED:cancel", json={"reason": "mưa bão"}, headers=ADMIN)
    assert r.status_code == 200, r.text

    out = await record(training, "S-CLOSED", [*items, session("S-CLOSED/s9", count=1)])
    assert [(i["status"], i["problem"]["type"].split("/")[-1]) for i in out] == [("rejected", "course-closed")] * 4
    assert await sessions(training, "S-CLOSED") == {}
    assert (await training.course_doc("S-CLOSED"))["sessions_held"] == 0


async def test_the_same_upload_sent_twice_at_once_counts_each_session_once(training) -> None:
    await create(training, "S-RACE")
    counts = [5, 9, 7, 11, 3, 11, 12, 2]
    items = [session(f"S-RACE/s{i}", f"2025-07-{i + 2:02d}", count=n) for i, n in enumerate(counts)]
    answers = await asyncio.gather(record(training, "S-RACE", items), record(training, "S-RACE", items))
    for i in range(len(items)):
        assert sorted(a[i]["status"] for a in answers) == ["created", "duplicate"]
    doc = await training.course_doc("S-RACE")
    assert (doc["sessions_held"], doc["participants_counted"]) == (8, 12)
    assert all(d["counted"] for d in (await sessions(training, "S-RACE")).values())
    largest = [max(counts[: i + 1]) for i in range(len(counts))]
    befores = [0, *largest[:-1]]
    expected = [(sid(s["client_ref"]), b, a) for s, b, a in zip(items, befores, largest, strict=True)]
    assert [(h[0], h[3], h[4]) for h in await held(training, "S-RACE", 10)] == expected
