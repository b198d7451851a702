"""Every Mongo query of the metrics service.

Projections live in generation-suffixed collections (``counters_g3``...) so that a rebuild can
fill fresh ones while the live projection keeps serving; ``meta`` says which generation is active.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pymongo import ASCENDING, ReplaceOne, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from metrics.projection import ALL_DAY, DAYS, STATE_DAY
from shared.mongo import packed_ids, unpacked_ids

Document = dict[str, Any]
DUPLICATE_KEY = 11000


async def insert_ignoring_duplicates(col: AsyncCollection[Document], docs: Sequence[Document]) -> None:
    """insert_many(ordered=False) where documents that already exist are fine, nothing else is."""
    if not docs:
        return
    try:
        await col.insert_many(list(docs), ordered=False)
    except BulkWriteError as exc:
        others = [e for e in exc.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
        if others or exc.details.get("writeConcernErrors"):
            raise


class MetaRepository:
    """The ``meta`` collection: the active generation, the generation counter and rebuild status."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._col = db["meta"]

    async def active_generation(self) -> int:
        doc = await self._col.find_one({"_id": "active"})
        if doc is None:
            await insert_ignoring_duplicates(
                self._col, [{"_id": "active", "generation": 1}, {"_id": "generations", "last": 1}]
            )
            doc = await self._col.find_one({"_id": "active"})
            assert doc is not None
        return int(doc["generation"])

    async def allocate_generation(self) -> int:
        await self.active_generation()  # makes sure the counter exists
        doc = await self._col.find_one_and_update(
            {"_id": "generations"}, {"$inc": {"last": 1}}, return_document=ReturnDocument.AFTER
        )
        assert doc is not None
        return int(doc["last"])

    async def activate(self, generation: int) -> None:
        """The switch: one single-document write that every reader and projector follows."""
        await self._col.update_one({"_id": "active"}, {"$set": {"generation": generation}})

    async def rebuild_status(self) -> Document | None:
        return await self._col.find_one({"_id": "rebuild"}, {"_id": 0})

    async def set_rebuild_status(self, **fields: Any) -> None:
        await self._col.update_one(
            {"_id": "rebuild"}, {"$set": {**fields, "updated_at": datetime.now(UTC)}}, upsert=True
        )


PER_DOCUMENT_LOOKUPS = 64
# Per topic. A relay records each chunk (relay_batch_size, 1,000 events by default) once Kafka
# acknowledged it and has at most two in flight, so after a crash it republishes at most about
# two chunks, and its start-up sweep publishes nothing but what was not recorded: the copy lands
# within a few thousand events of that topic. 20,000 keeps a wide margin and, over three topics,
# about as many ids as the single window of 50,000 (metrics RSS after the bench runs was 149 MB
# with that, 173 MB in the next run with 50,000 per topic).
APPLIED_WINDOW = 20_000
MAX_UPDATES_PER_COMMAND = 50


@dataclass
class CounterDoc:
    """One unit's counters: ``counters`` is ``{"state": {...}, "all": {...}, "days": {day: {...}}}``.

    Stored as ``{_id, depth, v, c}`` with ``c`` the counters (and ``wm``) packed into one binary value
    (orjson, then zlib at level 1). FerretDB v1 turns every value of a document into its own JSON node on each read and
    rewrite, so an ``$inc`` on a unit with 50 days of ~25 fields cost 11-27 ms; the same document
    rewritten whole with its counters packed costs ~1 ms (60 documents: 0.65-1.6 s vs 57-80 ms,
    measured with bench's FerretDB). ``v`` is the compare-and-set version of every rewrite and
    ``wm`` (inside ``c``) holds, per partition, the highest offset whose events the counters include.
    FerretDB's cost follows the stored bytes, and the JSON of day after day of the same field names
    compresses ~4x: a rewrite went from 1.0 to 0.4 ms of its CPU and a read from 1.1 to 0.5 ms (67 units
    of 50 days), for ~80 us of compression per write and ~30 us of decompression per read here.
    """

    unit: str
    depth: int
    version: int  # 0: not stored yet, or stored by a version that had no ``v``
    marks: dict[str, int] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    stored: bool = False

    @classmethod
    def from_stored(cls, doc: Document) -> CounterDoc:
        content = unpack(doc)
        return cls(doc["_id"], int(doc.get("depth", 0)), int(doc.get("v", 0)), content.pop(MARKS), content, True)


