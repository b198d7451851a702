"""The registry read model folds a batch into one write per document, with the same end state."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date
from typing import Any

import pytest

from shared.consumer import Consumed
from shared.contracts import registry as ev
from shared.envelope import make_event
from shared.infra import FerretDB
from shared.mongo import connect
from shared.registry_view import MEMBERSHIPS, TEAMS, UNITS, VOLUNTEERS, ReadModelCache, RegistryView

pytestmark = [pytest.mark.mongo]


def consumed(events: list[tuple[str, Any, str]]) -> list[Consumed]:
    return [
        Consumed(make_event(t, payload, source="/registry", key=key), "registry.events.v1", 0, offset)
        for offset, (t, payload, key) in enumerate(events)
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
                ev.TeamCreated(code="T1", name="Đội 1", kind="mobile", unit_code="QN-VD", unit_path=["QN", "QN-VD"]),
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
