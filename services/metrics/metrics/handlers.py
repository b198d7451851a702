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
        # Watermarks this projector last wrote, per partition key: it is the only writer of its
        # partitions, so rereading them before every batch would only cost a read per document.
        # Updates stay conditional on these values, so a stale entry (another projector wrote
        # meanwhile) makes an update miss, and the miss rereads from the database.
        self._marks: dict[str, dict[str, int | None]] = {}

    async def __call__(self, events: Sequence[Consumed]) -> None:
        if not events:
            return
        fresh = await self._unseen(events)
        batch_max = max(c.offset for c in events)
        if fresh:
            topic, partition = events[0].topic, events[0].partition
            increments = [(c.offset, inc) for c in fresh for inc in fold(c.envelope.payload())]
            await self._apply(increments, watermark_key(topic, partition), batch_max)
            await self._apply_state(fresh)
            await self.repo.mark_applied([c.envelope.id for c in fresh])
            MONGO_WRITES.inc()
            label = self._base.get(topic, topic)
            EVENTS_APPLIED.labels(label).inc(len(fresh))
            # Late records carry old ce_times; the gauge should only move forward.
            newest = max(self._newest.get(label, 0.0), *(c.envelope.time.timestamp() for c in fresh))
            self._newest[label] = newest
            LAST_EVENT.labels(label).set(newest)

    async def _unseen(self, events: Sequence[Consumed]) -> list[Consumed]:
        """Events not applied before; a relay republish repeats a ce_id at a later offset."""
        seen = await self.repo.applied(list({c.envelope.id for c in events}))
        fresh: list[Consumed] = []
        for c in events:
            if c.envelope.id not in seen:
                seen.add(c.envelope.id)
                fresh.append(c)
        return fresh

    async def _apply(self, increments: list[tuple[int, Increment]], key: str, batch_max: int) -> None:
        if not increments:
            return
        docs = {inc.doc_id: inc for _, inc in increments}
        known = self._marks.setdefault(key, {})
        unread = [d for d in docs if d not in known]
        marks = {d: known[d] for d in docs if d in known}
        if unread:
            read = await self.repo.watermarks(unread, key)
            missing = [(d, docs[d].depth) for d in unread if d not in read]
            if missing:
                await self.repo.create_skeletons(missing)
                MONGO_WRITES.inc(len(missing))
            marks.update(read)
        for _ in range(MAX_CONDITIONAL_ROUNDS):
            deltas = plan_updates(increments, marks, batch_max)
            if not deltas:
                known.update(marks)
                return
            matched = await self.repo.apply_increments(deltas, marks, key, batch_max)
            MONGO_WRITES.inc(len(deltas))
            if matched == len(deltas):
                known.update(marks)
                known.update(dict.fromkeys(deltas, batch_max))
                return
            log.warning("projector_watermark_moved", partition=key, missed=len(deltas) - matched)
            marks = {**marks, **await self.repo.watermarks(deltas, key)}
        known.clear()
        raise RuntimeError(f"counter watermarks of {key} kept moving; another projector is writing")

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