MARKS = "wm"


def unpack(doc: Document) -> dict[str, Any]:
    """The ``{state, all, days, wm}`` content of a stored counter document.

    The watermarks travel inside the packed value too: one value less per partition made a
    rewrite of 67 unit documents 33 ms instead of 44.
    """
    raw = doc.get("c")
    if raw:
        # Before 2026-11-28 the value was stored uncompressed; orjson's JSON starts with "{".
        content: dict[str, Any] = orjson.loads(raw if raw[:1] == b"{" else zlib.decompress(raw))
    else:  # the unpacked layout of earlier versions, rewritten packed on its next change
        content = {k: dict(doc[k]) for k in (STATE_DAY, ALL_DAY, DAYS, MARKS) if isinstance(doc.get(k), dict)}
    for section in (STATE_DAY, ALL_DAY, DAYS, MARKS):
        content.setdefault(section, {})
    return content


class ProjectionRepository:
    """The collections of one generation: counters, applied event ids, units and campaigns."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        generation: int,
        *,
        applied_window: int = APPLIED_WINDOW,
        cache_seconds: float = 0.0,
    ) -> None:
        self.generation = generation
        # Readers may keep unit documents this long (0: never); the projector's own repository
        # does not cache.
        self._cache_seconds = cache_seconds
        self._unit_cache: dict[str | None, tuple[float, Document | None]] = {}
        self._db = db
        self.counters = db[f"counters_g{generation}"]
        self.applied_events = db[f"applied_events_g{generation}"]
        self.units = db[f"units_g{generation}"]
        self.campaigns = db[f"campaigns_g{generation}"]
        self._window = applied_window
        self._applied_ids: set[str] | None = None
        # Per topic, the documents of ids in its window, oldest first, and how many ids they hold.
        self._applied_docs: dict[str, deque[tuple[str, list[str]]]] = {}
        self._in_window: dict[str, int] = {}

    async def ensure_indexes(self) -> None:
        await self.counters.create_index([("depth", ASCENDING)])

    async def drop(self) -> None:
        for col in (self.counters, self.applied_events, self.units, self.campaigns):
            await col.drop()

    # --- projector writes ------------------------------------------------------------------------

    async def applied_ids(self) -> set[str]:
        """The ids of the most recent ~``applied_window`` applied events of each topic, loaded once
        and then kept in memory (the projector adds to it).

        They only catch a relay republishing an event (same ce_id, later offset). Each topic has
        one writer, its service's relay, and after a crash it republishes at most the chunks it
        had not recorded (1,000 events each), so the copy lands within a few thousand events *of
        that topic* after the original; redeliveries are caught by the watermarks. The window is
        counted per topic because the other topics' traffic in between is unbounded: with one
        shared window a busy topic could push a quiet topic's ids out before their republish
        arrived. Keeping every id instead grew the metrics process by ~110 bytes per event for
        ever (482 MB after the benchmark's freshness runs). FerretDB v1 scans the whole
        collection for ``$in``, so the window is answered from memory. The projector is this
        set's only writer (one live consumer per partition), and it calls :meth:`forget_applied`
        after a failed write so memory never runs ahead of the database.
        """
        if self._applied_ids is None:
            ids: set[str] = set()
            docs: dict[str, deque[tuple[str, list[str]]]] = {}
            async for d in self.applied_events.find({}).sort("_id", ASCENDING):
                chunk = unpacked_ids(d)
                # Documents written before the window was per topic form a group of their own.
                docs.setdefault(str(d.get("topic", "")), deque()).append((str(d["_id"]), chunk))
                ids.update(chunk)
            self._applied_ids, self._applied_docs = ids, docs
            self._in_window = {t: sum(len(c) for _, c in q) for t, q in docs.items()}
        return self._applied_ids

    def forget_applied(self) -> None:
        self._applied_ids = None

    async def mark_applied(self, by_topic: Mapping[str, Sequence[str]]) -> None:
        """Record a batch's event ids, one packed document per topic in one insert; evict each
        topic's oldest documents past its window."""
        written = [(topic, {**packed_ids(ids), "topic": topic}, ids) for topic, ids in by_topic.items() if ids]
        if not written:
            return
        await self.applied_events.insert_many([doc for _, doc, _ in written])
        if self._applied_ids is None:
            return
        for topic, doc, event_ids in written:
            self._applied_ids.update(event_ids)
            queue = self._applied_docs.setdefault(topic, deque())
            queue.append((str(doc["_id"]), list(event_ids)))
            self._in_window[topic] = self._in_window.get(topic, 0) + len(event_ids)
            while len(queue) > 1 and self._in_window[topic] - len(queue[0][1]) >= self._window:
                old_id, old = queue.popleft()
                self._in_window[topic] -= len(old)
                self._applied_ids.difference_update(old)
                await self.applied_events.delete_one({"_id": old_id})

    async def load_counters(self, doc_ids: Iterable[str] | None = None) -> dict[str, CounterDoc]:
        """The stored counter documents among ``doc_ids`` (all of them when None)."""
        if doc_ids is None:
            docs = await self.counters.find({}).to_list()
        else:
            ids = list(doc_ids)
            if len(ids) <= PER_DOCUMENT_LOOKUPS:
                # Primary-key lookups beat one collection scan when a batch touches few counters.
                found = [await self.counters.find_one({"_id": i}) for i in ids]
                docs = [d for d in found if d is not None]
            else:
                docs = await self.counters.find({"_id": {"$in": ids}}).to_list()
        return {d["_id"]: CounterDoc.from_stored(d) for d in docs}

    async def save_counters(self, docs: Sequence[CounterDoc]) -> int:
        """Write each document as version ``doc.version + 1`` if it is still at ``doc.version``.

        Returns how many were written; a document someone else wrote (or created) meanwhile is
        not, and the caller re-reads it. That is what stops a zombie projector double-counting.
        """
        written = 0
        new = [self._stored(d) for d in docs if not d.stored]
        if new:
            try:
                await self.counters.insert_many(new, ordered=False)
                written += len(new)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors) or exc.details.get("writeConcernErrors"):
                    raise
                written += len(new) - len(errors)
        ops = [
            ReplaceOne({"_id": d.unit, "v": d.version if d.version else {"$exists": False}}, self._stored(d))
            for d in docs
            if d.stored
        ]
        # FerretDB v1.24 never answers an update command of 100 or more statements: send fewer.
        for i in range(0, len(ops), MAX_UPDATES_PER_COMMAND):
            result = await self.counters.bulk_write(ops[i : i + MAX_UPDATES_PER_COMMAND], ordered=False)
            written += result.matched_count
        return written

    @staticmethod
    def _stored(d: CounterDoc) -> Document:
        packed = zlib.compress(orjson.dumps({**d.counters, MARKS: d.marks}), 1)
        return {"_id": d.unit, "depth": d.depth, "v": d.version + 1, "c": packed}

    async def set_state(self, kind: str, key: str, fields: Mapping[str, Any]) -> None:
        col = self.units if kind == "units" else self.campaigns
        try:
            await col.update_one({"_id": key}, {"$set": dict(fields)}, upsert=True)
        except DuplicateKeyError:  # another writer created it between our read and insert
            await col.update_one({"_id": key}, {"$set": dict(fields)})

    # --- reads ------------------------------------------------------------------------------------

    async def unit(self, code: str) -> Document | None:
        return await self._cached_unit(code)

    async def root_unit(self) -> Document | None:
        return await self._cached_unit(None)

    async def _cached_unit(self, code: str | None) -> Document | None:
        now = time.monotonic()
        hit = self._unit_cache.get(code)
        if hit is not None and now - hit[0] < self._cache_seconds:
            return hit[1]
        if code is None:
            doc = await self.units.find_one({"parent_code": None}, sort=[("_id", ASCENDING)])
        else:
            doc = await self.units.find_one({"_id": code})
        if self._cache_seconds:
            self._unit_cache[code] = (now, doc)
        return doc

    async def campaign(self, code: str) -> Document | None:
        return await self.campaigns.find_one({"_id": code})

    async def all_campaigns(self) -> list[Document]:
        return await self.campaigns.find({}).sort("_id", ASCENDING).to_list()

    async def counters_in_range(self, unit: str, first: str, last: str) -> list[Document]:
        """``{day, c}`` rows of the unit's days with ``first <= day <= last``, plus its state row."""
        doc = await self.counters.find_one({"_id": unit}, {"c": 1, "depth": 1})
        return rows_in_range(content_of(doc), first, last) if doc is not None else []

    async def counters_all_time(self, unit: str) -> list[Document]:
        doc = await self.counters.find_one({"_id": unit}, {"c": 1, "depth": 1})
        return all_time_rows(content_of(doc)) if doc is not None else []

    async def all_counters(self) -> dict[str, Document]:
        """Every unit's counters as ``{_id, depth, state, all, days}`` (one read for all of the gauges)."""
        return {d["_id"]: content_of(d) async for d in self.counters.find({}, {"wm": 0})}


