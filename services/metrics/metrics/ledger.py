"""The event log read back: what the system knew at a moment, and what arrived after it.

The counters answer "now". Closing a week, listing late data and answering "as of" need the events
themselves, with the order and time they reached the log: Kafka keeps them. A :class:`Cut` is one
offset per partition (everything below it was in the log); it is taken from the end offsets when a
period is closed, or from the broker's time index for a timestamp. Reading a span of the log is a
consumer of its own, outside every group, so the projector keeps its position.

A copy of an event (a republished outbox entry) has the id of its first copy and is skipped, as the
projector skips it, so the log read here adds up to the counters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from metrics.projection import Change, fold_into
from shared.envelope import EnvelopeError, decode
from shared.kafka import read_spans
from shared.logging import get_logger

log = get_logger(__name__)

# How long a read of the log waits for a partition that should still have records.
STALL_SECONDS = 30.0
READ_RECORDS = 2000


def cut_key(topic: str, partition: int) -> str:
    """A partition as a stored key (base topic name, no dots: FerretDB field names may not have any)."""
    return f"{topic.replace('.', '_')}_{partition}"


Cut = dict[str, int]
"""``{cut_key: offset}``: the log up to (not including) these offsets."""


@dataclass(frozen=True)
class DayChange:
    """One event's effect on one unit's counters of one day."""

    unit: str
    day: str
    team: str | None
    fields: tuple[Change, ...]


@dataclass
class Entry:
    """One event of the log, with what it changes (dated changes only)."""

    key: str  # cut key of its partition
    offset: int
    appended_at: datetime
    event_id: str
    event_type: str
    subject: str | None
    changes: list[DayChange] = field(default_factory=list)


class EventLog:
    """Reads the event topics (``topic_of``: base name -> real, prefixed name) of one broker."""

    def __init__(self, bootstrap: str, topic_of: Mapping[str, str]) -> None:
        self._bootstrap = bootstrap
        self._topic_of = dict(topic_of)
        self._base = {real: base for base, real in topic_of.items()}

    async def _consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        return consumer

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        out = []
        for real in self._topic_of.values():
            parts = consumer.partitions_for_topic(real)
            if parts is None:
                await consumer._client.force_metadata_update()  # a topic created since start
                parts = consumer.partitions_for_topic(real) or set()
            out += [TopicPartition(real, p) for p in sorted(parts)]
        return out

    def _key(self, tp: TopicPartition) -> str:
        return cut_key(self._base[tp.topic], tp.partition)

    async def end(self) -> Cut:
        """The log as it stands now."""
        consumer = await self._consumer()
        try:
            tps = await self._partitions(consumer)
            ends = await consumer.end_offsets(tps)
            return {self._key(tp): int(ends[tp]) for tp in tps}
        finally:
            await consumer.stop()

    async def at(self, moment: datetime) -> Cut:
        """The log as it stood at ``moment``: per partition, the first offset appended later."""
        consumer = await self._consumer()
        try:
            tps = await self._partitions(consumer)
            ends = await consumer.end_offsets(tps)
            found = await consumer.offsets_for_times({tp: int(moment.timestamp() * 1000) for tp in tps})
            out: Cut = {}
            for tp in tps:
                hit = found.get(tp)
                out[self._key(tp)] = int(hit.offset) if hit is not None else int(ends[tp])
            return out
        finally:
            await consumer.stop()

    async def entries(
        self, since: datetime, until: Cut | None, days: tuple[str, str], units: Sequence[str]
    ) -> AsyncIterator[Entry]:
        """Events appended from ``since`` up to ``until`` (the end when None) that change a dated
        counter of one of ``units`` on a day in ``days`` (first and last ISO date), first copies only."""
        wanted = set(units)
        first_day, last_day = days
        seen: set[str] = set()
        consumer = await self._consumer()
        try:
            tps = await self._partitions(consumer)
            ends = await consumer.end_offsets(tps)
            starts = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
            stop = {tp: min(int(ends[tp]), (until or {}).get(self._key(tp), int(ends[tp]))) for tp in tps}
            # A copy is recognised only if its first copy is read too: callers start a day before the period.
            begin = {tp: (int(starts[tp].offset) if starts.get(tp) is not None else stop[tp]) for tp in tps}
        finally:
            await consumer.stop()
        spans = {tp: (begin[tp], stop[tp] - 1) for tp in tps}
        async for chunk in read_spans(self._bootstrap, spans, max_records=READ_RECORDS, stall_seconds=STALL_SECONDS):
            for tp, records in chunk.items():
                for r in records:
                    try:
                        env = decode(r.key, r.value, r.headers)
                    except EnvelopeError:
                        continue  # dead-lettered by the projector; it never counted
                    if env.id in seen:
                        continue
                    seen.add(env.id)
                    entry = Entry(
                        key=self._key(tp),
                        offset=r.offset,
                        appended_at=datetime.fromtimestamp(r.timestamp / 1000, UTC),
                        event_id=env.id,
                        event_type=env.type,
                        subject=env.subject,
                    )

                    def emit(
                        path: Sequence[str],
                        when: object,
                        changes: Sequence[Change],
                        team: str | None,
                        entry: Entry = entry,
                    ) -> None:
                        if path and when is not None and path[-1] in wanted:
                            day = when.isoformat()  # type: ignore[attr-defined]
                            if first_day <= day <= last_day:
                                entry.changes.append(DayChange(path[-1], day, team, tuple(changes)))

                    try:
                        fold_into(env.payload(), emit)
                    except (EnvelopeError, ValueError):
                        continue
                    if entry.changes:
                        yield entry
