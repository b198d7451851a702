"""The projector: folds partition batches of every event topic into pre-aggregated counters.

Exactly-once effect without transactions, in one writer per partition:
1. events whose ce_id is in ``applied_events`` (or repeated inside the batch) are dropped;
2. the rest fold into in-memory increments, each remembering its event's offset;
3. each touched counter document keeps a watermark per partition, and receives only the increments
   of events after it; so a batch redelivered after a crash between the Mongo write and the offset
   commit changes nothing it already changed, even if Kafka cuts the batches differently;
4. the update of a document is conditional on the watermark we read, so a zombie projector that
   raced us makes our update miss (we re-read and redo) instead of double-counting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import Counter, Gauge

from metrics.projection import Increment, fold, plan_updates, state_changes
from metrics.repository import ProjectionRepository
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
        # Per counter document, the watermark of each partition as this projector last read or wrote
        # it: it is the only writer of its partitions, so rereading them before every batch would
        # only cost a read per document. Updates stay conditional on these values, so a stale entry
        # (another projector wrote meanwhile) makes an update miss, and the miss rereads.
        self._marks: dict[str, dict[str, int | None]] = {}

    async def __call__(self, events: Sequence[Consumed]) -> None:
        """Apply a batch; it may hold several partitions (the runner passes a whole fetch)."""
        if not events:
            return
        fresh = await self._unseen(events)
        batch_max: dict[str, int] = {}
        for c in events:
            key = watermark_key(c.topic, c.partition)
            batch_max[key] = max(batch_max.get(key, -1), c.offset)
        if fresh:
            increments: dict[str, list[tuple[int, Increment]]] = {}
            for c in fresh:
                folded = fold(c.envelope.payload())
                if folded:
                    increments.setdefault(watermark_key(c.topic, c.partition), []).extend((c.offset, i) for i in folded)
            await self._apply(increments, batch_max)
            await self._apply_state(fresh)
            await self.repo.mark_applied([c.envelope.id for c in fresh])
            MONGO_WRITES.inc()
            newest: dict[str, float] = {}
            for c in fresh:
                label = self._base.get(c.topic, c.topic)
                newest[label] = max(newest.get(label, 0.0), c.envelope.time.timestamp())
                EVENTS_APPLIED.labels(label).inc()
            for label, ts in newest.items():
                # Late records carry old ce_times; the gauge should only move forward.
                self._newest[label] = max(self._newest.get(label, 0.0), ts)
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

    async def _apply(self, increments: Mapping[str, list[tuple[int, Increment]]], batch_max: Mapping[str, int]) -> None:
        """One conditional update per counter document, covering every partition of the batch."""
        depth = {inc.doc_id: inc.depth for incs in increments.values() for _, inc in incs}
        if not depth:
            return
        unread = [d for d in depth if d not in self._marks]
        if unread:
            read = await self.repo.watermarks(unread)
            missing = [(d, depth[d]) for d in unread if d not in read]
            if missing:
                await self.repo.create_skeletons(missing)
                MONGO_WRITES.inc(len(missing))
                read.update({d: {} for d, _ in missing})
            self._marks.update(read)
        for _ in range(MAX_CONDITIONAL_ROUNDS):
            deltas: dict[str, dict[str, int]] = {}
            expected: dict[str, dict[str, int | None]] = {}
            for key, incs in increments.items():
                marks = {d: self._marks[d].get(key) for d in depth}
                for doc, fields in plan_updates(incs, marks, batch_max[key]).items():
                    target = deltas.setdefault(doc, {})
                    for f, v in fields.items():
                        target[f] = target.get(f, 0) + v
                    expected.setdefault(doc, {})[key] = marks[doc]
            if not deltas:
                return
            matched = await self.repo.apply_increments(deltas, expected, batch_max)
            MONGO_WRITES.inc(len(deltas))
            if matched == len(deltas):
                for doc, keys in expected.items():
                    self._marks[doc].update({k: batch_max[k] for k in keys})
                return
            log.warning("projector_watermark_moved", missed=len(deltas) - matched)
            self._marks.update(await self.repo.watermarks(list(deltas)))
        self._marks.clear()
        raise RuntimeError("counter watermarks kept moving; another projector is writing")

    async def _apply_state(self, events: Sequence[Consumed]) -> None:
        # Later events of the batch win, so each unit or campaign costs one write per batch.
        latest: dict[tuple[str, str], dict[str, object]] = {}
        for c in events:
            change = state_changes(c.envelope.payload())
            if change is not None:
                kind, key, fields = change
                latest.setdefault((kind, key), {}).update(fields)
        for (kind, key), fields in latest.items():
            await self.repo.set_state(kind, key, fields)
        MONGO_WRITES.inc(len(latest))