def content_of(doc: Document) -> Document:
    """A stored counter document as ``{_id, depth, state, all, days}``."""
    content = unpack(doc)
    del content[MARKS]
    return {"_id": doc["_id"], "depth": doc.get("depth"), **content}


def rows_in_range(doc: Document, first: str, last: str) -> list[Document]:
    """``{day, c}`` rows of a counter document's days with ``first <= day <= last``, plus its state row."""
    rows = [{"day": d, "c": c} for d, c in (doc.get(DAYS) or {}).items() if first <= d <= last]
    return [*rows, {"day": STATE_DAY, "c": doc.get(STATE_DAY) or {}}]


def all_time_rows(doc: Document) -> list[Document]:
    base = {"unit": doc["_id"], "depth": doc.get("depth")}
    return [{**base, "day": day, "c": doc.get(day) or {}} for day in (ALL_DAY, STATE_DAY)]


class MetricsStore:
    """The metrics database as the service layer sees it: the meta pointer and the live generation.

    The active generation and unit documents are kept for ``cache_seconds`` (1 s by default), so a
    summary costs one read (its counters) instead of three: the benchmark's pollers asked 120
    summaries a second while the projector was writing. A switch to a rebuilt generation, or a
    new or moved unit, therefore shows within that second rather than on the next request.
    """

    def __init__(self, db: AsyncDatabase[Document], *, cache_seconds: float = 1.0) -> None:
        self._db = db
        self.meta = MetaRepository(db)
        self._cache_seconds = cache_seconds
        self._active: tuple[float, int] | None = None
        self._repo: ProjectionRepository | None = None

    async def projection(self) -> ProjectionRepository:
        now = time.monotonic()
        if self._active is None or now - self._active[0] >= self._cache_seconds:
            self._active = (now, await self.meta.active_generation())
        generation = self._active[1]
        if self._repo is None or self._repo.generation != generation:
            self._repo = ProjectionRepository(self._db, generation, cache_seconds=self._cache_seconds)
        return self._repo
