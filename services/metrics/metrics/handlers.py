"""The projector: folds whole Kafka fetches of every event topic into pre-aggregated counters.

Exactly-once effect without transactions, in one writer per partition:
1. events whose ce_id is in ``applied_events`` (or repeated inside the batch) are dropped;
2. each counter document (one per unit) keeps a watermark per partition: the highest offset whose
   events it includes. A document takes only the increments of events after its watermark, so a
   batch redelivered after a crash between the Mongo write and the offset commit changes nothing
   it already changed, even if Kafka cuts the batches differently;
3. every rewrite of a document is conditional on the version we read, so a zombie projector that
   raced us makes our write miss (we re-read and redo exactly) instead of double-counting.

Two ways to plan a batch, with the same result: when no document has seen any of the batch's
offsets (the normal case) the events are summed first and added into the unit documents once
(:class:`BatchSums`); otherwise each event's increments are checked against each watermark.
The projector keeps every counter document in memory (one per unit: a few MB at province scale),
read once at start, so a batch costs one rewrite per touched unit and no reads.
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge

from metrics.projection import (
    BatchSums,
    Increment,
    Sections,
    add_sections,
    as_sections,
    fold,
    fold_into,
    plan_updates,
    prune,
    state_changes,
)
from metrics.repository import CounterDoc, ProjectionRepository
from shared.consumer import Consumed
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
    # Per topic, the ids of the events folded (first occurrence, not applied before).
    fresh_by_topic: dict[str, list[str]]
    sums: BatchSums
    first: dict[str, int]  # per partition key, the batch's lowest and highest offsets
    last: dict[str, int]
    states: dict[tuple[str, str], dict[str, object]]
    per_topic: Tally[str]
    newest: dict[str, float]


class Listed:
    """Events already decoded, as the re-iterable the fold takes (tests, one-off batches)."""

    def __init__(self, events: Iterable[Consumed]) -> None:
        self._events = list(events)

    def __aiter__(self) -> AsyncIterator[Consumed]:
        return self._each()

    async def _each(self) -> AsyncIterator[Consumed]:
        for c in self._events:
            yield c


class Touched:
    """The counter documents a fetch changes, taken from memory (or new) on first use."""

    def __init__(self, docs: Mapping[str, CounterDoc]) -> None:
        self._known = docs
        self.docs: dict[str, CounterDoc] = {}

    def __call__(self, unit: str, depth: int) -> dict[str, Any]:
        doc = self.docs.get(unit)
        if doc is None:
            doc = self.docs[unit] = self._known.get(unit) or CounterDoc(unit, depth, 0)
        return doc.counters


class Projector:
    """A :class:`shared.consumer.FetchHandler` writing one generation's projection."""

    def __init__(self, repo: ProjectionRepository, *, base_topics: Mapping[str, str] | None = None) -> None:
        self.repo = repo
        # Real (possibly prefixed) topic name -> catalogue name, for metric labels.
        self._base = dict(base_topics or {})
        self._newest: dict[str, float] = {}
        # Every counter document as this projector last read or wrote it (None: not loaded yet).
        # It is the only writer of its partitions; a stale entry (another projector wrote
        # meanwhile) makes the conditional rewrite miss, and the miss re-reads.
        self._docs: dict[str, CounterDoc] | None = None

    async def __call__(self, events: Sequence[Consumed]) -> None:
        """Fold and write one batch (what the runner does in two overlapping steps)."""
        await self.write(await self.fold(Listed(events)))

    def forget(self) -> None:
        self._docs = None
        self.repo.forget_applied()

    async def fold(self, events: AsyncIterable[Consumed]) -> Folded:
        """One pass over the events, decoding each once and keeping only their sums.

        An event counts as fresh unless its id was applied before or already seen in this
        fetch (a relay republish repeats a ce_id at a later offset); its id is remembered at
        once, so the next fetch, folded while this one is being written, skips it too.
        """
        applied = await self.repo.applied_ids()
        folded = Folded(events, {}, BatchSums(), {}, {}, {}, Tally(), {})
        first, last, fresh_of, emit = folded.first, folded.last, folded.fresh_by_topic, folded.sums.emit
        keys: dict[tuple[str, int], str] = {}
        newest: dict[str, datetime] = {}
        n = 0
        async for c in events:
            n += 1
            if n % YIELD_EVERY == 0:
                # A 10,000-event fetch is ~0.2 s of CPU; let API requests in between.
                await asyncio.sleep(0)
            key = keys.get((c.topic, c.partition))
            if key is None:
                key = keys[(c.topic, c.partition)] = watermark_key(c.topic, c.partition)
            lo = first.get(key)
            if lo is None or c.offset < lo:
                first[key] = c.offset
            if c.offset > last.get(key, -1):
                last[key] = c.offset
            env = c.envelope
            if env.id in applied:
                continue
            applied.add(env.id)
            ids_of_topic = fresh_of.get(c.topic)
            if ids_of_topic is None:
                ids_of_topic = fresh_of[c.topic] = []
            ids_of_topic.append(env.id)
            payload = env.payload()
            fold_into(payload, emit)
            change = state_changes(payload)
            if change is not None:
                # Later events of the fetch win, so each unit or campaign costs one write.
                kind, code, fields = change
                folded.states.setdefault((kind, code), {}).update(fields)
            folded.per_topic[c.topic] += 1
            seen = newest.get(c.topic)
            if seen is None or env.time > seen:
                newest[c.topic] = env.time
        folded.newest = {topic: t.timestamp() for topic, t in newest.items()}
        return folded

    async def write(self, folded: Folded) -> dict[str, float]:
        """Apply a folded fetch; returns the newest ce_time applied per topic."""
        if not folded.fresh_by_topic:
            return {}
        await self._apply(folded)
        for (kind, code), fields in folded.states.items():
            await self.repo.set_state(kind, code, fields)
        MONGO_WRITES.inc(len(folded.states))
        await self.repo.mark_applied(folded.fresh_by_topic)
        MONGO_WRITES.inc()
        for topic, n in folded.per_topic.items():
            label = self._base.get(topic, topic)
            EVENTS_APPLIED.labels(label).inc(n)
            # Late records carry old ce_times; the gauge should only move forward.
            self._newest[label] = max(self._newest.get(label, 0.0), folded.newest[topic])
            LAST_EVENT.labels(label).set(self._newest[label])
        return folded.newest

    async def _apply(self, folded: Folded) -> None:
        """One conditional rewrite per touched counter document, covering every partition of the batch."""
        try:
            await self._rewrite(folded)
        except BaseException:
            self._docs = None  # memory may be ahead of Mongo now: read again next time
            raise

    async def _rewrite(self, folded: Folded) -> None:
        if self._docs is None:
            self._docs = await self.repo.load_counters()
        docs, first, last = self._docs, folded.first, folded.last
        untouched = all(d.marks.get(k, -1) < first[k] for d in docs.values() for k in first)
        for round_ in range(MAX_CONDITIONAL_ROUNDS):
            touched = Touched(docs)
            if untouched and round_ == 0:
                folded.sums.add_into(touched)
            else:
                deltas, depth = await self._exact(folded)
                for unit, sections in deltas.items():
                    add_sections(touched(unit, depth[unit]), sections)
            if not touched.docs:
                return
            batch = list(touched.docs.values())
            for doc in batch:
                for k, offset in last.items():
                    doc.marks[k] = max(doc.marks.get(k, -1), offset)
            written = await self.repo.save_counters(batch)
            MONGO_WRITES.inc(len(batch))
            if written == len(batch):
                for doc in batch:
                    doc.version += 1
                    doc.stored = True
                    docs[doc.unit] = doc
                return
            log.warning("projector_version_moved", missed=len(batch) - written)
            # Our in-memory copies of these now hold unwritten deltas; take Mongo's word for all of
            # them (the ones we did write come back with their new watermarks) and plan exactly.
            for doc in batch:
                docs.pop(doc.unit, None)
            docs.update(await self.repo.load_counters([d.unit for d in batch]))
        raise RuntimeError("counter versions kept moving; another projector is writing")

    async def _exact(self, folded: Folded) -> tuple[dict[str, Sections], dict[str, int]]:
        """Per document, the net deltas of exactly the events after its watermark of their partition."""
        assert self._docs is not None
        last = folded.last
        per_key: dict[str, list[tuple[int, Increment]]] = {}
        todo = {i for ids in folded.fresh_by_topic.values() for i in ids}
        async for c in folded.events:  # read and decoded again: the same first occurrences the fold took
            if c.envelope.id not in todo:
                continue
            todo.discard(c.envelope.id)
            increments = fold(c.envelope.payload())
            if increments:
                key = watermark_key(c.topic, c.partition)
                per_key.setdefault(key, []).extend((c.offset, i) for i in increments)
        paths: dict[str, dict[str, int]] = {}
        depth: dict[str, int] = {}
        for key, pairs in per_key.items():
            for _, inc in pairs:
                depth[inc.doc_id] = inc.depth
            marks = {d: (self._docs[d].marks.get(key) if d in self._docs else None) for d in depth}
            for doc, fields in plan_updates(pairs, marks, last[key]).items():
                target = paths.setdefault(doc, {})
                for f, v in fields.items():
                    target[f] = target.get(f, 0) + v
        return prune({doc: as_sections(p) for doc, p in paths.items()}), depth
