"""Processed event ids held as hashes: a hash is never taken for an id until the stored id is read."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from shared.consumer import Consumed, ProcessedEvents
from shared.contracts import registry as ev
from shared.envelope import Envelope, make_event
from shared.seen import PartitionIds

TOPIC = "registry.events.v1"


def same_hash(_: str) -> int:
    """Every id collides: only reading the stored ids can tell them apart."""
    return 7


def event(n: int) -> Envelope:
    code = f"QN-U{n}"
    payload = ev.UnitCreated(code=code, name=f"Xã {n}", kind="commune", parent_code="QN", path=["QN", code])
    return make_event(ev.UNIT_CREATED, payload, source="/test", key=code)


def at(e: Envelope, offset: int, partition: int = 0) -> Consumed:
    return Consumed(e, TOPIC, partition, offset)


# --- the in-memory index alone -------------------------------------------------------------------


def test_folded_ids_are_found_by_hash_and_the_window_leaves_old_ones_out() -> None:
    ids = PartitionIds(seal_at=3)
    for offset, event_id in enumerate(["a", "b", "c", "d"]):
        ids.add(event_id, offset)
    ids.stored(through=2, keep_from=0)  # four ids, three stored: a fold takes those three
    assert ids.exact("a") is None
    assert ids.candidates("a") == [0]
    assert ids.exact("d") == 3  # not stored yet: still an object, found exactly
    assert list(ids.candidates("zzz")) == []
    ids.stored(through=3, keep_from=2)  # the window now starts at offset 2
    assert list(ids.candidates("a")) == []
    assert ids.candidates("c") == [2]
    assert len(ids) == 2  # c and d


def test_a_fold_past_the_window_lets_its_segment_go_and_still_finds_the_others() -> None:
    ids = PartitionIds(seal_at=2)
    for offset, event_id in enumerate("abcdef"):  # folded two at a time: [a b] [c d] [e f]
        ids.add(event_id, offset)
        ids.stored(through=offset, keep_from=0)
    ids.add("g", 6)
    ids.add("h", 7)
    ids.stored(through=7, keep_from=2)  # the next fold drops [a b] and clears their bits
    assert list(ids.candidates("a")) == []
    assert ids.candidates("c") == [2]
    assert ids.candidates("h") == [7]
    assert len(ids) == 6


def test_ids_with_one_hash_all_come_back_as_candidates() -> None:
    ids = PartitionIds(seal_at=1, id_hash=same_hash)
    ids.add("a", 10)
    ids.add("b", 11)
    ids.stored(through=11, keep_from=0)
    assert sorted(ids.candidates("anything")) == [10, 11]


def test_dropping_a_released_id_forgets_only_that_offset() -> None:
    ids = PartitionIds()
    ids.add("a", 5)
    ids.drop("a", 6)
    assert ids.exact("a") == 5
    ids.drop("a", 5)
    assert ids.exact("a") is None


# --- on the real database ------------------------------------------------------------------------


@pytest.mark.mongo
async def test_when_every_hash_collides_only_true_copies_are_skipped(scratch_db: AsyncDatabase[dict[str, Any]]) -> None:
    events = [event(n) for n in range(6)]
    first = ProcessedEvents(scratch_db["processed"], "g", id_hash=same_hash)
    taken = [c for c in (at(e, o) for o, e in enumerate(events)) if await first.fresh(c)]
    assert len(taken) == 6  # one hash, six ids: none mistaken for another
    await first.record(taken)

    # A restarted process holds every stored id by hash only.
    restarted = ProcessedEvents(scratch_db["processed"], "g", id_hash=same_hash)
    assert await restarted.fresh(at(events[2], 2))  # the same record redelivered
    assert not await restarted.fresh(at(events[4], 9))  # republished later: a copy
    newcomer = event(99)
    assert await restarted.fresh(at(newcomer, 10))  # same hash, another id
    assert not await restarted.fresh(at(newcomer, 11))  # and its own copy is known at once

    # A dead-lettered event is forgotten in the database: its replay is applied, not skipped.
    await restarted.release(at(events[1], 1))
    assert await restarted.fresh(at(events[1], 12))


@pytest.mark.mongo
async def test_ids_folded_past_many_fetches_still_know_their_copies(scratch_db: AsyncDatabase[dict[str, Any]]) -> None:
    # Enough ids per partition (5,000, past SEAL_AT) that most are folded into the arrays.
    processed = ProcessedEvents(scratch_db["processed"], "g", window=20_000)
    events = [event(n) for n in range(10_000)]
    for lo in range(0, 10_000, 1_000):
        batch = [at(e, lo + i, partition=(lo // 1_000) % 2) for i, e in enumerate(events[lo : lo + 1_000])]
        assert all([await processed.fresh(c) for c in batch])
        await processed.record(batch)
    assert processed.cached() == 10_000
    copies = [at(events[5], 10_001, partition=0), at(events[1_500], 10_002, partition=1)]
    assert [await processed.fresh(c) for c in copies] == [False, False]
    # Copies are per partition (a copy keeps its key, so its partition): an id of partition 0 met
    # on partition 1 is not that partition's history.
    assert await processed.fresh(at(events[6], 10_003, partition=1))
