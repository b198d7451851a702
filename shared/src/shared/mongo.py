"""MongoDB plumbing on PyMongo's native async client (``pymongo.AsyncMongoClient``).

Everything here stays inside the subset FerretDB v1 supports: single-document atomic writes,
no transactions, ``$group`` with ``$sum`` only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import Histogram
from pymongo import AsyncMongoClient, IndexModel, UpdateOne, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteError

from shared.logging import get_logger

Document = dict[str, Any]
log = get_logger(__name__)

MONGO_LATENCY = Histogram(
    "bridge_mongo_command_duration_seconds",
    "Time from sending a database command to its answer, by command and collection",
    ["command", "collection"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
_WRITE_FILTERS = {"update": "updates", "delete": "deletes"}


def _shape(command: Mapping[str, Any]) -> str:
    """The filter's field names (never its values: they can be personal data)."""
    name = next(iter(command), "")
    flt: Any = command.get("filter")
    if flt is None and name in _WRITE_FILTERS:
        stmts = command.get(_WRITE_FILTERS[name]) or [{}]
        flt = stmts[0].get("q")
    return ",".join(sorted(flt)) if isinstance(flt, Mapping) else ""


class CommandTimer(monitoring.CommandListener):
    """Times every command into :data:`MONGO_LATENCY` and logs the slow ones with their filter shape.

    Slow commands are the first thing to look at on FerretDB, where a filter that is not exactly
    ``_id`` reads the whole collection.
    """

    def __init__(self, slow_ms: float) -> None:
        self._slow_ms = slow_ms
        self._started: dict[int, tuple[str, str]] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        collection = event.command.get(event.command_name)
        self._started[event.request_id] = (
            collection if isinstance(collection, str) else "",
            _shape(event.command) if self._slow_ms > 0 else "",
        )

    def _finish(self, request_id: int, name: str, micros: int) -> None:
        collection, shape = self._started.pop(request_id, ("", ""))
        MONGO_LATENCY.labels(name, collection).observe(micros / 1e6)
        if 0 < self._slow_ms <= micros / 1000:
            log.warning(
                "mongo_slow_command", command=name, collection=collection, filter=shape, ms=round(micros / 1000, 1)
            )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finish(event.request_id, event.command_name, event.duration_micros)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finish(event.request_id, event.command_name, event.duration_micros)


def connect(
    url: str, *, timeout_ms: int = 3000, max_pool_size: int = 16, slow_ms: float = 0
) -> AsyncMongoClient[Document]:
    """A tz-aware client (dates come back as aware UTC datetimes) with short failure timeouts.

    Any pool size is safe: single-document updates are atomic across connections on MongoDB and on
    the FerretDB we build (``deploy/ferretdb/serialise-writes.patch``, proven by
    ``shared/tests/test_ferretdb_build.py``).
    """
    return AsyncMongoClient(
        url,
        maxPoolSize=max_pool_size,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        uuidRepresentation="standard",
        event_listeners=[CommandTimer(slow_ms)],
    )


async def ping(client: AsyncMongoClient[Document], timeout: float = 1.5) -> bool:
    try:
        await asyncio.wait_for(client.admin.command("ping"), timeout)
    except Exception:
        return False
    return True


async def ensure_indexes(db: AsyncDatabase[Document], indexes: Mapping[str, Sequence[IndexModel]]) -> None:
    """Create the declared indexes (idempotent); called once at service start-up."""
    for name, models in indexes.items():
        for model in models:
            # One index per call: FerretDB v1 crashes when one createIndexes names several that exist.
            await db[name].create_indexes([model])


DUPLICATE_KEY = 11000


async def insert_missing(col: AsyncCollection[Document], docs: Sequence[Document]) -> set[Any]:
    """``insert_many(ordered=False)`` where documents whose ``_id`` exists already are fine.

    Returns the ``_id``s that existed (their documents were not written). Any other write error is raised.
    """
    if not docs:
        return set()
    try:
        await col.insert_many(list(docs), ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors) or exc.details.get("writeConcernErrors"):
            raise
        return {docs[e["index"]]["_id"] for e in errors}
    return set()


# Ids per ``$in`` read: the FerretDB we build pushes ``{_id: {$in: [...]}}`` down to its _id index
# up to 1,000 values (deploy/ferretdb/), and a bounded command stays small on the wire.
IDS_PER_READ = 500


def id_chunks(ids: Iterable[Any]) -> Iterator[list[Any]]:
    """``ids`` in lists of at most :data:`IDS_PER_READ`, one ``{_id: {$in}}`` command each."""
    listed = list(ids)
    for i in range(0, len(listed), IDS_PER_READ):
        yield listed[i : i + IDS_PER_READ]


