"""The projector: folds whole Kafka fetches of every event topic into deltas of the counters.

Exactly-once effect without transactions, with any number of replicas sharing the partitions:
1. a copy of an event at another offset (a relay republishing it) is dropped by the ids of
   :class:`shared.consumer.ProcessedEvents`, stored per partition beside the fetch's deltas (a
   redelivery starts at the committed offset, before both, so their order does not matter);
2. a fetch's fresh events of one partition become one delta, which is visible to readers once it is
   appended to its partition's chain. The append is conditional on the chain ending at or before the
   delta's first offset, so the chain never holds an offset twice: a batch redelivered however
   Kafka cuts it, or written by a replica that lost the partition meanwhile, finds the chain past
   some or all of its offsets and appends only the rest, decoded again from its events. Two
   writers of the same start share one delta document (the second adopts the first's);
3. :mod:`metrics.folding` adds the chains into the counter documents, under watermarks.
The projector keeps nothing but caches: a rebalance or a failed write drops them.
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import TopicPartition
from prometheus_client import Counter, Gauge

from metrics.folding import Folder, FoldLoop
from metrics.projection import CounterSums, Delta, fold_into, increments, state_changes
from metrics.repository import ProjectionRepository
from shared.concurrency import run_in_chunks
from shared.consumer import Consumed, ProcessedEvents
from shared.logging import get_logger

log = get_logger(__name__)

MONGO_WRITES = Counter("bridge_projector_mongo_writes", "Mongo write operations issued by the metrics projector")
EVENTS_APPLIED = Counter("bridge_projector_events_applied", "Events folded into the metrics projection", ["topic"])
LAST_EVENT = Gauge(
    "bridge_projection_last_event_timestamp_seconds",
    "ce_time of the newest event applied to the metrics projection",
    ["topic"],
)
YIELD_EVERY = 1000
# Fetches written while one folder pass runs before the projector waits for it to end.
MAX_UNFOLDED_FETCHES = 8
MAX_APPEND_ROUNDS = 5


def watermark_key(topic: str, partition: int) -> str:
    return f"{topic.replace('.', '_')}_{partition}"


@dataclass
class Folded:
    """One fetch, folded: what :meth:`Projector.write` needs, without the decoded events."""

    events: AsyncIterable[Consumed]  # re-iterable; the exact path reads and decodes them again
    # Per partition, ``(ce_id, offset)`` of the events folded (first copies), in offset order.
    fresh: dict[TopicPartition, list[tuple[str, int]]] = field(default_factory=dict)
    # Per watermark key, the sums of that partition's events.
    sums: dict[str, CounterSums] = field(default_factory=dict)
    first: dict[str, int] = field(default_factory=dict)  # per watermark key, the fetch's lowest and highest offsets
    last: dict[str, int] = field(default_factory=dict)
    states: dict[tuple[str, str], tuple[dict[str, object], tuple[str, int]]] = field(default_factory=dict)
    per_topic: Tally[str] = field(default_factory=Tally)
    newest: dict[str, float] = field(default_factory=dict)


class Listed:
    """Events already decoded, as the re-iterable the fold takes (tests, one-off batches)."""

    def __init__(self, events: Iterable[Consumed]) -> None:
        self._events = list(events)

    def __aiter__(self) -> AsyncIterator[Consumed]:
        return self._each()

    async def _each(self) -> AsyncIterator[Consumed]:
        for c in self._events:
            yield c


class Projector:
    """A :class:`shared.consumer.FetchHandler` writing one generation's projection."""

    def __init__(
        self, repo: ProjectionRepository, processed: ProcessedEvents, *, base_topics: Mapping[str, str] | None = None
    ) -> None:
        self.repo = repo
        self.processed = processed
        # Real (possibly prefixed) topic name -> catalogue name, for metric labels.
        self._base = dict(base_topics or {})
        self._newest: dict[str, float] = {}
        self.folding = FoldLoop(Folder(repo))

    async def __call__(self, events: Sequence[Consumed]) -> None:
        """Fold and write one batch (what the runner does in two overlapping steps), and fold its
        deltas into the counters."""
        await self.write(await self.fold(Listed(events)))
        await self.folding.settle()

    def forget(self) -> None:
        self.processed.forget()

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        self.processed.assigned(partitions)
        # Deltas a stopped process wrote but never folded are folded by whoever carries on.
        self.folding.kick()

    def caught_up(self) -> None:
        # The interval between passes spares the stream's writes; with none coming, waiting only
        # delays the counter documents.
        self.folding.hurry()

    async def close(self) -> None:
        await self.folding.close()

    async def release(self, events: AsyncIterable[Consumed]) -> None:
        async for c in events:
            await self.processed.release(c)

    async def fold(self, events: AsyncIterable[Consumed]) -> Folded:
        """One pass over the events, decoding each once and keeping only their sums."""
        folded = Folded(events)
        first, last, fresh, sums = folded.first, folded.last, folded.fresh, folded.sums
        keys: dict[tuple[str, int], tuple[str, TopicPartition]] = {}
        newest: dict[str, datetime] = {}
        n = 0
        async for c in events:
            n += 1
            if n % YIELD_EVERY == 0:
                # A 10,000-event fetch is ~0.2 s of CPU; let API requests in between.
                await asyncio.sleep(0)
            known = keys.get((c.topic, c.partition))
            if known is None:
                known = keys[(c.topic, c.partition)] = (
                    watermark_key(c.topic, c.partition),
                    TopicPartition(c.topic, c.partition),
                )
            key, tp = known
            if c.offset < first.get(key, c.offset + 1):
                first[key] = c.offset
            if c.offset > last.get(key, -1):
                last[key] = c.offset
            if not await self.processed.fresh(c):
                continue
            env = c.envelope
            fresh.setdefault(tp, []).append((env.id, c.offset))
            target = sums.get(key)
            if target is None:
                target = sums[key] = CounterSums()
            payload = env.payload()
            fold_into(payload, target.emit)
            change = state_changes(payload)
            if change is not None:
                # Later events of the fetch win, so each unit or campaign costs one write.
                kind, code, fields = change
                merged = folded.states.get((kind, code), ({}, (key, c.offset)))[0]
                merged.update(fields)
                folded.states[(kind, code)] = (merged, (key, c.offset))
            folded.per_topic[c.topic] += 1
            seen = newest.get(c.topic)
            if seen is None or env.time > seen:
                newest[c.topic] = env.time
        folded.newest = {topic: t.timestamp() for topic, t in newest.items()}
        return folded

    async def write(self, folded: Folded) -> dict[str, float]:
        """Apply a folded fetch; returns the newest ce_time applied per topic."""
        if not folded.fresh:
            return {}
        while self.folding.behind >= MAX_UNFOLDED_FETCHES:
            self.folding.hurry()
            await self.folding.next_pass()
        # Side by side: each round trip of this write waits for the next fetch's fold to yield.
        await run_in_chunks([lambda: self.processed.record_ids(folded.fresh), lambda: self._append(folded)])
        MONGO_WRITES.inc()
        self.folding.behind += 1
        self.folding.kick()
        for (kind, code), (fields, position) in folded.states.items():
            await self.repo.set_state(kind, code, fields, position)
        MONGO_WRITES.inc(len(folded.states))
        for topic, n in folded.per_topic.items():
            label = self._base.get(topic, topic)
            EVENTS_APPLIED.labels(label).inc(n)
            # Late records carry old ce_times; the gauge should only move forward.
            self._newest[label] = max(self._newest.get(label, 0.0), folded.newest[topic])
            LAST_EVENT.labels(label).set(self._newest[label])
        return folded.newest

    async def _append(self, folded: Folded) -> None:
        """One delta per partition with counts, appended to its chain; where the chain already holds
        some of its offsets, the rest of the partition's events become a delta of their own."""
        todo = [
            Delta(key, folded.first[key], folded.last[key] + 1, rows)
            for key, sums in folded.sums.items()
            if (rows := {doc_id: fields for doc_id, fields in sums.docs.items() if fields})
        ]
        for _ in range(MAX_APPEND_ROUNDS):
            if not todo:
                return
            stored = await self.repo.put_deltas(todo)
            MONGO_WRITES.inc()
            reached = await self.repo.extend_chains(stored)
            MONGO_WRITES.inc()
            rest = [d for d in todo if reached.get(d.key, d.end) < d.end]
            if rest:
                log.info("projector_chain_overlap", partitions=len(rest))
                self.folding.folder.orphaned()
            todo = []
            for d in rest:
                start = reached[d.key]
                rows = await self._sums_from(folded, d.key, start)
                if rows:
                    todo.append(Delta(d.key, start, d.end, rows))
        if todo:
            raise RuntimeError("delta chains kept moving; another projector is writing the same partitions")

    async def _sums_from(self, folded: Folded, key: str, start: int) -> dict[str, dict[str, int]]:
        """The sums of the fetch's fresh events of partition ``key`` at ``start`` or later."""
        fresh = {(tp.topic, tp.partition, offset) for tp, pairs in folded.fresh.items() for _, offset in pairs}
        out = CounterSums()
        async for c in folded.events:  # read and decoded again
            if c.offset < start or (c.topic, c.partition, c.offset) not in fresh:
                continue
            if watermark_key(c.topic, c.partition) == key:
                out.add(increments(c.envelope.payload()))
        return {doc_id: fields for doc_id, fields in out.docs.items() if fields}
