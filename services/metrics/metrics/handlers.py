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
offsets (the normal case) the events are summed first and spread over units and days once
(:class:`BatchSums`); otherwise each event's increments are checked against each watermark.
The projector keeps every counter document in memory (one per unit: a few MB at province scale),
read once at start, so a batch costs one rewrite per touched unit and no reads.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping, Sequence

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


def watermark_key(topic: str, partition: int) -> str:
    return f"{topic.replace('.', '_')}_{partition}"


class Projector:
    """A :class:`shared.consumer.BatchHandler` writing one generation's projection."""

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
        """Apply a batch; it may hold several partitions (the runner passes a whole fetch)."""
        if not events:
            return
        fresh = await self._unseen(events)
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for c in events:
            key = watermark_key(c.topic, c.partition)
            first[key] = min(first.get(key, c.offset), c.offset)
            last[key] = max(last.get(key, c.offset), c.offset)
        if not fresh:
            return
        sums = BatchSums()
        # Later events of the batch win, so each unit or campaign costs one write per batch.
        latest: dict[tuple[str, str], dict[str, object]] = {}
        per_topic: Tally[str] = Tally()
        newest: dict[str, float] = {}
        for c in fresh:
            payload = c.envelope.payload()
            fold_into(payload, sums.emit)
            change = state_changes(payload)
            if change is not None:
                kind, key, fields = change
                latest.setdefault((kind, key), {}).update(fields)
            per_topic[c.topic] += 1
            ts = c.envelope.time.timestamp()
            if ts > newest.get(c.topic, 0.0):
                newest[c.topic] = ts
        try:
            await self._apply(fresh, sums, first, last)
        except BaseException:
            self._docs = None  # memory may be ahead of Mongo now: read again next time
            raise
        for (kind, key), fields in latest.items():
            await self.repo.set_state(kind, key, fields)
        MONGO_WRITES.inc(len(latest))
        await self.repo.mark_applied([c.envelope.id for c in fresh])
        MONGO_WRITES.inc()
        for topic, n in per_topic.items():
            label = self._base.get(topic, topic)
            EVENTS_APPLIED.labels(label).inc(n)
            # Late records carry old ce_times; the gauge should only move forward.
            self._newest[label] = max(self._newest.get(label, 0.0), newest[topic])
            LAST_EVENT.labels(label).set(self._newest[label])

    async def _unseen(self, events: Sequence[Consumed]) -> list[Consumed]:
        """Events not applied before; a relay republish repeats a ce_id at a later offset."""
        seen = await self.repo.applied(list({c.envelope.id for c in events}))
        fresh: list[Consumed] = []
        for c in events:
            if c.envelope.id not in seen:
                seen.add(c.envelope.id)
                fresh.append(c)
        return fresh

    async def _apply(
        self, fresh: Sequence[Consumed], sums: BatchSums, first: Mapping[str, int], last: Mapping[str, int]
    ) -> None:
        """One conditional rewrite per touched counter document, covering every partition of the batch."""
        if self._docs is None:
            self._docs = await self.repo.load_counters()
        docs = self._docs
        untouched = all(d.marks.get(k, -1) < first[k] for d in docs.values() for k in first)
        deltas, depth = sums.spread() if untouched else self._exact(fresh, last)
        for _ in range(MAX_CONDITIONAL_ROUNDS):
            if not deltas:
                return
            batch: list[CounterDoc] = []
            for unit, sections in deltas.items():
                doc = docs.get(unit) or CounterDoc(unit, depth[unit], 0)
                add_sections(doc.counters, sections)
                for k, offset in last.items():
                    doc.marks[k] = max(doc.marks.get(k, -1), offset)
                batch.append(doc)
            written = await self.repo.save_counters(batch)
            MONGO_WRITES.inc(len(batch))
            if written == len(batch):
                for doc in batch:
                    doc.version += 1
                    docs[doc.unit] = doc
                return
            log.warning("projector_version_moved", missed=len(batch) - written)
            # Our in-memory copies of these now hold unwritten deltas; take Mongo's word for all of
            # them (the ones we did write come back with their new watermarks) and plan exactly.
            for doc in batch:
                docs.pop(doc.unit, None)
            docs.update(await self.repo.load_counters([d.unit for d in batch]))
            deltas, depth = self._exact(fresh, last)
        raise RuntimeError("counter versions kept moving; another projector is writing")

    def _exact(self, fresh: Sequence[Consumed], last: Mapping[str, int]) -> tuple[dict[str, Sections], dict[str, int]]:
        """Per document, the net deltas of exactly the events after its watermark of their partition."""
        assert self._docs is not None
        per_key: dict[str, list[tuple[int, Increment]]] = {}
        for c in fresh:
            folded = fold(c.envelope.payload())
            if folded:
                per_key.setdefault(watermark_key(c.topic, c.partition), []).extend((c.offset, i) for i in folded)
        paths: dict[str, dict[str, int]] = {}
        depth: dict[str, int] = {}
        for key, incs in per_key.items():
            for _, inc in incs:
                depth[inc.doc_id] = inc.depth
            marks = {d: (self._docs[d].marks.get(key) if d in self._docs else None) for d in depth}
            for doc, fields in plan_updates(incs, marks, last[key]).items():
                target = paths.setdefault(doc, {})
                for f, v in fields.items():
                    target[f] = target.get(f, 0) + v
        return prune({doc: as_sections(p) for doc, p in paths.items()}), depth
