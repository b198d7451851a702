"""The registry read model folds a batch into one write per document, with the same end state."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

import pytest

from shared.consumer import Consumed
from shared.contracts import registry as ev
from shared.contracts.common import Role, Skill, TeamKind, UnitKind
from shared.envelope import make_event
from shared.infra import FerretDB
from shared.mongo import connect
from shared.registry_view import (
    MEMBER_OFFSETS,
    MEMBERSHIPS,
    TEAMS,
    UNITS,
    VOLUNTEERS,
    ReadModelCache,
    RegistryView,
    _Write,
    why_closed,
)

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

    async def _set_all_if_newer(self, collection: str, writes: Mapping[str, _Write]) -> None:
        if collection == MEMBERSHIPS:
            raise ConnectionError("process died")
        await super()._set_all_if_newer(collection, writes)


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


# --- reorganisation: merged, split and closed units ---------------------------------------------------


def unit_created(code: str, name: str, path: list[str], kind: UnitKind = UnitKind.commune) -> tuple[str, Any, str]:
    payload = ev.UnitCreated(
        code=code, name=name, kind=kind, parent_code=path[-2] if len(path) > 1 else None, path=path
    )
    return (ev.UNIT_CREATED, payload, code)


def unit_renamed(code: str, name: str, path: list[str]) -> tuple[str, Any, str]:
    payload = ev.UnitUpdated(
        code=code, name=name, kind=UnitKind.commune, parent_code=path[-2], path=path, previous_path=path
    )
    return (ev.UNIT_UPDATED, payload, code)


def merged(code: str, successor: str, successor_path: list[str]) -> tuple[str, Any, str]:
    payload = ev.UnitMerged(code=code, successor_code=successor, successor_path=successor_path, merged_on=DAY)
    return (ev.UNIT_MERGED, payload, code)


async def test_merge_split_and_close_are_folded_into_the_unit_and_later_updates_keep_them(
    ferretdb: FerretDB, run_id: str
) -> None:
    name = f"reorg_{run_id}"
    client = connect(ferretdb.url, max_pool_size=4)
    db = client[name]
    heard: list[tuple[str, str]] = []

    async def listener(changes: Sequence[tuple[str, str]]) -> None:
        heard.extend(changes)

    view = RegistryView(db)
    view.on_change(listener)
    split = ev.UnitSplit(
        code="QN-CP",
        successors=["QN-CP-1", "QN-CP-2"],
        teams=[ev.TeamAssignment(team_code="CP-MOBILE", unit_code="QN-CP-1")],
        split_on=DAY,
    )
    closed = ev.UnitClosed(
        code="QN-HL-THCS", path=["QN", "QN-HL", "QN-HL-THCS"], reason="Sáp nhập trường", closed_on=DAY
    )
    # One partition's history: the merge and the rename that follows it arrive in one fetch.
    first = consumed(
        [
            unit_created("QN-VD-QL", "Xã Quan Lạn", ["QN", "QN-VD-QL"]),
            unit_created("QN-VD-ML", "Xã Minh Châu", ["QN", "QN-VD-ML"]),
            unit_created("QN-CP", "Huyện Cô Tô", ["QN", "QN-CP"]),
            unit_created("QN-HL-THCS", "Trường THCS Hạ Long", ["QN", "QN-HL", "QN-HL-THCS"], UnitKind.school),
            merged("QN-VD-ML", "QN-VD-QL", ["QN", "QN-VD-QL"]),
            unit_renamed("QN-VD-ML", "Xã Minh Châu (cũ)", ["QN", "QN-VD-ML"]),
            (ev.UNIT_SPLIT, split, "QN-CP"),
            (ev.UNIT_CLOSED, closed, "QN-HL-THCS"),
        ]
    )
    later = consumed([unit_renamed("QN-CP", "Huyện Cô Tô (đã chia)", ["QN", "QN-CP"])], first=len(first))
    try:
        await view.apply(first)
        await view.apply(later)  # an update in a later batch: its $set leaves how the unit ended
        await view.apply(first)  # a redelivery of the older batch changes nothing

        ml = await db[UNITS].find_one({"_id": "QN-VD-ML"})
        assert ml is not None
        assert (ml["name"], ml["status"], ml["successor_code"], ml["closed_on"]) == (
            "Xã Minh Châu (cũ)",
            "merged",
            "QN-VD-QL",
            "2026-10-10",
        )
        cp = await db[UNITS].find_one({"_id": "QN-CP"})
        assert cp is not None
        assert (cp["name"], cp["status"], cp["successors"], cp["closed_on"]) == (
            "Huyện Cô Tô (đã chia)",
            "closed",
            ["QN-CP-1", "QN-CP-2"],
            "2026-10-10",
        )
        school = await db[UNITS].find_one({"_id": "QN-HL-THCS"})
        assert school is not None
        assert (school["status"], school["close_reason"], school["successors"]) == ("closed", "Sáp nhập trường", [])
        assert {("unit", "QN-VD-ML"), ("unit", "QN-CP"), ("unit", "QN-HL-THCS")} <= set(heard)

        unit, resolved_from = await view.resolve_unit("QN-VD-ML")
        assert unit is not None
        assert (unit["code"], unit["path"], resolved_from) == ("QN-VD-QL", ["QN", "QN-VD-QL"], "QN-VD-ML")
        assert not {"_id", "partition", "offset"} & unit.keys()
        unit, resolved_from = await view.resolve_unit("QN-VD-QL")
        assert unit is not None
        assert (unit["code"], resolved_from) == ("QN-VD-QL", None)
        unit, resolved_from = await view.resolve_unit("QN-CP")
        assert unit is not None
        assert (unit["status"], resolved_from) == ("closed", None)
        assert why_closed(unit) == "unit QN-CP was split on 2026-10-10 into QN-CP-1, QN-CP-2; record for one of those"
        school_unit = (await view.resolve_unit("QN-HL-THCS")).unit
        assert school_unit is not None
        assert why_closed(school_unit) == (
            "unit QN-HL-THCS was closed on 2026-10-10: Sáp nhập trường; it takes no new records"
        )
        assert await view.resolve_unit("QN-KHONG-CO") == (None, None)
    finally:
        await client.drop_database(name)
        await client.close()


async def test_resolution_follows_a_chain_of_merges_and_stops_at_an_unknown_successor_or_a_cycle(
    ferretdb: FerretDB, run_id: str
) -> None:
    name = f"chain_{run_id}"
    client = connect(ferretdb.url, max_pool_size=4)
    view = RegistryView(client[name])
    # Xã Vạn Yên was merged into Xã Đài Xuyên, which was later merged into Đặc khu Vân Đồn.
    chain = consumed(
        [
            unit_created("QN-VD", "Đặc khu Vân Đồn", VAN_DON, UnitKind.special_zone),
            unit_created("QN-DX", "Xã Đài Xuyên", ["QN", "QN-DX"]),
            unit_created("QN-VY", "Xã Vạn Yên", ["QN", "QN-VY"]),
            merged("QN-VY", "QN-DX", ["QN", "QN-DX"]),
            merged("QN-DX", "QN-VD", VAN_DON),
            # A successor this replica has not heard of yet (its key is on another partition).
            unit_created("QN-BL", "Xã Bình Liêu", ["QN", "QN-BL"]),
            merged("QN-BL", "QN-BL-MOI", ["QN", "QN-BL-MOI"]),
            # A registry error: two units merged into each other.
            unit_created("QN-A", "Xã Hải Hà", ["QN", "QN-A"]),
            unit_created("QN-B", "Xã Quảng Hà", ["QN", "QN-B"]),
            merged("QN-A", "QN-B", ["QN", "QN-B"]),
            merged("QN-B", "QN-A", ["QN", "QN-A"]),
        ]
    )
    try:
        await view.apply(chain)
        unit, resolved_from = await view.resolve_unit("QN-VY")
        assert unit is not None
        assert (unit["code"], unit["path"], resolved_from) == ("QN-VD", VAN_DON, "QN-VY")

        unit, resolved_from = await view.resolve_unit("QN-BL")
        assert unit is not None
        assert (unit["code"], unit["status"], unit["successor_code"], resolved_from) == (
            "QN-BL",
            "merged",
            "QN-BL-MOI",
            None,
        )

        unit, _ = await asyncio.wait_for(view.resolve_unit("QN-A"), timeout=5)
        assert unit is not None
        assert unit["status"] == "merged"  # unresolvable: the caller decides, nothing raised

        await view.apply(consumed([unit_created("QN-BL-MOI", "Xã Bình Liêu mới", ["QN", "QN-BL-MOI"])], partition=1))
        unit, resolved_from = await view.resolve_unit("QN-BL")
        assert unit is not None
        assert (unit["code"], resolved_from) == ("QN-BL-MOI", "QN-BL")
    finally:
        await client.drop_database(name)
        await client.close()


async def test_load_many_reads_the_missing_keys_together_and_waits_for_those_being_read() -> None:
    cache = ReadModelCache()
    cache.put(VOLUNTEERS, "v1", {"_id": "v1", "active": True}, cache.generation)
    reads: list[list[str]] = []
    release = asyncio.Event()

    async def find(keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        reads.append(sorted(keys))
        await release.wait()
        return {k: {"_id": k, "active": True} for k in keys if k != "ghost"}

    first = asyncio.ensure_future(cache.load_many(VOLUNTEERS, ["v1", "v2", "v3", "ghost"], find))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(cache.load_many(VOLUNTEERS, ["v2", "v4"], find))
    await asyncio.sleep(0)
    release.set()
    assert sorted(await first) == ["v1", "v2", "v3"]  # an unknown key is simply absent
    assert sorted(await second) == ["v2", "v4"]
    assert reads == [["ghost", "v2", "v3"], ["v4"]]  # v1 from memory, v2 read once for both callers
    assert cache.get(VOLUNTEERS, "ghost") is None  # unknown keys are not remembered as unknown


async def test_load_many_raises_the_read_error_to_every_caller_and_keeps_nothing() -> None:
    cache = ReadModelCache()

    async def find(keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        await asyncio.sleep(0)
        raise ConnectionError("database away")

    outcomes = await asyncio.gather(
        cache.load_many(VOLUNTEERS, ["v1", "v2"], find),
        cache.load_many(VOLUNTEERS, ["v2"], find),
        return_exceptions=True,
    )
    assert [type(o) for o in outcomes] == [ConnectionError, ConnectionError]
    assert cache.get(VOLUNTEERS, "v2") is None
    assert await cache.load_many(VOLUNTEERS, ["v2"], lambda keys: _found(keys)) == {"v2": {"_id": "v2"}}


async def _found(keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {k: {"_id": k} for k in keys}


async def test_a_view_without_team_members_writes_memberships_but_no_member_lists(
    ferretdb: FerretDB, run_id: str
) -> None:
    client = connect(ferretdb.url)
    db = client[f"viewnomembers_{run_id}"]
    view = RegistryView(db, team_members=False)
    try:
        await view.apply(
            consumed([team_created("T1", "Đội Vân Đồn"), started("T1", "v1"), started("T1", "v2"), ended("T1", "v2")])
        )
        team = await db[TEAMS].find_one({"_id": "T1"})
        assert team is not None
        assert "members" not in team
        assert MEMBER_OFFSETS not in team
        memberships = {d["_id"]: d["active"] async for d in db[MEMBERSHIPS].find({})}
        assert memberships == {"T1/v1": True, "T1/v2": False}
    finally:
        await client.drop_database(f"viewnomembers_{run_id}")
        await client.close()


def test_the_cache_holds_only_its_last_seconds_of_documents_and_never_more_than_its_bound() -> None:
    now = [0.0]
    cache = ReadModelCache(ttl_seconds=5.0, max_entries=100, clock=lambda: now[0])
    for i in range(60):
        cache.put(VOLUNTEERS, f"v{i}", {"_id": f"v{i}"}, cache.generation)
    now[0] = 5.0
    cache.put(VOLUNTEERS, "late", {"_id": "late"}, cache.generation)
    assert len(cache) == 1  # the 60 expired ones went when the next was kept

    for i in range(150):
        cache.put(VOLUNTEERS, f"w{i}", {"_id": f"w{i}"}, cache.generation)
    assert len(cache) == 100
    assert cache.get(VOLUNTEERS, "w149") is not None  # the newest stay, the oldest go first
    assert cache.get(VOLUNTEERS, "w49") is None
