"""Transactional outbox without multi-document transactions.

A domain write and the events it causes land in **one document write**: the events are embedded
in the aggregate's own document (an ``outbox`` array, plus a ``rev`` counter for the services'
own compare-and-set updates). FerretDB (and MongoDB) make a single-document write atomic, so an
acknowledged write always has its events.

The :class:`OutboxRelay` publishes embedded events in array order with the idempotent producer and
records the published ``ce_id``s of each chunk as one document in ``outbox_published`` (one
packed value: 20,000 one-id documents cost FerretDB 0.43 s of CPU, packed 0.06 s). Writers name the
documents they wrote (``notify(collection, ids)``) and the relay reads those by ``_id``; a sweep
over ``{"outbox.0": {"$exists": true}}`` at start-up finds anything written before a crash. It
works in chunks of about ``batch_size`` events: while one chunk's acknowledgements are awaited and
its ids recorded, the next chunk is read and queued, so the database and Kafka work at once; ids
are recorded only once Kafka acknowledged every event of their chunk.

Once a document holds more than ``trim_after`` published events (a course collects one per
enrolment), the relay empties its outbox with an update conditional on the ``rev`` it read: a
writer that got there first makes the trim miss (it is retried after that writer's events are
published), and since the trim leaves ``rev`` alone, a writer that read the document before the
trim still matches and appends. Without trimming every read and rewrite of such a document carries
its whole history (measured: course reads 6.5 ms, writes 9.3 ms on FerretDB); Kafka keeps history.

Why this shape (measured on FerretDB v1.24.2): filters other than ``_id`` read the whole collection
and an update command of 100 or more statements never returns. Inserts stay cheap at any size.

A crash between publishing and recording republishes with the *same* ``ce_id``; consumers
de-duplicate. Exactly one relay should drain a database (one service process on FerretDB).
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any, TypeVar

import orjson
from prometheus_client import Counter, Gauge
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from shared.envelope import Envelope
from shared.kafka import EventProducer, Record
from shared.logging import get_logger
from shared.mongo import packed_ids, unpacked_ids

log = get_logger(__name__)

OUTBOX_PUBLISHED = Counter("outbox_published_total", "Events published by the outbox relay", ["service"])
OUTBOX_PENDING = Gauge("outbox_pending_documents", "Documents with unpublished events at last poll", ["service"])


def outbox_entry(event: Envelope) -> bytes:
    """The form an event is kept in an outbox: one compressed value, ready to send.

    zlib (level 1) of a JSON head ``[id, base topic, key, headers]``, a newline, then the payload
    as the very JSON text the relay sends (orjson escapes every newline, so the first one ends the
    head). FerretDB decodes each stored field on every read of a document, at about 7 µs a field
    and 20-30 ns a byte, and a JSON string's escaped quotes cost it more (measured on v1.24.2):
    - a nested entry of nine fields cost 110-140 µs per read of a one-event document;
    - the entry as one string (head and payload text) 56-64 µs, and compressed 46-50 µs. The
      compressed entry is ~500 bytes against ~910, and stored as binary it has nothing to escape.
    The relay builds the Kafka record from it without rebuilding the envelope. Compressing costs
    the writer ~9 µs an event and the relay ~4 µs to expand.
    """
    head = [event.id, event.topic, event.key, [[k, v.decode()] for k, v in event.headers()]]
    return zlib.compress(orjson.dumps(head) + b"\n" + event.value(), 1)


def _parts(entry: bytes | str) -> tuple[list[Any], bytes]:
    """The head and payload of an entry: compressed, or the same text uncompressed (as written for
    a while on 2026-11-28)."""
    raw = zlib.decompress(entry) if isinstance(entry, bytes) else entry.encode()
    head, _, data = raw.partition(b"\n")
    return orjson.loads(head), data


def entry_id(entry: bytes | str | dict[str, Any]) -> str:
    """The ``ce_id`` of an outbox entry (compressed, or in one of the earlier forms)."""
    if isinstance(entry, bytes | str):
        return str(_parts(entry)[0][0])
    return str(entry["id"])


def outbox_fields(events: Sequence[Envelope]) -> dict[str, Any]:
    """Fields to include in a newly inserted document that carries ``events``."""
    return {"outbox": [outbox_entry(e) for e in events], "rev": 1}


def outbox_update(update: dict[str, Any], events: Sequence[Envelope]) -> dict[str, Any]:
    """Merge the outbox append into a Mongo update document (``$set``/``$inc``/``$push``)."""
    merged = {k: dict(v) for k, v in update.items()}
    merged.setdefault("$inc", {})["rev"] = 1
    if events:
        merged.setdefault("$push", {})["outbox"] = {"$each": [outbox_entry(e) for e in events]}
    return merged


def entry_record(entry: bytes | str | dict[str, Any]) -> tuple[str, Record]:
    """The ``ce_id`` and Kafka message of an outbox entry, its payload bytes as stored."""
    if isinstance(entry, bytes | str):
        (event_id, topic, key, headers), data = _parts(entry)
        return event_id, (topic, key.encode(), data, [(k, v.encode()) for k, v in headers])
    # Nested entries written before 2026-11-28; before 2026-11 their payload was a nested document.
    value = entry["data"].encode() if isinstance(entry["data"], str) else orjson.dumps(entry["data"])
    # The envelope only supplies topic and headers, so its payload is left empty.
    envelope = Envelope.from_document({**entry, "data": {}})
    return envelope.id, (envelope.topic, envelope.key.encode(), value, envelope.headers())


T = TypeVar("T")

# Documents whose outbox holds anything, in any entry form.
PENDING = {"outbox.0": {"$exists": True}}


PUBLISHED = "outbox_published"


async def published_ids(db: AsyncDatabase[dict[str, Any]]) -> set[str]:
    """Every ``ce_id`` recorded as published in ``db`` (packed per chunk, or one per document as
    relays before the packed form wrote them)."""
    ids: set[str] = set()
    async for d in db[PUBLISHED].find({}):
        ids.update(unpacked_ids(d))
    return ids


class OutboxRelay:
    """Publishes embedded outbox events from the given collections to Kafka."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        collections: Sequence[str],
        producer: EventProducer,
        *,
        service: str,
        topic_of: dict[str, str],
        poll_seconds: float = 0.5,
        batch_size: int = 1000,
        trim_after: int = 8,
        reads: AsyncDatabase[dict[str, Any]] | None = None,
    ) -> None:
        self._db = db
        self._reads = reads if reads is not None else db
        self._collections = list(collections)
        self._producer = producer
        self._service = service
        self._topic_of = topic_of
        self._poll = poll_seconds
        self._batch = batch_size
        self._trim_after = trim_after
        self._published: set[str] = set()
        self._sweep_due = True
        self._hints: dict[str, set[Any]] = {}
        self._written: dict[str, dict[Any, dict[str, Any]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def notify(
        self, collection: str | None = None, ids: Iterable[Any] = (), written: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Wake the relay now (called after a write) instead of waiting for the next poll.

        With ``collection`` and ``ids`` (the documents just written) the relay reads only those, by
        ``_id``; without them it sweeps every collection for unpublished events. ``written`` are
        documents just *inserted*, exactly as stored: the relay publishes from them without
        reading them back (a read per visit was the relay's largest cost under write load). A
        document changed after its insert is named in ``ids`` instead, and is read.
        """
        if collection is None:
            self._sweep_due = True
        else:
            hinted = self._hints.setdefault(collection, set())
            given = self._written.setdefault(collection, {})
            for doc_id in ids:
                hinted.add(doc_id)
                given.pop(doc_id, None)  # changed since: read the current document
            for d in written:
                if d["_id"] not in hinted:
                    given[d["_id"]] = d
        self._wake.set()

    async def start(self) -> None:
        for name in self._collections:
            # A sparse multikey index makes the sweep cheap on MongoDB (FerretDB scans regardless).
            await self._db[name].create_index("outbox.0", sparse=True)
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._service}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = self._poll
        loaded = False
        while True:
            hints: dict[str, set[Any]] = {}
            written: dict[str, dict[Any, dict[str, Any]]] = {}
            try:
                if not loaded:
                    self._published = await published_ids(self._db)
                    loaded = True
                hints, self._hints = self._hints, {}
                written, self._written = self._written, {}
                moved = await self.drain_once(hints, written)
                backoff = self._poll
                if moved or self._hints or self._sweep_due:
                    continue  # more may be waiting; go again straight away
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka or Mongo down: keep the events, retry the same documents
                for name, ids in hints.items():
                    self._hints.setdefault(name, set()).update(ids)
                for name, given in written.items():  # read them back next time
                    self._hints.setdefault(name, set()).update(given)
                log.warning("outbox_relay_retry", error=str(exc) or type(exc).__name__, in_seconds=backoff)
                await self._producer.reset()
                backoff = min(backoff * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()

    async def drain_once(
        self, hints: dict[str, set[Any]], written: dict[str, dict[Any, dict[str, Any]]] | None = None
    ) -> int:
        """Publish the unpublished events of the hinted and given documents (or of a sweep); return
        the count."""
        sweep = self._sweep_due
        self._sweep_due = False
        try:
            return await self._drain(hints, written or {}, sweep)
        except BaseException:
            self._sweep_due = self._sweep_due or sweep  # a failed sweep must run again
            raise

    async def _drain(
        self, hints: dict[str, set[Any]], written: dict[str, dict[Any, dict[str, Any]]], sweep: bool
    ) -> int:
        # A pipeline: while one chunk's acknowledgements are awaited and its ids recorded, the next
        # chunk is read from the database and queued to Kafka. A chunk is recorded only once all
        # its events are acknowledged; chunks are recorded in order.
        found = 0
        recording: asyncio.Task[None] | None = None
        chunks = _read_ahead(self._pending_chunks(hints, written, sweep))
        try:
            async for name, docs in chunks:
                ids: list[str] = []
                records: list[Record] = []
                for d in docs:
                    for e in d.get("outbox", ()):
                        event_id, record = entry_record(e)
                        if event_id not in self._published:
                            ids.append(event_id)
                            records.append(record)
                found += len(ids)
                acks = await self._producer.queue(self._topic_of, records)
                if recording is not None:
                    await recording
                recording = asyncio.create_task(self._record(name, docs, ids, acks))
            if recording is not None:
                await recording
                recording = None
        finally:
            if recording is not None:
                recording.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await recording
            await chunks.aclose()
        OUTBOX_PENDING.labels(self._service).set(found)
        return found

    async def _pending_chunks(
        self, hints: dict[str, set[Any]], written: dict[str, dict[Any, dict[str, Any]]], sweep: bool
    ) -> AsyncGenerator[tuple[str, list[dict[str, Any]]], None]:
        """The documents to publish from, in chunks of about ``batch_size`` outbox entries."""
        for name in self._collections:
            col = self._reads[name]
            chunk: list[dict[str, Any]] = []
            size = 0
            if sweep:
                docs = _swept(col, self._batch)
            else:
                docs = _given_then_by_id(
                    list(written.get(name, {}).values()), col, list(hints.get(name, ())), self._batch
                )
            async with contextlib.aclosing(docs):
                async for d in docs:
                    chunk.append(d)
                    size += len(d.get("outbox", ()))
                    if size >= self._batch:
                        yield name, chunk
                        chunk, size = [], 0
            if chunk:
                yield name, chunk

    async def _record(
        self, name: str, docs: Sequence[dict[str, Any]], ids: list[str], acks: asyncio.Future[Any]
    ) -> None:
        await acks
        if ids:
            await self._db[PUBLISHED].insert_one(packed_ids(ids))
            self._published.update(ids)
            OUTBOX_PUBLISHED.labels(self._service).inc(len(ids))
            self.published += len(ids)
        await self._trim(name, docs)

    async def _trim(self, name: str, docs: Sequence[dict[str, Any]]) -> None:
        for d in docs:
            outbox = d.get("outbox", [])
            if len(outbox) > self._trim_after and "rev" in d and all(entry_id(e) in self._published for e in outbox):
                await self._db[name].update_one({"_id": d["_id"], "rev": d["rev"]}, {"$set": {"outbox": []}})


_OUTBOX = {"outbox": 1, "rev": 1}


async def _swept(col: AsyncCollection[dict[str, Any]], batch: int) -> AsyncGenerator[dict[str, Any], None]:
    """Every document with outbox entries, streamed so a backlog is never held in memory at once."""
    async with col.find(PENDING, _OUTBOX, batch_size=batch) as cursor:
        async for d in cursor:
            yield d


async def _given_then_by_id(
    given: list[dict[str, Any]], col: AsyncCollection[dict[str, Any]], ids: list[Any], batch: int
) -> AsyncGenerator[dict[str, Any], None]:
    for d in given:
        yield d
    async with contextlib.aclosing(_by_id(col, ids, batch)) as read:
        async for d in read:
            yield d


async def _by_id(
    col: AsyncCollection[dict[str, Any]], ids: list[Any], batch: int
) -> AsyncGenerator[dict[str, Any], None]:
    """The documents with these ids, read by ``_id`` (the one lookup FerretDB answers from an index).

    The reads of one batch run at once, so a pooled reader answers them in parallel.
    """
    for i in range(0, len(ids), batch):
        found = await asyncio.gather(*(col.find_one({"_id": doc_id}, _OUTBOX) for doc_id in ids[i : i + batch]))
        for d in found:
            if d is not None:
                yield d


async def _read_ahead(items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """Yield from ``items`` while the next item is already being read."""
    nxt: asyncio.Future[T] = asyncio.ensure_future(anext(items))
    try:
        while True:
            try:
                item = await nxt
            except StopAsyncIteration:
                return
            nxt = asyncio.ensure_future(anext(items))
            # Let the next read send its request before the caller's CPU-bound work on this item:
            # otherwise it only starts when that work is done, and the database and we take turns.
            # Measured on the relay sweep: the next getMore started ~25 ms (the whole chunk's
            # processing) later without this, and 20,000 events took 2.6-2.9 s instead of 2.3 s.
            await asyncio.sleep(0)
            yield item
    finally:
        if not nxt.done():
            nxt.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
            await nxt
        await items.aclose()