async def find_by_ids(
    col: AsyncCollection[Document], ids: Iterable[Any], projection: Mapping[str, Any] | None = None
) -> dict[Any, Document]:
    """The documents of ``ids`` that exist, by ``_id``: one ``$in`` read per :data:`IDS_PER_READ`."""
    found: dict[Any, Document] = {}
    for chunk in id_chunks(dict.fromkeys(ids)):
        async for doc in col.find({"_id": {"$in": chunk}}, projection):
            found[doc["_id"]] = doc
    return found


async def delete_by_ids(
    col: AsyncCollection[Document], ids: Sequence[Any], where: Mapping[str, Any] | None = None
) -> None:
    """Delete the documents of ``ids`` (those matching ``where``): one ``$in`` delete per :data:`IDS_PER_READ`."""
    for chunk in id_chunks(ids):
        await col.delete_many({**(where or {}), "_id": {"$in": chunk}})


# Update statements per command (FerretDB v1.24 never answered one of 100 or more).
UPDATES_PER_COMMAND = 50


async def update_each(col: AsyncCollection[Document], updates: Sequence[UpdateOne]) -> int:
    """Send single-document updates :data:`UPDATES_PER_COMMAND` to an unordered command; return
    how many documents matched. One round trip per command instead of one per statement, and for
    FerretDB one hold of its database's write lock and one SQLite transaction per command
    (``deploy/ferretdb/update-statements-one-transaction.patch``)."""
    matched = 0
    for i in range(0, len(updates), UPDATES_PER_COMMAND):
        matched += (await col.bulk_write(list(updates[i : i + UPDATES_PER_COMMAND]), ordered=False)).matched_count
    return matched


async def insert_ignoring_duplicates(col: AsyncCollection[Document], docs: Sequence[Document]) -> int:
    """:func:`insert_missing`, answering how many documents were new."""
    return len(docs) - len(await insert_missing(col, docs))


class InsertBatcher:
    """Sends the single-document inserts that arrive together as one unordered ``insert_many``.

    While one command is on the wire, the inserts that arrive meanwhile wait and then go as the
    next command; an idle process sends each insert at once. FerretDB writes one SQLite
    transaction per command, so under load fewer, larger commands cost it less. Each document is
    still written atomically on its own, and each caller gets its own outcome: ``None``, or the
    :class:`DuplicateKeyError` / :class:`WriteError` of its document, or the command's error.
    One command per batch instead of per insert costs FerretDB one SQLite transaction instead of
    many, and this process one round trip.
    """

    def __init__(self, col: AsyncCollection[Document], *, max_batch: int = 256) -> None:
        self._col = col
        self._max = max_batch
        self._waiting: list[tuple[Document, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def insert_one(self, doc: Document) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((doc, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_waiting())
        await future

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[tuple[Document, asyncio.Future[None]]]) -> None:
        errors: dict[int, Exception] = {}
        try:
            await self._col.insert_many([doc for doc, _ in batch], ordered=False)
        except BulkWriteError as exc:
            for e in exc.details.get("writeErrors", []):
                kind = DuplicateKeyError if e.get("code") == DUPLICATE_KEY else WriteError
                errors[e["index"]] = kind(e.get("errmsg", ""), e.get("code"), e)
        except Exception as exc:  # the whole command failed: every caller hears it
            errors = dict.fromkeys(range(len(batch)), exc)
        for i, (_, future) in enumerate(batch):
            if future.done():  # the caller was cancelled; its document may still be written
                continue
            if i in errors:
                future.set_exception(errors[i])
            else:
                future.set_result(None)


async def insert_once(
    col: AsyncCollection[Document],
    doc: Document,
    unique: Mapping[str, Any],
    *,
    inserts: InsertBatcher | None = None,
) -> tuple[Document, bool]:
    """Insert ``doc`` unless a document matching ``unique`` (a unique index) exists.

    Returns ``(stored document, created)``. This is how client-generated references make intake
    idempotent: a retried upload finds the first copy instead of writing a second. With
    ``inserts`` (a batcher of ``col``) the insert shares a command with concurrent ones.
    """
    try:
        if inserts is not None:
            await inserts.insert_one(doc)
        else:
            await col.insert_one(doc)
    except DuplicateKeyError:
        existing = await col.find_one(dict(unique))
        if existing is None:  # the duplicate was on another unique key (e.g. the code)
            raise
        return existing, False
    return doc, True
