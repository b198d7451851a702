"""Transactional outbox without multi-document transactions.

A domain write and the events it causes land in **one document write**: the events are embedded
in the aggregate's own document as an ``outbox`` array of plain subdocuments (``id``, ``type``,
``topic``, ``source``, ``subject``, ``key``, ``time``, ``data``, and ``traceparent`` when the write
was traced: see :mod:`shared.tracing`), beside a ``rev`` counter for the services' own
compare-and-set updates. A single-document write is atomic, so an acknowledged
write always has its events; an operator can read pending events with an ordinary query
(``{"outbox.0": {"$exists": true}}``).

The :class:`OutboxRelay` publishes entries in array order with the idempotent producer and, once
Kafka acknowledged them, removes exactly those entries from their document (``$pull`` by entry id). So the
outbox holds only unpublished work: a sweep finds nothing but that, and nothing grows with
history. Any number of relays may drain one database:
- a relay never sees what another already published and removed;
- two relays that read a document before either removed its entries publish them twice with the
  *same* ``ce_id`` (consumers de-duplicate by id), and each relay publishes a document's entries in
  array order, so per-aggregate order holds for the first copy of every event;
- a crash between Kafka's acknowledgement and the removal republishes that in-flight chunk, again
  with the same ``ce_id``.

Writers name the documents they wrote (``notify``) to their own process's relay. Documents whose
writer died before its relay published them are found by a sweep: every relay sweeps at start, and
relays keep a heartbeat in ``outbox_relays``; a relay that finds a peer's heartbeat stale claims it
(one conditional delete, so one survivor wins) and sweeps. See docs/adr/0001-scale-out-data-plane.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from opentelemetry.trace import Span
from prometheus_client import Counter, Gauge
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from shared.contracts import TOPIC_OF_TYPE
from shared.envelope import Envelope, ce_time, headers_of
from shared.kafka import EventProducer, Record
from shared.logging import get_logger
from shared.mongo import find_by_ids
from shared.tracing import enabled as tracing_enabled
from shared.tracing import end_all, start_publish, traceparent_of

log = get_logger(__name__)

OUTBOX_PUBLISHED = Counter("bridge_outbox_published_total", "Events published by the outbox relay", ["service"])
OUTBOX_PENDING = Gauge(
    "bridge_outbox_pending_documents", "Outbox events the relay found unpublished at its last pass", ["service"]
)

# Documents whose outbox holds anything.
PENDING = {"outbox.0": {"$exists": True}}
RELAYS = "outbox_relays"
# Documents emptied per update statement (a $pull of all their entries by id).
REMOVALS_PER_STATEMENT = 50
_OUTBOX = {"outbox": 1}


def outbox_entry(event: Envelope) -> dict[str, Any]:
    """The plain subdocument an event is kept as until it is published.

    ``time`` is the ``ce_time`` text rather than a BSON date: a BSON date keeps milliseconds only,
    and the event the relay publishes must carry the ``ce_time`` it was written with.
    """
    entry = {
        "id": event.id,
        "type": event.type,
        "topic": event.topic,
        "source": event.source,
        "subject": event.subject,
        "key": event.key,
        "time": ce_time(event.time),
        "data": event.data,
    }
    if event.traceparent:
        entry["traceparent"] = event.traceparent
    return entry


def entry_record(entry: dict[str, Any], traceparent: str | None = None) -> Record:
    """The Kafka message of an outbox entry, exactly as ``record_of`` builds it for the event.

    Built from the stored texts, ``time`` included, without parsing them into an :class:`Envelope`
    and formatting them back (ADR 0008). ``traceparent`` (the relay's publish span) replaces the
    context the entry was written in.
    """
    event_type = entry["type"]
    headers = headers_of(
        entry["id"],
        entry["source"],
        event_type,
        entry["time"],
        entry.get("subject"),
        traceparent or entry.get("traceparent"),
    )
    return TOPIC_OF_TYPE[event_type], entry["key"].encode(), orjson.dumps(entry["data"]), headers


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


async def pending_events(db: AsyncDatabase[dict[str, Any]], collections: Sequence[str]) -> int:
    """How many events the outboxes of ``collections`` still hold."""
    count = 0
    for name in collections:
        async for d in db[name].find(PENDING, _OUTBOX):
            count += len(d.get("outbox", ()))
    return count


Chunk = tuple[str, list[dict[str, Any]]]


def _documents(hints: Mapping[str, AbstractSet[Any]], written: Mapping[str, Mapping[Any, Any]]) -> int:
    """How many documents some hinted ids and handed-over documents name (a relay's queue)."""
    return sum(len(ids) for ids in hints.values()) + sum(len(d) for d in written.values())


class OutboxRelay:
    """Publishes embedded outbox events from the given collections to Kafka, then removes them."""

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
        heartbeat_seconds: float = 2.0,
        stale_after_seconds: float = 10.0,
        keep_written: int = 500,
        max_hints: int = 20_000,
    ) -> None:
        self._db = db
        self._collections = list(collections)
        self._producer = producer
        self._service = service
        self._topic_of = topic_of
        self._poll = poll_seconds
        self._batch = batch_size
        self._heartbeat = heartbeat_seconds
        self._stale_after = timedelta(seconds=stale_after_seconds)
        self.instance = f"{service}-{uuid.uuid4().hex[:12]}"
        self._sweep_due = True
        self._hints: dict[str, set[Any]] = {}
        self._written: dict[str, dict[Any, dict[str, Any]]] = {}
        # Inserted documents kept per collection for publishing without a read. Unbounded, they held
        # a 10x roster upload's tens of thousands of documents while the relay caught up (registry
        # and visits above 160 MB RSS); beyond the bound the relay reads them back, 500 to an ``$in``.
        self._keep_written = keep_written
        # Ids hinted per collection before the relay gives them up for a sweep (which finds every
        # document with entries anyway). Unbounded, a relay 300,000 documents behind in a 100x roster
        # upload held their ids, and the registry passed 270 MB RSS.
        self._max_hints = max_hints
        # Ids queued to Kafka and not yet removed: a cache that spares re-sending them when a later
        # hint reads the same document meanwhile. Losing it only costs a duplicate send.
        self._in_flight: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        # Events found waiting at the last pass (the gauge below).
        self.pending = 0
        # Documents the pass under way took and has not published yet, and documents whose hints
        # were given up for a sweep that has not run yet (see waiting()).
        self._in_pass = 0
        self._forgotten = 0

    def notify(
        self, collection: str | None = None, ids: Iterable[Any] = (), written: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Wake the relay now (called after a write) instead of waiting for the next poll.

        With ``collection`` and ``ids`` (the documents just written) the relay reads only those, by
        ``_id``; without them it sweeps every collection. ``written`` are documents just
        *inserted*, exactly as stored: the relay publishes from them without reading them back. A
        document changed after its insert is named in ``ids`` instead, and is read.
        """
        if collection is None:
            self._sweep_due = True
        else:
            hinted = self._hints.setdefault(collection, set())
            given = self._written.setdefault(collection, {})
            for doc_id in ids:
                hinted.add(doc_id)
                given.pop(doc_id, None)
            for d in written:
                if d["_id"] in hinted:
                    continue
                if len(given) < self._keep_written:
                    given[d["_id"]] = d
                else:  # a relay this far behind reads the rest back by _id rather than hold them
                    hinted.add(d["_id"])
            if len(hinted) > self._max_hints:
                self._overflow(collection)
        self._wake.set()

    def waiting(self) -> int:
        """Documents written and not yet published, as far as this process knows: hinted or handed
        over since the pass under way began, and what that pass has left. A relay that gave up its
        hints for a sweep counts at least what its last pass found. Backpressure reads it."""
        queued = _documents(self._hints, self._written)
        return queued + self._in_pass + (max(self.pending, self._forgotten) if self._sweep_due else 0)

    def _overflow(self, collection: str) -> None:
        """Forget the hints of ``collection`` and sweep instead: bounded memory however far behind."""
        self._forgotten += len(self._hints.get(collection, ())) + len(self._written.get(collection, ()))
        self._hints.pop(collection, None)
        self._written.pop(collection, None)
        self._sweep_due = True

    async def start(self) -> None:
        for name in self._collections:
            # A sparse multikey index makes the sweep cheap on MongoDB (FerretDB scans regardless).
            await self._db[name].create_index("outbox.0", sparse=True)
        self._tasks = [
            asyncio.create_task(self._run(), name=f"outbox-relay-{self._service}"),
            asyncio.create_task(self._watch_peers(), name=f"outbox-peers-{self._service}"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):  # a clean stop needs no takeover sweep by a peer
            await self._db[RELAYS].delete_one({"_id": self.instance})

    async def _watch_peers(self) -> None:
        """Beat our heartbeat; claim and sweep for any peer whose heartbeat went stale."""
        while True:
            try:
                now = datetime.now(UTC)
                await self._db[RELAYS].update_one(
                    {"_id": self.instance}, {"$set": {"service": self._service, "beat_at": now}}, upsert=True
                )
                async for peer in self._db[RELAYS].find({"beat_at": {"$lt": now - self._stale_after}}):
                    claimed = await self._db[RELAYS].delete_one({"_id": peer["_id"], "beat_at": peer["beat_at"]})
                    if claimed.deleted_count:
                        log.warning("outbox_peer_stale", peer=peer["_id"], sweeping=True)
                        self.notify()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox_heartbeat_failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(self._heartbeat)

    async def _run(self) -> None:
        backoff = self._poll
        while True:
            hints: dict[str, set[Any]] = {}
            written: dict[str, dict[Any, dict[str, Any]]] = {}
            try:
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
                for name in [n for n, ids in self._hints.items() if len(ids) > self._max_hints]:
                    self._overflow(name)
                self._in_flight.clear()
                log.warning("outbox_relay_retry", error=str(exc) or type(exc).__name__, in_seconds=backoff)
                await self._producer.reset()
                backoff = min(backoff * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()

    async def drain_once(
        self, hints: dict[str, set[Any]], written: dict[str, dict[Any, dict[str, Any]]] | None = None
    ) -> int:
        """Publish and remove the outbox entries of the hinted and given documents (or of a sweep);
        return how many were published."""
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
        # A pipeline: while one chunk's acknowledgements are awaited and its entries removed, the
        # next chunk is read and queued. Chunks are queued and removed in order.
        found = 0
        taken = _documents(hints, written)
        if sweep:
            taken = max(taken, self.pending, self._forgotten)
            self._forgotten = 0
        self._in_pass = taken
        removing: asyncio.Task[None] | None = None
        chunks = _read_ahead(self._pending_chunks(hints, written, sweep))
        try:
            async for name, docs in chunks:
                sent: list[tuple[Any, list[dict[str, Any]]]] = []
                records: list[Record] = []
                spans: list[Span] = []
                traced = tracing_enabled()
                for d in docs:
                    entries = [e for e in d.get("outbox", ()) if e["id"] not in self._in_flight]
                    if entries:
                        sent.append((d["_id"], entries))
                        if traced:
                            records.extend(self._traced_record(e, spans) for e in entries)
                        else:
                            records.extend(entry_record(e) for e in entries)
                        self._in_flight.update(e["id"] for e in entries)
                found += len(records)
                self._in_pass = max(0, taken - found)
                try:
                    acks = await self._producer.queue(self._topic_of, records)
                except BaseException as exc:
                    end_all(spans, exc)
                    raise
                if removing is not None:
                    await removing
                removing = asyncio.create_task(self._remove(name, sent, acks, spans))
            if removing is not None:
                await removing
                removing = None
        finally:
            if removing is not None:
                removing.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await removing
            await chunks.aclose()
        OUTBOX_PENDING.labels(self._service).set(found)
        self.pending = found
        self._in_pass = 0
        return found

    def _traced_record(self, entry: dict[str, Any], spans: list[Span]) -> Record:
        """The entry's Kafka message, sent in a publish span that continues the entry's trace."""
        topic = entry["topic"]
        span = start_publish(self._topic_of.get(topic, topic), entry["id"], entry["type"], entry.get("traceparent"))
        if span is None:
            return entry_record(entry)
        spans.append(span)
        return entry_record(entry, traceparent_of(span))

    async def _remove(
        self,
        name: str,
        sent: list[tuple[Any, list[dict[str, Any]]]],
        acks: asyncio.Future[Any],
        spans: Sequence[Span] = (),
    ) -> None:
        """Once Kafka acknowledged a chunk, take its entries out of their documents."""
        try:
            await acks
        except BaseException as exc:
            end_all(spans, exc)
            raise
        end_all(spans)
        count = sum(len(entries) for _, entries in sent)
        OUTBOX_PUBLISHED.labels(self._service).inc(count)
        self.published += count
        col = self._db[name]
        # One statement per chunk of documents: each takes out the entries it published, named by
        # id (entry ids are unique, so no document loses another's; an entry appended since the
        # read stays). FerretDB pays its per-statement work (parse, lock, query) once per chunk
        # instead of once per document.
        chunks = [sent[i : i + REMOVALS_PER_STATEMENT] for i in range(0, len(sent), REMOVALS_PER_STATEMENT)]
        await asyncio.gather(
            *(
                col.update_many(
                    {"_id": {"$in": [doc_id for doc_id, _ in chunk]}},
                    {"$pull": {"outbox": {"id": {"$in": [e["id"] for _, entries in chunk for e in entries]}}}},
                )
                for chunk in chunks
            )
        )
        for _, entries in sent:
            self._in_flight.difference_update(e["id"] for e in entries)

    async def _pending_chunks(
        self, hints: dict[str, set[Any]], written: dict[str, dict[Any, dict[str, Any]]], sweep: bool
    ) -> AsyncGenerator[Chunk, None]:
        """The documents to publish from, in chunks of about ``batch_size`` outbox entries."""
        for name in self._collections:
            col = self._db[name]
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
    for i in range(0, len(ids), batch):
        # By _id: the lookup FerretDB answers from an index, a bounded list to a command.
        for doc in (await find_by_ids(col, ids[i : i + batch], _OUTBOX)).values():
            yield doc


async def _read_ahead(items: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
    """Yield from ``items`` while the next item is already being read."""
    nxt: asyncio.Future[Chunk] = asyncio.ensure_future(anext(items))
    try:
        while True:
            try:
                item = await nxt
            except StopAsyncIteration:
                return
            nxt = asyncio.ensure_future(anext(items))
            # Let the next read send its request before the caller's CPU-bound work on this item.
            await asyncio.sleep(0)
            yield item
    finally:
        if not nxt.done():
            nxt.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
            await nxt
        await items.aclose()
