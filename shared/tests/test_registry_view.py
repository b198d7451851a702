"""The registry read model folds a batch into one write per document, with the same end state."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date
from typing import Any

import pytest

from shared.consumer import Consumed
from shared.contracts import registry as ev
from shared.contracts.common import Role, Skill, TeamKind, UnitKind
from shared.envelope import make_event
from shared.infra import FerretDB
from shared.mongo import connect
from shared.registry_view import MEMBERSHIPS, TEAMS, UNITS, VOLUNTEERS, ReadModelCache, RegistryView, _Write

pytestmark = [pytest.mark.mongo]


def consumed(events: list[tuple[str, Any, str]], partition: int = 0, first: int = 0) -> list[Consumed]:
    """The events as one fetch from ``partition``, at consecutive offsets from ``first``."""
    return [
        Consumed(make_event(t, payload, source="/registry", key=key), "registry.events.v1", partition, offset)
        for offset, (t, payload, key) in enumerate(events, start=first)
    ]


async def test_batch_folds_memberships_into_one_team_write_and_replays_to_the_same_state(
    ferretdb: FerretDB, run_id: str
) -> None:
    day = date(2026, 10, 10)
    batch = consumed(
        [
            (ev.MEMBERSHIP_STARTED, ev.MembershipStarted(team_code="T1", volunteer_id="v1", since=day), "v1"),
            (ev.MEMBERSHIP_STARTED, ev.MembershipStarted(team_code="T1", volunteer_id="v2", since=day), "v2"),
            (
                ev.TEAM_CREATED,
                ev.TeamCreated(
                    code="T1", name="Đội 1", kind=TeamKind.mobile, unit_code="QN-VD", unit_path=["QN", "QN-VD"]
                ),
                "T1",
            ),
            (ev.MEMBERSHIP_ENDED, ev.MembershipEnded(team_code="T1", volunteer_id="v1", until=day), "v1"),
            (ev.MEMBERSHIP_STARTED, ev.MembershipStarted(team_code="T2", volunteer_id="v1", since=day), "v1"),
        ]
    )
    client = connect(ferretdb.url)
    db = client[f"view_{run_id}"]
    heard: list[tuple[str, str]] = []

    async def listener(changes: Sequence[tuple[str, str]]) -> None:
        heard.extend(changes)

    view = RegistryView(db)
    view.on_change(listener)
    try:
        await view.apply(batch)
        team = await db[TEAMS].find_one({"_id": "T1"})
        assert team is not None
        assert team["members"] == ["v2"]
        assert (team["kind"], team["unit_path"], team["active"]) == ("mobile", ["QN", "QN-VD"], True)
        ended = await db[MEMBERSHIPS].find_one({"_id": "T1/v1"})
        assert ended is not None
        assert ended["active"] is False
        # Once per batch, each changed key once, in the order of the events.
        assert heard == [("membership", "T1/v1"), ("membership", "T1/v2"), ("team", "T1"), ("membership", "T2/v1")]
        assert await view.active_members("T1", ["v1", "v2"]) == set()  # the volunteers are not known yet
        before = {d["_id"]: d async for d in db[TEAMS].find({})}
        await view.apply(batch)  # a redelivery
        assert {d["_id"]: d async for d in db[TEAMS].find({})} == before
        assert before["T2"]["members"] == ["v1"]
    finally:
        await client.drop_database(f"view_{run_id}")
        await client.close()


def test_the_cache_forgets_changed_keys_and_keeps_no_copy_read_across_a_change() -> None:
    now = [0.0]
    cache = ReadModelCache(ttl_seconds=5.0, clock=lambda: now[0])
    cache.put(TEAMS, "T1", {"_id": "T1", "kind": "mobile"}, cache.generation)
    cache.put(MEMBERSHIPS, "T1/v1", {"_id": "T1/v1", "active": True}, cache.generation)
    assert cache.get(TEAMS, "T1") == {"_id": "T1", "kind": "mobile"}

    read_before = cache.generation  # a lookup starts...
    cache.forget([("membership", "T1/v1")])  # ...the view applies a batch meanwhile...
    cache.put(MEMBERSHIPS, "T1/v1", {"_id": "T1/v1", "active": True}, read_before)  # ...its copy is not kept
    assert cache.get(MEMBERSHIPS, "T1/v1") is None
    assert cache.get(TEAMS, "T1") is None  # a membership also changes its team's member list

    cache.put(UNITS, "QN", {"_id": "QN", "path": ["QN"]}, cache.generation)
    now[0] = 4.9
    assert cache.get(UNITS, "QN") is not None
    now[0] = 5.0  # another replica may have changed it by now
    assert cache.get(UNITS, "QN") is None


async def test_the_view_forgets_what_a_batch_changed_in_its_cache(ferretdb: FerretDB, run_id: str) -> None:
    client = connect(ferretdb.url)
    db = client[f"viewcache_{run_id}"]
    cache = ReadModelCache()
    view = RegistryView(db, cache=cache)
    heard_after_forget: list[bool] = []

    async def listener(changes: Sequence[tuple[str, str]]) -> None:
        heard_after_forget.append(cache.get(VOLUNTEERS, "v1") is None)

    view.on_change(listener)
    try:
        cache.put(VOLUNTEERS, "v1", {"_id": "v1", "active": True}, cache.generation)
        cache.put(VOLUNTEERS, "v2", {"_id": "v2", "active": True}, cache.generation)
        left = ev.VolunteerLeft(volunteer_id="v1", unit_code="QN-VD", unit_path=["QN", "QN-VD"])
        await view.apply(consumed([(ev.VOLUNTEER_LEFT, left, "v1")]))
        assert heard_after_forget == [True]  # listeners re-check pending records against fresh documents
        assert cache.get(VOLUNTEERS, "v2") is not None
    finally:
        await client.drop_database(f"viewcache_{run_id}")
        await client.close()


async def test_concurrent_misses_share_one_read_but_not_one_started_before_a_change() -> None:
    cache = ReadModelCache()
    reads: list[str] = []
    release = asyncio.Event()

    async def find() -> dict[str, Any] | None:
        reads.append("read")
        first_read = len(reads) == 1
        await release.wait()
        return {"_id": "v1", "active": first_read}

    first = [asyncio.ensure_future(cache.load(VOLUNTEERS, "v1", find)) for _ in range(10)]
    await asyncio.sleep(0)
    cache.forget([("volunteer", "v1")])  # the view applied a change while that read was out
    after = asyncio.ensure_future(cache.load(VOLUNTEERS, "v1", find))
    await asyncio.sleep(0)
    release.set()
    assert [d["active"] for d in await asyncio.gather(*first)] == [True] * 10  # type: ignore[index]
    assert (await after) == {"_id": "v1", "active": False}
    assert reads == ["read", "read"]
    assert cache.get(VOLUNTEERS, "v1") == {"_id": "v1", "active": False}  # only the read after the change is kept


DAY = date(2026, 10, 10)
VAN_DON = ["QN", "QN-VD"]


def started(team: str, volunteer: str) -> tuple[str, Any, str]:
    return (
        ev.MEMBERSHIP_STARTED,
        ev.MembershipStarted(team_code=team, volunteer_id=volunteer, since=DAY),
        f"{team}/{volunteer}",
    )


def ended(team: str, volunteer: str) -> tuple[str, Any, str]:
    return (
        ev.MEMBERSHIP_ENDED,
        ev.MembershipEnded(team_code=team, volunteer_id=volunteer, until=DAY),
        f"{team}/{volunteer}",
    )


def team_created(code: str, name: str) -> tuple[str, Any, str]:
    return (
        ev.TEAM_CREATED,
        ev.TeamCreated(code=code, name=name, kind=TeamKind.mobile, unit_code="QN-VD", unit_path=VAN_DON),
        code,
    )


def registered(volunteer: str) -> tuple[str, Any, str]:
    payload = ev.VolunteerRegistered(
        volunteer_id=volunteer,
        unit_code="QN-VD",
        unit_path=VAN_DON,
        roles=[Role.youth],
        skills=[Skill.teaching],
        birth_year=2004,
    )
    return (ev.VOLUNTEER_REGISTERED, payload, volunteer)


async def test_two_replicas_applying_memberships_of_one_team_concurrently_keep_every_member(
    ferretdb: FerretDB, run_id: str
) -> None:
    # Memberships of one team are keyed <team>/<volunteer>, so they spread over partitions and the
    # replicas that own them: here four partitions, two per replica, each a stream of small batches.
    name = f"replicas_{run_id}"
    clients = [connect(ferretdb.url, max_pool_size=4) for _ in range(2)]
    views = [RegistryView(c[name]) for c in clients]
    volunteers = {p: [f"tnv-{p}-{i:02d}" for i in range(24)] for p in range(4)}
    # Every third volunteer leaves again a few batches later, so removals race with additions too.
    leaving = {v for vs in volunteers.values() for v in vs[::3]}

    async def stream(partition: int) -> None:
        view = views[partition % 2]
        events = [started("QN-VD-1", v) for v in volunteers[partition]]
        events[12:12] = [ended("QN-VD-1", v) for v in volunteers[partition][:12:3]]
        events += [ended("QN-VD-1", v) for v in volunteers[partition][12::3]]
        for first in range(0, len(events), 3):
            await view.apply(consumed(events[first : first + 3], partition, first))

    try:
        await asyncio.gather(*(stream(p) for p in range(4)))
        assert await views[0].team("QN-VD-1") is None  # members alone do not make the team known
        await views[1].apply(consumed([team_created("QN-VD-1", "Đội tình nguyện Đặc khu Vân Đồn")], partition=4))

        team = await clients[0][name][TEAMS].find_one({"_id": "QN-VD-1"})
        assert team is not None
        everyone = {v for vs in volunteers.values() for v in vs}
        assert sorted(team["members"]) == sorted(everyone - leaving)
        assert len(team["members"]) == len(set(team["members"]))
        memberships = {d["volunteer_id"]: d["active"] async for d in clients[1][name][MEMBERSHIPS].find({})}
        assert memberships == {v: v not in leaving for v in everyone}
        known = await views[0].team("QN-VD-1")
        assert known is not None
        assert (known["code"], known["kind"], known["unit_path"]) == ("QN-VD-1", "mobile", VAN_DON)
    finally:
        await clients[0].drop_database(name)
        await asyncio.gather(*(c.close() for c in clients))


async def test_an_older_batch_redelivered_after_a_newer_one_leaves_the_newer_state(
    ferretdb: FerretDB, run_id: str
) -> None:
    name = f"redelivery_{run_id}"
    clients = [connect(ferretdb.url, max_pool_size=4) for _ in range(2)]
    # ``stale`` lost the partition in a rebalance but finishes its batch after ``owner`` moved on.
    stale, owner = (RegistryView(c[name]) for c in clients)
    db = clients[0][name]
    unit = ev.UnitCreated(
        code="QN-VD", name="Đặc khu Vân Đồn", kind=UnitKind.special_zone, parent_code="QN", path=VAN_DON
    )
    renamed = ev.UnitUpdated(
        code="QN-VD",
        name="Đặc khu Vân Đồn (mới)",
        kind=UnitKind.special_zone,
        parent_code="QN",
        path=VAN_DON,
        previous_path=VAN_DON,
    )
    # Volunteer ids are free text in the contract; one with a "." must still be a member key.
    older = consumed(
        [
            (ev.UNIT_CREATED, unit, "QN-VD"),
            team_created("QN-VD-1", "Đội Hương Sen"),
            registered("tnv.01"),
            registered("tnv-02"),
            started("QN-VD-1", "tnv.01"),
            started("QN-VD-1", "tnv-02"),
        ]
    )
    left = ev.VolunteerLeft(volunteer_id="tnv.01", unit_code="QN-VD", unit_path=VAN_DON)
    newer = consumed(
        [(ev.VOLUNTEER_LEFT, left, "tnv.01"), ended("QN-VD-1", "tnv-02"), (ev.UNIT_UPDATED, renamed, "QN-VD")],
        first=len(older),
    )
    try:
        await owner.apply(older)
        assert await owner.active_members("QN-VD-1", ["tnv.01", "tnv-02"]) == {"tnv.01", "tnv-02"}
        await owner.apply(newer)
        await stale.apply(older)  # the stale replica's whole batch
        await stale.apply(older[5:])  # and a fetch of the started membership alone
        await owner.apply(older)  # a redelivery to the owner itself

        volunteer = await db[VOLUNTEERS].find_one({"_id": "tnv.01"})
        assert volunteer is not None
        assert (volunteer["active"], volunteer["skills"]) == (False, ["teaching"])
        membership = await db[MEMBERSHIPS].find_one({"_id": "QN-VD-1/tnv-02"})
        assert membership is not None
        assert (membership["active"], membership["offset"]) == (False, 7)
        team = await db[TEAMS].find_one({"_id": "QN-VD-1"})
        assert team is not None
        assert team["members"] == ["tnv.01"]  # left the organisation, but still a member of the team
        assert await owner.active_members("QN-VD-1", ["tnv.01", "tnv-02"]) == set()
        assert not await owner.team_has_skill("QN-VD-1", "teaching")
        stored_unit = await db[UNITS].find_one({"_id": "QN-VD"})
        assert stored_unit is not None
        assert stored_unit["name"] == "Đặc khu Vân Đồn (mới)"

        # A fetch that overlaps what was applied: only its new event changes the member list.
        await owner.apply(older[4:] + newer + consumed([started("QN-VD-1", "tnv-04")], first=9))
        team = await db[TEAMS].find_one({"_id": "QN-VD-1"})
        assert team is not None
        assert team["members"] == ["tnv.01", "tnv-04"]
    finally:
        await clients[0].drop_database(name)
        await asyncio.gather(*(c.close() for c in clients))


class _DiesBeforeMembershipWrites(RegistryView):
    """A replica that crashes after its team member changes, before the membership documents."""

    async def _set_if_newer(self, collection: str, key: str, write: _Write) -> None:
        if collection == MEMBERSHIPS:
            raise ConnectionError("process died")
        await super()._set_if_newer(collection, key, write)


async def test_a_crash_between_the_member_change_and_the_membership_write_is_repaired_on_redelivery(
    ferretdb: FerretDB, run_id: str
) -> None:
    name = f"crash_{run_id}"
    client = connect(ferretdb.url, max_pool_size=4)
    db = client[name]
    first = consumed([team_created("QN-HL-2", "Đội Phường Hạ Long"), started("QN-HL-2", "tnv-03")])
    then = consumed([ended("QN-HL-2", "tnv-03")], first=2)
    try:
        await RegistryView(db).apply(first)
        with pytest.raises(ConnectionError):
            await _DiesBeforeMembershipWrites(db).apply(then)
        team = await db[TEAMS].find_one({"_id": "QN-HL-2"})
        assert team is not None
        assert team["members"] == []
        assert (await db[MEMBERSHIPS].find_one({"_id": "QN-HL-2/tnv-03"}) or {}).get("active") is True

        await RegistryView(db).apply(then)  # the uncommitted batch comes again
        membership = await db[MEMBERSHIPS].find_one({"_id": "QN-HL-2/tnv-03"})
        assert membership is not None
        assert membership["active"] is False
        assert (await db[TEAMS].find_one({"_id": "QN-HL-2"}) or {}).get("members") == []
    finally:
        await client.drop_database(name)
        await client.close()
