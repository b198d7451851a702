"""Batch consumer runner: decode, de-duplicate, handle with retries, dead-letter, then commit.

Offsets are committed only after every event of the batch is handled or dead-lettered, so a crash
redelivers; handlers (or the de-duplication store, or the metrics watermarks) make that harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from opentelemetry.trace import Span
from prometheus_client import Counter, Gauge
from pydantic import BaseModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure

from shared.concurrency import stop_task
from shared.envelope import Envelope, EnvelopeError, decode
from shared.kafka import Chunk, EventProducer, Records, read_spans
from shared.logging import bind_context, get_logger, unbind_context
from shared.memory import AfterBursts
from shared.mongo import insert_ignoring_duplicates
from shared.seen import PartitionIds
from shared.settings import ServiceSettings
from shared.topics import dlq_topic
from shared.tracing import enabled as tracing_enabled
from shared.tracing import end_all, start_consume

log = get_logger(__name__)

CONSUMED = Counter("bridge_consumer_events_processed_total", "Events handled successfully", ["consumer", "topic"])
FAILED = Counter("bridge_consumer_events_failed_total", "Handler attempts that raised", ["consumer", "topic"])
DEAD_LETTERED = Counter("bridge_consumer_events_dead_lettered_total", "Events sent to a DLQ", ["consumer", "topic"])
DUPLICATES = Counter(
    "bridge_consumer_events_duplicate_total", "Events skipped as already processed", ["consumer", "topic"]
)
# The longest pause between attempts while the database is unreachable.
MAX_BACKOFF_SECONDS = 5.0
LAG = Gauge(
    "bridge_consumer_lag_messages", "High watermark minus committed position", ["consumer", "topic", "partition"]
)


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel a handler task and wait for it; its own outcome no longer matters (not committed)."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])  # unlike awaiting the task, this never re-raises its exception


@dataclass(frozen=True)
class Consumed:
    """A decoded event with where it came from."""

    envelope: Envelope
    topic: str
    partition: int
    offset: int


class BatchHandler(Protocol):
    """Handles a list of events from one partition, in offset order. Raising means retry."""

    async def __call__(self, events: Sequence[Consumed]) -> None: ...


EventHandler = Callable[[Any, Envelope], Awaitable[None]]


# The first pass of a streamed fetch takes its records from the consumer this many at a time.
CHUNK_RECORDS = 1000
# A replay that gets no record for this long gives up (the runner then restarts the consumer).
REPLAY_STALL_SECONDS = 30.0


class Fetch:
    """The records of one Kafka fetch (all partitions), decoded afresh on every pass.

    Iterating (``async for``) yields each decodable record as a :class:`Consumed` and drops it
    again. A fetch made with ``more`` and ``replay`` keeps none of its records: the first pass takes
    them from the running consumer ``CHUNK_RECORDS`` at a time (``more``) up to ``limit``, and any
    later pass reads the same offsets again from Kafka (``replay``). Later passes are rare: a
    write that failed, or a redelivery whose offsets a counter document already covers.

    Why: the runner keeps two fetches in flight (one folded while the other is written). When each
    held its records, those were most of the projector's memory while draining a backlog: ~2.1 KB
    per record (1.3 KB of it the CloudEvents headers), ~40 MB for two fetches of 10,000. Decoding
    held events was also slower than decoding them one by one (see the projector's fold).

    A fetch made from a list (one record, tests) keeps it. Records that fail to decode are kept,
    with why, for the DLQ.

    With ``consumer`` named and tracing on, the first pass starts a span per traced event
    (``trace_spans``); the runner ends them once the fetch is written and committed.
    """

    def __init__(
        self,
        first: Chunk | Sequence[ConsumerRecord[bytes, bytes]],
        *,
        more: Callable[[int], Awaitable[Chunk]] | None = None,
        limit: int = 0,
        replay: Callable[[Mapping[TopicPartition, tuple[int, int]]], AsyncIterator[Chunk]] | None = None,
        consumer: str | None = None,
    ) -> None:
        if not isinstance(first, Mapping):
            by_tp: dict[TopicPartition, Records] = {}
            for r in first:
                by_tp.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
            first = by_tp
        self._head: Chunk | None = first
        self._kept: Chunk | None = None if replay is not None else first
        self._more = more
        self._limit = limit
        self._replay = replay
        # Per partition: the first and last offsets of the fetch, and how many records it has.
        self.spans: dict[TopicPartition, tuple[int, int]] = {}
        self.counts: dict[TopicPartition, int] = {}
        self.undecodable: dict[tuple[str, int, int], tuple[ConsumerRecord[bytes, bytes], str]] = {}
        self._consumer = consumer
        self.trace_spans: list[Span] = []

    @property
    def topic(self) -> str:
        """The topic of the first record (for labels and logs)."""
        topic: str = next(iter(self.spans)).topic
        return topic

    def _note(self, chunk: Chunk) -> None:
        for tp, records in chunk.items():
            if not records:
                continue
            span = self.spans.get(tp)
            self.spans[tp] = (span[0] if span else records[0].offset, records[-1].offset)
            self.counts[tp] = self.counts.get(tp, 0) + len(records)

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Every record of the fetch, a chunk at a time (undecodable ones included)."""
        if self._head is not None:  # the first pass
            chunk, self._head = self._head, None
            size = 0
            while chunk:
                self._note(chunk)
                size += sum(len(records) for records in chunk.values())
                yield chunk
                if self._more is None or size >= self._limit:
                    break
                got = await self._more(min(CHUNK_RECORDS, self._limit - size))
                chunk = {tp: records for tp, records in got.items() if records}
        elif self._kept is not None:
            yield self._kept
        elif self._replay is not None and self.spans:
            async for chunk in self._replay(self.spans):
                yield chunk

    async def records(self) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
        """The records of the fetch, less those a pass has found undecodable."""
        bad = self.undecodable
        async for chunk in self.chunks():
            for records in chunk.values():
                for r in records:
                    if not bad or (r.topic, r.partition, r.offset) not in bad:
                        yield r

    def __aiter__(self) -> AsyncIterator[Consumed]:
        return self._decoded()

    async def _decoded(self) -> AsyncIterator[Consumed]:
        # Checked once per pass: with tracing off the per-event cost is this one boolean.
        consumer = self._consumer
        traced = consumer is not None and self._head is not None and tracing_enabled()
        async for r in self.records():
            try:
                env = decode(r.key, r.value, list(r.headers))
            except EnvelopeError as exc:
                self.undecodable[(r.topic, r.partition, r.offset)] = (r, f"undecodable: {exc}")
                continue
            if traced and env.traceparent:
                assert consumer is not None
                span = start_consume(consumer, r.topic, r.partition, r.offset, env.id, env.type, env.traceparent)
                if span is not None:
                    self.trace_spans.append(span)
            yield Consumed(env, r.topic, r.partition, r.offset)


async def _behind(consumer: AIOKafkaConsumer) -> bool:
    """Whether the broker holds records not read yet, by the high watermarks its answers carried
    (a partition not answered yet counts as behind)."""
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is None or high > await consumer.position(tp):
            return True
    return False


@runtime_checkable
class FetchHandler(Protocol):
    """A handler that takes a whole fetch in two steps (the metrics projector).

    ``fold`` does the CPU work in one pass over events decoded one at a time (the events are
    re-iterable: iterating again reads and decodes again) and ``write`` does the I/O; the runner folds fetch
    N+1 while fetch N is being written, and writes and commits strictly in order. ``write``
    returns the newest ce_time it applied per topic. ``forget`` drops whatever the handler keeps
    in memory after a failed write, so the next fold starts again from the database. ``release``
    forgets that dead-lettered events were seen, so their replay from the dead-letter topic (the same
    ids at later offsets) is applied rather than skipped as a copy. ``assigned`` names the
    partitions the group just gave this process (see :meth:`ProcessedEvents.assigned`). ``caught_up``
    says that everything fetched is written and a poll found nothing new, so work the handler
    defers to spare a busy stream can run now. ``close`` ends whatever the handler runs in the
    background, when the runner stops.
    """

    async def fold(self, events: AsyncIterable[Consumed]) -> Any: ...

    async def write(self, folded: Any) -> Mapping[str, float]: ...

    def forget(self) -> None: ...

    def assigned(self, partitions: Iterable[TopicPartition]) -> None: ...

    async def release(self, events: AsyncIterable[Consumed]) -> None: ...

    def caught_up(self) -> None: ...

    async def close(self) -> None: ...


class TypeDispatch:
    """A :class:`BatchHandler` that looks each event's type up in ``handlers``.

    Unknown types are skipped on purpose: producers may add types that this consumer does not use.
    """

    def __init__(self, handlers: Mapping[str, EventHandler]) -> None:
        self._handlers = dict(handlers)

    async def __call__(self, events: Sequence[Consumed]) -> None:
        for c in events:
            handler = self._handlers.get(c.envelope.type)
            if handler is None:
                continue
            payload: BaseModel = c.envelope.payload()
            await handler(payload, c.envelope)


# The collection of ProcessedEvents' documents in a service's database.
PROCESSED_EVENTS = "processed_events"


class ProcessedEvents:
    """The ids of events a consumer group has applied, per partition, kept in the database.

    Each id is stored with the offset of its first copy. A copy at another offset is a relay
    republishing it (same ``ce_id``, same key, so the same partition, later offset) and is a
    duplicate; the same id at the same offset is a redelivery of that very record, which the
    handler's own guards (watermarks, per-key offsets) absorb. That is why :meth:`record` may run
    before the effects: a crash between the two redelivers records that are then not mistaken for
    duplicates.

    Stored as plain documents, one per recorded batch of a partition:
    ``{_id, group, topic, partition, first, last, ids: [...], offsets: [...], at}``. Each partition
    keeps its newest ``window`` ids; older documents are deleted. Republished copies land right
    after a relay's crash, within its in-flight chunk (``relay_batch_size``), far inside the window.
    Memory holds the ids of the partitions this process has read, as a cache (:class:`PartitionIds`,
    most of them as hashes: a hash met at another offset is confirmed by reading the stored id): it is
    dropped when partitions are revoked (another replica may record them meanwhile) and after a
    failed write.
    """

    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        group: str,
        *,
        window: int = 20_000,
        id_hash: Callable[[str], int] = hash,
    ) -> None:
        self._col = collection
        self._group = group
        self._window = window
        self._hash = id_hash
        # Per partition: the ids, and the stored documents oldest first as (_id, first, last, id count).
        # Ids leave memory with their document: kept for good, a long-running replica grew by every
        # event it ever read (the projector passed 160 MB draining 200,000) and, unlike a restarted
        # one, still called copies from outside the window duplicates.
        self._ids: dict[TopicPartition, PartitionIds] = {}
        self._docs: dict[TopicPartition, list[tuple[str, int, int, int]]] = {}
        # Stored ids by offset of the few documents read to confirm a copy, by document _id.
        self._read: dict[str, dict[int, str]] = {}
        # Partitions assigned to this process and not read yet: the next read takes them all at once.
        self._unread: set[TopicPartition] = set()

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """The group gave this process ``partitions``: drop what memory holds of them and read them
        all with the first one needed.

        Each read is a scan on FerretDB (the filter is not by ``_id``): at 10x, the six partitions of
        a topic whose first events arrived mid-run were read one after the other, 1.4-2.4 s each,
        and the projector stood still for 20 s.
        """
        # The whole assignment comes at once (aiokafka rebalances eagerly): nothing else is ours.
        self._ids, self._docs, self._read = {}, {}, {}
        self._unread = set(partitions)

    async def _load(self, tp: TopicPartition) -> PartitionIds:
        wanted = self._unread | {tp}
        self._unread = set()
        pairs: dict[TopicPartition, list[tuple[str, int]]] = {p: [] for p in wanted}
        docs: dict[TopicPartition, list[tuple[str, int, int, int]]] = {p: [] for p in wanted}
        query: dict[str, Any] = {
            "group": self._group,
            "topic": {"$in": sorted({p.topic for p in wanted})},
            "partition": {"$in": sorted({p.partition for p in wanted})},
        }
        async for d in self._col.find(query).sort("first", 1):
            at = TopicPartition(d["topic"], d["partition"])
            mine = pairs.get(at)
            if mine is None:  # not this process's
                continue
            mine.extend(zip(d["ids"], d["offsets"], strict=True))
            docs[at].append((d["_id"], d["first"], d["last"], len(d["ids"])))
        for p in wanted:
            ids = self._ids[p] = PartitionIds(id_hash=self._hash)
            ids.load(pairs[p], docs[p][0][1] if docs[p] else 0)
        self._docs.update(docs)
        return self._ids[tp]

    def cached(self) -> int:
        """How many event ids inside the window this process holds (about ``window`` per partition read)."""
        return sum(len(ids) for ids in self._ids.values())

    async def fresh(self, c: Consumed) -> bool:
        """False when ``c`` is a copy, at another offset, of an event already seen on its partition."""
        tp = TopicPartition(c.topic, c.partition)
        ids = self._ids.get(tp)
        if ids is None:
            ids = await self._load(tp)
        event_id = c.envelope.id
        seen = ids.exact(event_id)
        if seen is not None:
            return seen == c.offset
        for offset in ids.candidates(event_id):
            if offset == c.offset:  # this very record again: one offset holds one event
                return True
            if await self._stored_id(tp, offset) == event_id:
                return False
        ids.add(event_id, c.offset)
        return True

    async def _stored_id(self, tp: TopicPartition, offset: int) -> str | None:
        """The id stored for ``offset`` of ``tp`` (None once released or past the window)."""
        for doc_id, lo, hi, _ in self._docs.get(tp, ()):
            if not lo <= offset <= hi:
                continue
            by_offset = self._read.get(doc_id)
            if by_offset is None:
                d = await self._col.find_one({"_id": doc_id})
                by_offset = dict(zip(d["offsets"], d["ids"], strict=True)) if d else {}
                if len(self._read) >= 8:  # copies come in runs from one relay's chunk: few documents
                    self._read.clear()
                self._read[doc_id] = by_offset
            if offset in by_offset:
                return by_offset[offset]
        return None

    async def record(self, events: Sequence[Consumed]) -> None:
        """Store the ids of ``events`` (first copies) per partition; prune past the window."""
        by_tp: dict[TopicPartition, list[tuple[str, int]]] = {}
        for c in events:
            by_tp.setdefault(TopicPartition(c.topic, c.partition), []).append((c.envelope.id, c.offset))
        await self.record_ids(by_tp)

    async def record_ids(self, by_tp: Mapping[TopicPartition, Sequence[tuple[str, int]]]) -> None:
        """:meth:`record` for ``(ce_id, offset)`` pairs per partition, in offset order."""
        docs = []
        for tp, pairs in by_tp.items():
            if not pairs:
                continue
            lo, hi = pairs[0][1], pairs[-1][1]
            docs.append(
                {
                    "_id": f"{self._group}|{tp.topic}|{tp.partition}|{lo:020d}-{hi:020d}",
                    "group": self._group,
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "first": lo,
                    "last": hi,
                    "ids": [event_id for event_id, _ in pairs],
                    "offsets": [offset for _, offset in pairs],
                    "at": datetime.now(UTC),
                }
            )
        await insert_ignoring_duplicates(self._col, docs)  # the same cut redelivered is stored already
        pruned: list[str] = []
        for doc in docs:
            tp = TopicPartition(doc["topic"], doc["partition"])
            stored = self._docs.get(tp)
            ids = self._ids.get(tp)
            # A redelivered batch cut the same way is tracked already: counting it twice would
            # prune ids that are still inside the window.
            if stored is None or ids is None or any(d[0] == doc["_id"] for d in stored):
                continue
            stored.append((doc["_id"], doc["first"], doc["last"], len(doc["ids"])))
            while len(stored) > 1 and sum(d[3] for d in stored[1:]) >= self._window:
                oldest = stored.pop(0)[0]
                pruned.append(oldest)
                self._read.pop(oldest, None)
            ids.stored(doc["last"], stored[0][1])
        if pruned:
            # One command for every partition's pruned documents: the projector prunes about one
            # per partition per fetch, and each round trip of its write waits for the fold of the
            # next fetch to yield (docs/adr/0005, seventh pass).
            await self._col.delete_many({"_id": {"$in": pruned}})

    async def release(self, c: Consumed) -> None:
        """Forget a dead-lettered event, so that its replay (same id, a later offset) is handled.

        Its id was recorded before the handler ran (see the class docstring); left there, the copy
        that ``scripts.cli dlq replay`` publishes would be taken for a duplicate and skipped.
        """
        tp = TopicPartition(c.topic, c.partition)
        ids = self._ids.get(tp)
        if ids is not None:
            ids.drop(c.envelope.id, c.offset)
        around = {"$lte": c.offset}
        query = {"group": self._group, "topic": c.topic, "partition": c.partition, "first": around}
        async for d in self._col.find({**query, "last": {"$gte": c.offset}}):
            pairs = [(i, o) for i, o in zip(d["ids"], d["offsets"], strict=True) if (i, o) != (c.envelope.id, c.offset)]
            if len(pairs) < len(d["ids"]):
                kept = {"ids": [i for i, _ in pairs], "offsets": [o for _, o in pairs]}
                await self._col.update_one({"_id": d["_id"]}, {"$set": kept})
                # A folded id is confirmed by reading its document: read it again.
                self._read.pop(d["_id"], None)

    async def positions(self, event_ids: Iterable[str]) -> dict[str, tuple[TopicPartition, int]]:
        """Where the first copies of these events were recorded (those not recorded are left out)."""
        wanted = set(event_ids)
        found: dict[str, tuple[TopicPartition, int]] = {}
        async for d in self._col.find({"group": self._group}):
            for event_id, offset in zip(d["ids"], d["offsets"], strict=True):
                if event_id in wanted:
                    found.setdefault(event_id, (TopicPartition(d["topic"], d["partition"]), offset))
        return found

    def forget(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Drop the cache of ``partitions`` (all when None); they are read again when next needed."""
        if partitions is None:  # still ours: read them again, together, when next needed
            self._unread |= set(self._ids)
            self._ids, self._docs, self._read = {}, {}, {}
            return
        for tp in partitions:
            self._ids.pop(tp, None)
            self._docs.pop(tp, None)
            self._unread.discard(tp)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        partitions = list(revoked)
        self._runner.revoked(partitions)
        log.info("partitions_revoked", consumer=self._runner.name, partitions=len(partitions))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions = list(assigned)
        self._runner.assigned(partitions)
        log.info("partitions_assigned", consumer=self._runner.name, partitions=len(partitions))


class ConsumerRunner:
    """Runs one consumer group over ``topics`` until stopped.

    ``per_event=True`` hands events to the handler one at a time (retries and dead-lettering apply
    to that event alone); ``per_event=False`` hands over a whole partition batch, and falls back to
    one-by-one only if the batch keeps failing, to isolate the bad event.
    """

    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        handler: BatchHandler | FetchHandler,
        producer: EventProducer,
        dedup: ProcessedEvents | None = None,
        per_event: bool = True,
        max_retries: int = 3,
        backoff_seconds: float = 0.2,
        max_records: int = 2000,
        from_beginning: bool = True,
        linger_ms: int = 0,
        linger_bytes: int = 1024 * 1024,
        fetch_max_bytes: int = 32 * 1024 * 1024,
        partition_fetch_bytes: int = 4 * 1024 * 1024,
        whole_fetch: bool = False,
        top_up_ms: int = 0,
    ) -> None:
        self.name = name
        self._bootstrap = bootstrap
        self._topics = list(topics)
        self._group = group_id
        self._handler = handler
        self._producer = producer
        self.processed = dedup
        self._per_event = per_event
        self._retries = max_retries
        self._backoff = backoff_seconds
        self._max_records = max_records
        self._from_beginning = from_beginning
        self._linger_ms = linger_ms
        self._linger_bytes = linger_bytes
        self._fetch_max_bytes = fetch_max_bytes
        self._partition_fetch_bytes = partition_fetch_bytes
        # A handler that orders by partition itself (the metrics projector) can take every
        # partition of a fetch at once: its writes then cover all of them in one pass.
        self._whole_fetch = whole_fetch and not per_event
        self._heap = AfterBursts()
        self._top_up_ms = top_up_ms
        if self._whole_fetch and not isinstance(handler, FetchHandler):
            raise TypeError("whole_fetch needs a FetchHandler (fold/write/forget)")
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_event_time: dict[str, float] = {}
        self.lag: dict[str, int] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._last_error = "handler failed"
        self._failures = 0

    @classmethod
    def from_settings(
        cls,
        settings: ServiceSettings,
        *,
        name: str,
        topics: Sequence[str],
        group_id: str,
        handler: BatchHandler | FetchHandler,
        producer: EventProducer,
        dedup: ProcessedEvents | None = None,
        per_event: bool = True,
        whole_fetch: bool = False,
    ) -> ConsumerRunner:
        """A runner tuned by the service's ``consumer_*`` settings; ``topics`` are base names.

        A batch handler (``per_event=False``) gets the configured linger, so it sees real batches.
        """
        return cls(
            name=name,
            bootstrap=settings.kafka_bootstrap,
            topics=[settings.topic(t) for t in topics],
            group_id=group_id,
            handler=handler,
            producer=producer,
            dedup=dedup,
            per_event=per_event,
            max_retries=settings.consumer_retries,
            backoff_seconds=settings.consumer_backoff_seconds,
            max_records=settings.consumer_max_records,
            linger_ms=0 if per_event else settings.consumer_linger_ms,
            linger_bytes=settings.consumer_linger_bytes,
            fetch_max_bytes=settings.consumer_fetch_max_bytes,
            partition_fetch_bytes=settings.consumer_partition_fetch_bytes,
            whole_fetch=whole_fetch,
            top_up_ms=settings.consumer_fetch_top_up_ms,
        )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.name}")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        if self._whole_fetch:
            await self._fetch_handler.close()

    def committed(self, tp: TopicPartition) -> int | None:
        """The next offset of ``tp`` this runner committed (None: none yet, or not its partition)."""
        return self._positions.get(tp)

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions went to another member: what memory holds about them may go stale there."""
        partitions = list(partitions)
        for tp in partitions:
            # The new owner reports this partition's lag; a stale copy here would be summed twice.
            self._positions.pop(tp, None)
            self.lag.pop(f"{tp.topic}:{tp.partition}", None)
            with contextlib.suppress(KeyError):
                LAG.remove(self.name, tp.topic, str(tp.partition))
        if self.processed:
            self.processed.forget(partitions)
        if self._whole_fetch:
            self._fetch_handler.forget()

    def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions came to this process: the processed ids of all of them are read at once."""
        if self.processed:
            self.processed.assigned(partitions)
        if self._whole_fetch:
            self._fetch_handler.assigned(partitions)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _connect(self) -> AIOKafkaConsumer:
        delay = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                group_id=self._group,
                enable_auto_commit=False,
                auto_offset_reset="earliest" if self._from_beginning else "latest",
                max_partition_fetch_bytes=self._partition_fetch_bytes,
                fetch_max_bytes=self._fetch_max_bytes,
                metadata_max_age_ms=5000,
                # With a linger the broker answers a fetch once linger_bytes are waiting or the
                # linger is up.
                fetch_min_bytes=self._linger_bytes if self._linger_ms else 1,
                fetch_max_wait_ms=self._linger_ms or 500,
            )
            try:
                await consumer.start()
                consumer.subscribe(self._topics, listener=_Rebalance(self))
                return consumer
            except Exception as exc:
                log.warning("consumer_connect_retry", consumer=self.name, error=str(exc))
                with contextlib.suppress(Exception):
                    await consumer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run(self) -> None:
        while True:
            self._consumer = await self._connect()
            # Whole-fetch mode overlaps work: while fetch N is being written (mostly waiting on
            # Mongo), fetch N+1 is read, decoded and folded. Writes and commits stay in order.
            pending: asyncio.Task[bool] | None = None
            try:
                while True:
                    if self._whole_fetch:
                        pending = await self._next_fetch(pending)
                        continue
                    batches = await self._consumer.getmany(timeout_ms=200, max_records=self._max_records)
                    batches = {tp: records for tp, records in batches.items() if records}
                    if batches:
                        self._heap.worked()
                    else:
                        self._heap.idle()
                    for tp, records in batches.items():
                        await self._process(tp, records)
                        await self._consumer.commit({tp: records[-1].offset + 1})
                        self._positions[tp] = records[-1].offset + 1
                    self._update_lag()
            except asyncio.CancelledError:
                await _cancel(pending)
                with contextlib.suppress(Exception):
                    await self._consumer.stop()
                raise
            except Exception as exc:
                await _cancel(pending)
                if self._whole_fetch:
                    self._fetch_handler.forget()
                log.error("consumer_restart", consumer=self.name, error=str(exc) or type(exc).__name__)
                with contextlib.suppress(Exception):
                    await self._consumer.stop()
                await asyncio.sleep(1.0)

    async def _next_fetch(self, pending: asyncio.Task[bool] | None) -> asyncio.Task[bool] | None:
        """Fold the next fetch while the previous one is written; start writing it; return that task."""
        consumer = self._consumer
        assert consumer is not None
        first = await consumer.getmany(timeout_ms=200, max_records=min(CHUNK_RECORDS, self._max_records))
        first = {tp: records for tp, records in first.items() if records}

        async def more(n: int) -> Chunk:
            got: Chunk = await consumer.getmany(timeout_ms=0, max_records=n)
            if self._top_up_ms and not any(got.values()) and await _behind(consumer):
                # A backlog: the next response is a few ms away. Waiting for it makes one large
                # fetch instead of two, each costing a write per document it touches. A consumer
                # that is caught up closes the fetch at once, so a steady stream waits for nothing.
                got = await consumer.getmany(timeout_ms=self._top_up_ms, max_records=n)
            return got

        fetch = (
            Fetch(first, more=more, limit=self._max_records, replay=self._replay, consumer=self.name) if first else None
        )
        handler = self._fetch_handler
        folded = await handler.fold(fetch) if fetch is not None else None
        if pending is not None:
            clean = await pending
            if not clean and fetch is not None:
                # The previous fetch fell back to one event at a time: fold this one again from
                # what the database now says.
                handler.forget()
                folded = await handler.fold(fetch)
        if fetch is None:
            handler.caught_up()
            self._heap.idle()
            return None
        self._heap.worked()
        return asyncio.create_task(self._write_traced_fetch(fetch, folded))

    async def _replay(self, spans: Mapping[TopicPartition, tuple[int, int]]) -> AsyncIterator[Chunk]:
        """The records at ``spans`` (first and last offset per partition), read again from Kafka.

        A consumer of its own, outside the group, so the running one keeps its position.
        """
        log.info("fetch_replay", consumer=self.name, records=sum(last - first + 1 for first, last in spans.values()))
        async for chunk in read_spans(
            self._bootstrap,
            spans,
            max_records=CHUNK_RECORDS,
            stall_seconds=REPLAY_STALL_SECONDS,
            max_partition_fetch_bytes=self._partition_fetch_bytes,
            fetch_max_bytes=self._fetch_max_bytes,
        ):
            yield chunk

    @property
    def _fetch_handler(self) -> FetchHandler:
        assert isinstance(self._handler, FetchHandler)
        return self._handler

    async def _write_traced_fetch(self, fetch: Fetch, folded: Any) -> bool:
        """:meth:`_write_fetch`, then end the spans of the fetch's traced events."""
        try:
            clean = await self._write_fetch(fetch, folded)
        except BaseException as exc:
            end_all(fetch.trace_spans, exc)
            raise
        end_all(fetch.trace_spans)
        return clean

    async def _write_fetch(self, fetch: Fetch, folded: Any) -> bool:
        """Write a folded fetch (retrying), dead-letter what cannot be applied, then commit.

        Returns False when the fetch had to fall back to one event at a time.
        """
        assert self._consumer is not None
        handler = self._fetch_handler
        topic = fetch.topic
        failures = self._failures
        newest = await self._attempt_write(folded, topic)
        # After any failed attempt the handler forgot its memory, and the next fetch was folded
        # with it: that fold must be done again.
        clean = self._failures == failures
        if newest is None:
            # Isolate the event that keeps failing: each alone, dead-lettered if it still fails.
            newest = {}
            handler.forget()
            async for record in fetch.records():
                single = Fetch([record])
                got = await self._attempt_write(await handler.fold(single), record.topic)
                if got is None:
                    handler.forget()
                    await self._dead_letter(record, self._last_error)
                    await handler.release(single)
                    log.error("dead_lettered", consumer=self.name, topic=record.topic, offset=record.offset)
                else:
                    for t, ts in got.items():
                        newest[t] = max(newest.get(t, 0.0), ts)
        for record, error in fetch.undecodable.values():
            await self._dead_letter(record, error)
        for t, ts in newest.items():
            self.last_event_time[t] = max(self.last_event_time.get(t, 0.0), ts)
        await self._consumer.commit({tp: last + 1 for tp, (_, last) in fetch.spans.items()})
        for tp, (_, last) in fetch.spans.items():
            self._positions[tp] = last + 1
            CONSUMED.labels(self.name, tp.topic).inc(fetch.counts[tp])
        self._update_lag()
        return clean

    async def _attempt_write(self, folded: Any, topic: str) -> Mapping[str, float] | None:
        """``write`` with retries; None once they are used up."""
        handler = self._fetch_handler
        newest: dict[str, float] = {}

        async def write() -> None:
            newest.update(await handler.write(folded))

        # A failed write may have happened in part: the handler's memory is not trusted after it.
        return newest if await self._retrying(topic, write, after_failure=handler.forget) else None

    async def _retrying(
        self, topic: str, call: Callable[[], Awaitable[None]], *, after_failure: Callable[[], None] | None = None
    ) -> bool:
        """Run ``call`` until it succeeds, at most ``1 + max_retries`` failures, with doubling pauses.

        A database that cannot be reached is not the event's fault: such failures do not count,
        so the events wait for the database (pauses capped at ``MAX_BACKOFF_SECONDS``) instead of
        being dead-lettered. Before, an outage longer than the retry budget dead-lettered every
        event that arrived during it, and the consumer then skipped them for good.
        """
        delay = self._backoff
        failures = 0
        while True:
            try:
                await call()
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures += 1
                unreachable = isinstance(exc, ConnectionFailure)
                if not unreachable:
                    failures += 1
                FAILED.labels(self.name, topic).inc()
                log.warning(
                    "database_unreachable" if unreachable else "handler_failed",
                    consumer=self.name,
                    attempt=failures,
                    error=str(exc) or type(exc).__name__,
                )
                self._last_error = f"{type(exc).__name__}: {exc}"
                if after_failure is not None:
                    after_failure()
                if failures > self._retries:
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _update_lag(self) -> None:
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            pos = self._positions.get(tp)
            if high is None or pos is None:
                continue
            lag = max(0, high - pos)
            LAG.labels(self.name, tp.topic, str(tp.partition)).set(lag)
            self.lag[f"{tp.topic}:{tp.partition}"] = lag

    async def _process(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        await self._handle_decoded(await self._decode(tp, records))

    async def _decode(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> list[Consumed]:
        """Envelopes of ``records`` minus duplicates; undecodable records go to the DLQ."""
        good: list[Consumed] = []
        for r in records:
            try:
                env = decode(r.key, r.value, list(r.headers))
            except EnvelopeError as exc:
                await self._dead_letter(r, f"undecodable: {exc}")
                continue
            good.append(Consumed(env, r.topic, r.partition, r.offset))
        if self.processed and good:
            fresh = [c for c in good if await self.processed.fresh(c)]
            if len(fresh) < len(good):
                DUPLICATES.labels(self.name, tp.topic).inc(len(good) - len(fresh))
            good = fresh
        return good

    async def _handle_decoded(self, good: list[Consumed]) -> None:
        if not good:
            return
        if self.processed:
            # Before the effects: a crash in between redelivers records at the offsets stored here,
            # which ProcessedEvents does not take for duplicates (see its docstring).
            await self.processed.record(good)
        if self._per_event:
            for c in good:
                await self._handle_with_retries([c])
        else:
            ok = await self._attempt(good)
            if not ok:
                for c in good:
                    await self._handle_with_retries([c])
        for c in good:
            self.last_event_time[c.topic] = max(self.last_event_time.get(c.topic, 0.0), c.envelope.time.timestamp())

    async def _attempt(self, events: list[Consumed]) -> bool:
        handler = self._handler
        assert not isinstance(handler, FetchHandler)
        bind_context(event_id=events[0].envelope.id)
        spans = self._start_spans(events) if tracing_enabled() else []
        try:
            ok = await self._retrying(events[0].topic, lambda: handler(events))
        except BaseException as exc:
            end_all(spans, exc)
            raise
        finally:
            unbind_context("event_id")
        end_all(spans, None if ok else self._last_error)
        if ok:
            CONSUMED.labels(self.name, events[0].topic).inc(len(events))
        return ok

    def _start_spans(self, events: Sequence[Consumed]) -> list[Span]:
        spans = []
        for c in events:
            env = c.envelope
            span = start_consume(self.name, c.topic, c.partition, c.offset, env.id, env.type, env.traceparent)
            if span is not None:
                spans.append(span)
        return spans

    async def _handle_with_retries(self, events: list[Consumed]) -> None:
        if await self._attempt(events):
            return
        for c in events:
            env = c.envelope
            await self._dead_letter_envelope(c, self._last_error)
            if self.processed:
                await self.processed.release(c)
            log.error("dead_lettered", consumer=self.name, event_id=env.id, type=env.type)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], error: str) -> None:
        headers = [*list(record.headers), *self._dlq_headers(record.topic, record.partition, record.offset, error)]
        await self._send_dlq(record.topic, record.value, record.key, headers)

    async def _dead_letter_envelope(self, c: Consumed, error: str) -> None:
        env = c.envelope
        headers = [*env.headers(), *self._dlq_headers(c.topic, c.partition, c.offset, error)]
        await self._send_dlq(c.topic, env.value(), env.key.encode(), headers)

    def _dlq_headers(self, topic: str, partition: int, offset: int, error: str) -> list[tuple[str, bytes]]:
        return [
            ("dlq_error", error[:2000].encode()),
            ("dlq_consumer", self.name.encode()),
            ("dlq_topic", topic.encode()),
            ("dlq_partition", str(partition).encode()),
            ("dlq_offset", str(offset).encode()),
        ]

    async def _send_dlq(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        DEAD_LETTERED.labels(self.name, topic).inc()
        delay = 0.5
        while True:  # never commit past a poison message until it is safely in the DLQ
            try:
                await self._producer.send_raw(dlq_topic(topic), value, key=key, headers=headers)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dlq_send_retry", error=str(exc))
                await self._producer.reset()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
