"""The projector: folds whole Kafka fetches of every event topic into plain counter documents.

Exactly-once effect without transactions, with any number of replicas sharing the partitions:
1. a copy of an event at another offset (a relay republishing it) is dropped by the ids of
   :class:`shared.consumer.ProcessedEvents`, stored per partition as the counters change (a
   redelivery starts at the committed offset, before both, so their order does not matter);
2. each counter document (one per unit and day) keeps a watermark per partition, ``wm.<key>``:
   the highest offset whose events it includes. Every ``$inc`` is conditional on the watermarks
   of the partitions it adds events from, and raises them in the same atomic update. In the normal
   case the fetch is new to the document (``wm.k < first``) and one update does it; otherwise the
   update misses, the document's watermarks are read, and exactly the events after them are added,
   conditional on the watermarks read. So a batch redelivered however Kafka cuts it, or applied by
   a replica that lost the partition meanwhile, changes nothing twice.
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

from metrics.projection import CounterSums, Sums, fold_into, increments, nonzero, state_changes
from metrics.repository import ProjectionRepository, marks_filter
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
MAX_CONDITIONAL_ROUNDS = 5
YIELD_EVERY = 1000


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

    async def __call__(self, events: Sequence[Consumed]) -> None:
        """Fold and write one batch (what the runner does in two overlapping steps)."""
        await self.write(await self.fold(Listed(events)))

    def forget(self) -> None:
        self.processed.forget()

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        self.processed.assigned(partitions)

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
        # Side by side: each round trip of this write waits for the next fetch's fold to yield.
        await run_in_chunks([lambda: self.processed.record_ids(folded.fresh), lambda: self._add_counts(folded)])
        MONGO_WRITES.inc()
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

    async def _add_counts(self, folded: Folded) -> None:
        changes: Sums = {}
        keys_of: dict[str, list[str]] = {}
        for key, sums in folded.sums.items():
            for doc_id, fields in sums.docs.items():
                keys_of.setdefault(doc_id, []).append(key)
                target = changes.setdefault(doc_id, {})
                for f, v in fields.items():
                    target[f] = target.get(f, 0) + v
        guards = {d: {f"wm.{k}": {"$not": {"$gte": folded.first[k]}} for k in keys} for d, keys in keys_of.items()}
        missed = await self.repo.add_counts(changes, guards, folded.last)
        MONGO_WRITES.inc(len(changes))
        for _ in range(MAX_CONDITIONAL_ROUNDS):
            if not missed:
                return
            # Some documents have seen part of this fetch: add exactly what they lack.
            log.info("projector_exact_path", documents=len(missed))
            marks = await self.repo.marks(missed)
            exact = await self._exact(folded, missed, marks)
            guards = {d: marks_filter({k: marks.get(d, {}).get(k) for k in keys_of[d]}) for d in missed}
            todo = {d: nonzero(exact.get(d, {})) for d in missed}
            missed = await self.repo.add_counts(todo, guards, folded.last)
            MONGO_WRITES.inc(len(todo))
        raise RuntimeError("counter watermarks kept moving; another projector is writing the same partitions")

    async def _exact(self, folded: Folded, docs: set[str], marks: Mapping[str, Mapping[str, int]]) -> Sums:
        """Per document in ``docs``, the sums of the fetch's fresh events after its watermarks."""
        fresh = {(tp.topic, tp.partition, offset) for tp, pairs in folded.fresh.items() for _, offset in pairs}
        out = CounterSums()
        async for c in folded.events:  # read and decoded again
            if (c.topic, c.partition, c.offset) not in fresh:
                continue
            key = watermark_key(c.topic, c.partition)
            for doc_id, fields in increments(c.envelope.payload()).items():
                if doc_id in docs and c.offset > marks.get(doc_id, {}).get(key, -1):
                    out.add({doc_id: fields})
        return out.docs
