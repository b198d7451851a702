"""Transactional outbox without multi-document transactions.

A domain write and the events it causes land in **one document write**: the events are embedded
in the aggregate's own document (``outbox`` array, ``has_outbox`` flag, ``rev`` counter). FerretDB
(and MongoDB) make a single-document write atomic, so an acknowledged write always has its events.

The :class:`OutboxRelay` polls documents with ``has_outbox`` set, publishes their events in array
order with the idempotent producer, and clears them with a compare-and-set on ``rev``. A crash
between publishing and clearing republishes with the *same* ``ce_id``; consumers de-duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
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
    return {"outbox": [e.to_document() for e in events], "has_outbox": bool(events), "rev": 1}


def outbox_update(update: dict[str, Any], events: Sequence[Envelope]) -> dict[str, Any]:
    """Merge the outbox append into a Mongo update document (``$set``/``$inc``/``$push``)."""
    merged = {k: dict(v) for k, v in update.items()}
    merged.setdefault("$inc", {})["rev"] = 1
    if events:
        merged.setdefault("$push", {})["outbox"] = {"$each": [e.to_document() for e in events]}
        merged.setdefault("$set", {})["has_outbox"] = True
    return merged


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
    ) -> None:
        self._db = db
        self._collections = list(collections)
        self._producer = producer
        self._service = service
        self._topic_of = topic_of
        self._poll = poll_seconds
        self._batch = batch_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def notify(self) -> None:
        """Wake the relay now (called after a write) instead of waiting for the next poll."""
        self._wake.set()

    async def start(self) -> None:
        for name in self._collections:
            await self._db[name].create_index("has_outbox")
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
                if moved:
                    continue  # more may be waiting; poll again straight away
            except asyncio.CancelledError:
                raise
            except Exception as exc:
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
        for name in self._collections:
            col = self._db[name]
            docs = await col.find({"has_outbox": True}, {"outbox": 1, "rev": 1}).limit(self._batch).to_list()
            pending_docs += len(docs)
            if not docs:
                continue
            events = [Envelope.from_document(e) for d in docs for e in d.get("outbox", [])]
            await self._producer.send_all(self._topic_of, events)
            # Clear only if nobody appended since we read (rev unchanged); otherwise pull what we sent.
            result = await col.bulk_write(
                [
                    UpdateOne({"_id": d["_id"], "rev": d["rev"]}, {"$set": {"outbox": [], "has_outbox": False}})
                    for d in docs
                ],
                ordered=False,
            )
            if result.matched_count < len(docs):
                await self._pull_sent(name, docs)
            moved += len(events)
        OUTBOX_PENDING.labels(self._service).set(pending_docs)
        OUTBOX_PUBLISHED.labels(self._service).inc(moved)
        self.published += moved
        return moved

    async def _pull_sent(self, name: str, docs: list[dict[str, Any]]) -> None:
        col = self._db[name]
        for d in docs:
            sent = {e["id"] for e in d.get("outbox", [])}
            while True:
                cur = await col.find_one({"_id": d["_id"]}, {"outbox": 1, "rev": 1})
                if cur is None:
                    break
                remaining = [e for e in cur.get("outbox", []) if e["id"] not in sent]
                res = await col.update_one(
                    {"_id": d["_id"], "rev": cur["rev"]},
                    {"$set": {"outbox": remaining, "has_outbox": bool(remaining)}},
                )
                if res.matched_count:
                    break
