"""Every Mongo query of the metrics service.

Projections live in generation-suffixed collections (``counters_g3``...) so that a rebuild can
fill fresh ones while the live projection keeps serving; ``meta`` says which generation is active.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from metrics.projection import ALL_DAY, DAYS, STATE_DAY

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
MAX_UPDATES_PER_COMMAND = 50


class ProjectionRepository:
    """The collections of one generation: counters, applied event ids, units and campaigns."""

    def __init__(self, db: AsyncDatabase[Document], generation: int) -> None:
        self.generation = generation
        self._db = db
        self.counters = db[f"counters_g{generation}"]
        self.applied_events = db[f"applied_events_g{generation}"]
        self.units = db[f"units_g{generation}"]
        self.campaigns = db[f"campaigns_g{generation}"]
        self._applied_ids: set[str] | None = None

    async def ensure_indexes(self) -> None:
        await self.counters.create_index([("depth", ASCENDING)])

    async def drop(self) -> None:
        for col in (self.counters, self.applied_events, self.units, self.campaigns):
            await col.drop()

    # --- projector writes ------------------------------------------------------------------------

    async def applied(self, event_ids: Sequence[str]) -> set[str]:
        # Answered from memory after one load: FerretDB v1 scans the whole collection for ``$in``,
        # which made every batch cost O(events ever applied). The projector is this set's only
        # writer (one live consumer per partition), so memory and collection stay in step.
        if self._applied_ids is None:
            self._applied_ids = {d["_id"] async for d in self.applied_events.find({}, {"_id": 1})}
        return {e for e in event_ids if e in self._applied_ids}

    async def mark_applied(self, event_ids: Sequence[str]) -> None:
        await insert_ignoring_duplicates(self.applied_events, [{"_id": e} for e in event_ids])
        if self._applied_ids is not None:
            self._applied_ids.update(event_ids)

    async def watermarks(self, doc_ids: Iterable[str]) -> dict[str, dict[str, int | None]]:
        """``{doc id: {partition key: watermark}}`` for the documents that exist."""
        ids = list(doc_ids)
        if len(ids) <= PER_DOCUMENT_LOOKUPS:
            # Primary-key lookups beat one collection scan when a batch touches few counters.
            found = [await self.counters.find_one({"_id": i}, {"wm": 1}) for i in ids]
            docs = [d for d in found if d is not None]
        else:
            docs = await self.counters.find({"_id": {"$in": ids}}, {"wm": 1}).to_list()
        return {d["_id"]: dict(d.get("wm") or {}) for d in docs}

    async def create_skeletons(self, skeletons: Sequence[tuple[str, int]]) -> None:
        """Insert empty counter documents ``(unit, depth)``; ones created meanwhile are fine.

        Creating first and then updating by ``_id`` avoids upserts inside bulk_write, which FerretDB
        answers in a way PyMongo cannot parse when they hit a duplicate key.
        """
        await insert_ignoring_duplicates(
            self.counters,
            [{"_id": u, "depth": depth, STATE_DAY: {}, ALL_DAY: {}, DAYS: {}, "wm": {}} for u, depth in skeletons],
        )

    async def apply_increments(
        self,
        deltas: Mapping[str, Mapping[str, int]],
        expected: Mapping[str, Mapping[str, int | None]],
        new_marks: Mapping[str, int],
    ) -> int:
        """One unordered bulk of conditional ``$inc``; returns how many documents matched.

        Each document's update only matches while its watermarks of the partitions it takes
        increments from are still the ones we read (``expected``), so a second (zombie) projector
        that got there first makes ours miss instead of double-count.
        """
        ops = []
        for doc, fields in deltas.items():
            marks = expected[doc]
            cond: dict[str, Any] = {f"wm.{k}": (v if v is not None else {"$exists": False}) for k, v in marks.items()}
            ops.append(
                UpdateOne(
                    {"_id": doc, **cond},
                    {"$inc": dict(fields), "$set": {f"wm.{k}": new_marks[k] for k in marks}},
                )
            )
        if not ops:
            return 0
        matched = 0
        # FerretDB v1.24 never answers an update command of 100 or more statements: send fewer.
        for i in range(0, len(ops), MAX_UPDATES_PER_COMMAND):
            result = await self.counters.bulk_write(ops[i : i + MAX_UPDATES_PER_COMMAND], ordered=False)
            matched += result.matched_count
        return matched

    async def set_state(self, kind: str, key: str, fields: Mapping[str, Any]) -> None:
        col = self.units if kind == "units" else self.campaigns
        try:
            await col.update_one({"_id": key}, {"$set": dict(fields)}, upsert=True)
        except DuplicateKeyError:  # another writer created it between our read and insert
            await col.update_one({"_id": key}, {"$set": dict(fields)})

    # --- reads ------------------------------------------------------------------------------------

    async def unit(self, code: str) -> Document | None:
        return await self.units.find_one({"_id": code})

    async def root_unit(self) -> Document | None:
        return await self.units.find_one({"parent_code": None}, sort=[("_id", ASCENDING)])

    async def campaign(self, code: str) -> Document | None:
        return await self.campaigns.find_one({"_id": code})

    async def all_campaigns(self) -> list[Document]:
        return await self.campaigns.find({}).sort("_id", ASCENDING).to_list()

    async def counters_in_range(self, unit: str, first: str, last: str) -> list[Document]:
        """``{day, c}`` rows of the unit's days with ``first <= day <= last``, plus its state row."""
        doc = await self.counters.find_one({"_id": unit}, {DAYS: 1, STATE_DAY: 1})
        return rows_in_range(doc, first, last) if doc is not None else []

    async def counters_all_time(self, unit: str) -> list[Document]:
        doc = await self.counters.find_one({"_id": unit}, {ALL_DAY: 1, STATE_DAY: 1})
        return all_time_rows(doc) if doc is not None else []

    async def all_counters(self) -> dict[str, Document]:
        """Every unit's counter document (one read for all of the gauges)."""
        return {d["_id"]: d async for d in self.counters.find({}, {"wm": 0})}


def rows_in_range(doc: Document, first: str, last: str) -> list[Document]:
    """``{day, c}`` rows of a counter document's days with ``first <= day <= last``, plus its state row."""
    rows = [{"day": d, "c": c} for d, c in (doc.get(DAYS) or {}).items() if first <= d <= last]
    return [*rows, {"day": STATE_DAY, "c": doc.get(STATE_DAY) or {}}]


def all_time_rows(doc: Document) -> list[Document]:
    base = {"unit": doc["_id"], "depth": doc.get("depth")}
    return [{**base, "day": day, "c": doc.get(day) or {}} for day in (ALL_DAY, STATE_DAY)]


class MetricsStore:
    """The metrics database as the service layer sees it: the meta pointer and the live generation."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        self.meta = MetaRepository(db)

    async def projection(self) -> ProjectionRepository:
        return ProjectionRepository(self._db, await self.meta.active_generation())
