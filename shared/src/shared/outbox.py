"""Transactional outbox without multi-document transactions.

A domain write and the events it causes land in **one document write**: the events are embedded
in the aggregate's own document (an ``outbox`` array, plus a ``rev`` counter for the services'
own compare-and-set updates). FerretDB (and MongoDB) make a single-document write atomic, so an
acknowledged write always has its events.

The :class:`OutboxRelay` publishes embedded events in array order with the idempotent producer and
then removes exactly those elements with ``$pull`` (by value, so events appended meanwhile stay).
It finds work two ways: writers name the documents they wrote (``notify(collection, ids)``), which
the relay reads by ``_id``; and a sweep over ``{"outbox.id": {"$exists": true}}`` at start, after a
failure and every ``full_scan_seconds``. Both matter on FerretDB v1, which pushes only an exact
``{"_id": ...}`` filter down to SQLite and scans the whole collection for anything else.

A crash between publishing and removing republishes with the *same* ``ce_id``; consumers
de-duplicate. Exactly one relay should drain a collection (one service process on FerretDB).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import Counter, Gauge
from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from shared.envelope import Envelope
from shared.kafka import EventProducer
from shared.logging import get_logger

log = get_logger(__name__)

OUTBOX_PUBLISHED = Counter("outbox_published_total", "Events published by the outbox relay", ["service"])
OUTBOX_PENDING = Gauge("outbox_pending_documents", "Documents with unpublished events at last poll", ["service"])


def outbox_fields(events: Sequence[Envelope]) -> dict[str, Any]:
    """Fields to include in a newly inserted document that carries ``events``."""
    return {"outbox": [e.to_document() for e in events], "rev": 1}


def outbox_update(update: dict[str, Any], events: Sequence[Envelope]) -> dict[str, Any]:
    """Merge the outbox append into a Mongo update document (``$set``/``$inc``/``$push``)."""
    merged = {k: dict(v) for k, v in update.items()}
    merged.setdefault("$inc", {})["rev"] = 1
    if events:
        merged.setdefault("$push", {})["outbox"] = {"$each": [e.to_document() for e in events]}
    return merged


PENDING = {"outbox.id": {"$exists": True}}


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
        full_scan_seconds: float = 60.0,
    ) -> None:
        self._db = db
        self._collections = list(collections)
        self._producer = producer
        self._service = service
        self._topic_of = topic_of
        self._poll = poll_seconds
        self._batch = batch_size
        self._full_scan_seconds = full_scan_seconds
        self._scan_due = True
        self._next_scan = 0.0
        self._hints: dict[str, set[Any]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def notify(self, collection: str | None = None, ids: Iterable[Any] = ()) -> None:
        """Wake the relay now (called after a write) instead of waiting for the next poll.

        With ``collection`` and ``ids`` (the documents just written) the relay reads only those, by
        ``_id``; without them it sweeps every collection for pending events.
        """
        if collection is None:
            self._scan_due = True
        else:
            self._hints.setdefault(collection, set()).update(ids)
        self._wake.set()

    async def start(self) -> None:
        for name in self._collections:
            # A sparse multikey index makes the sweep cheap on MongoDB (FerretDB scans regardless).
            await self._db[name].create_index("outbox.id", sparse=True)
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._service}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = self._poll
        while True:
            try:
                moved = await self.drain_once()
                backoff = self._poll
                if moved or self._hints or self._scan_due:
                    continue  # more may be waiting; go again straight away
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._scan_due = True  # hinted documents taken by the failed pass are found by the sweep
                log.warning("outbox_relay_retry", error=str(exc) or type(exc).__name__, in_seconds=backoff)
                await self._producer.reset()
                backoff = min(backoff * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()

    async def drain_once(self) -> int:
        """Publish one batch of pending documents per collection; return how many events moved."""
        moved = 0
        pending_docs = 0
        sweep = self._scan_due or time.monotonic() >= self._next_scan
        if sweep:
            self._scan_due = False
            self._next_scan = time.monotonic() + self._full_scan_seconds
        hints, self._hints = self._hints, {}
        for name in self._collections:
            col = self._db[name]
            if sweep:
                docs = await col.find(PENDING, {"outbox": 1}).limit(self._batch).to_list()
                if len(docs) == self._batch:
                    self._scan_due = True  # more than one batch waiting: sweep again next pass
            else:
                docs = []
                for doc_id in hints.get(name, ()):
                    doc = await col.find_one({"_id": doc_id}, {"outbox": 1})
                    if doc is not None and doc.get("outbox"):
                        docs.append(doc)
            pending_docs += len(docs)
            if not docs:
                continue
            events = [Envelope.from_document(e) for d in docs for e in d["outbox"]]
            await self._producer.send_all(self._topic_of, events)
            # Remove exactly the published elements, by value and by _id alone: a concurrent append
            # survives, and FerretDB can use its primary key (a compare-and-set filter would scan).
            await col.bulk_write(
                [UpdateOne({"_id": d["_id"]}, {"$pull": {"outbox": e}}) for d in docs for e in d["outbox"]],
                ordered=False,
            )
            moved += len(events)
        OUTBOX_PENDING.labels(self._service).set(pending_docs)
        OUTBOX_PUBLISHED.labels(self._service).inc(moved)
        self.published += moved
        return moved
