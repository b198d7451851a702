"""Every Mongo query of the metrics service.

Projections live in generation-suffixed collections (``counts_g3``...) so that a rebuild can
fill fresh ones while the live projection keeps serving; ``meta`` says which generation is active.
Counter documents are plain (see :mod:`metrics.projection`); ``wm`` holds, per partition, the
highest offset whose events the document includes, which is what makes every ``$inc`` exactly-once.

The projector does not write the counters itself: per fetch it inserts one delta document per
partition (``deltas_gN``: ``{_id: "<partition>|<start>", key, start, end, rows: [{doc, c}]}``) and
appends it to that partition's chain (``chains_gN``: ``{_id: <partition>, end, folded, starts}``),
and :mod:`metrics.folding` adds chains into the counters later. Every read of counters therefore
reads the chains and their deltas *first*, then the counters, and adds each delta a counter
document's watermarks show it lacks: a delta is deleted only after it was added to every document
it names, so one folded between the two reads is in the counters and skipped, and one deleted
before the delta read was folded before the counter read.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from metrics.projection import (
    ALL_DAY,
    STATE_DAY,
    TEAM_PREFIX,
    Delta,
    Sums,
    counter_id,
    counter_owner,
    delta_id,
    unfolded,
)
from shared.audit import audit_fields, audit_update
from shared.envelope import Envelope
from shared.logging import get_logger
from shared.migrations import applied, record_applied
from shared.mongo import (
    UPDATES_PER_COMMAND,
    delete_by_ids,
    find_by_ids,
    insert_ignoring_duplicates,
    insert_missing,
    update_each,
)
from shared.outbox import outbox_fields, outbox_update

Document = dict[str, Any]
log = get_logger(__name__)


# The counter layout of this code; earlier ones are migrated once by MetaRepository.migrate_layout.
LAYOUT_VERSION = 3
LEGACY_PREFIXES = ("counters_g", "applied_events_g")
TEAM_COUNTS_PREFIX = "team_counts_g"
# Counter documents the projector remembers as created. One per unit or team and day, so at 100x
# more than half a million: bounded, it holds the recent days, which are the ones being counted.
EXISTING_CACHE_MAX = 50_000
COUNTS_NAME = re.compile(r"counts_g(\d+)")
TEAM_COUNTS_MIGRATION = "0003-team-counters-apart"
MIGRATION_BATCH = 1000


class MetaRepository:
    """The ``meta`` collection: the active generation, the generation counter and rebuild status."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
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

    async def migrate_layout(self) -> None:
        """Move a database of an earlier counter layout to this one, once.

        Earlier layouts kept packed, compressed counters (``counters_gN``) and packed applied-id
        lists; nothing reads them any more. Layout 2 had the projector raise the counters'
        watermarks to the offsets of each fetch, which the folder of layout 3 cannot tell from
        the ends of its deltas. The projection is derived data, so the migration
        starts an empty generation whose projector replays every topic from the beginning, and
        drops the old collections. Replicas that race here agree: only the first write of the
        layout marker allocates the generation.
        """
        if await self._col.find_one({"_id": "layout", "version": LAYOUT_VERSION}) is not None:
            return
        old = [n for n in await self._db.list_collection_names() if n.startswith(LEGACY_PREFIXES)]
        if not old and await self._col.find_one({"_id": "active"}) is None:
            await insert_ignoring_duplicates(self._col, [{"_id": "layout", "version": LAYOUT_VERSION}])
            return
        try:
            marked = await self._col.update_one(
                {"_id": "layout", "version": {"$ne": LAYOUT_VERSION}},
                {"$set": {"version": LAYOUT_VERSION}},
                upsert=True,
            )
        except DuplicateKeyError:  # another replica marked it first and migrates
            return
        if marked.modified_count or marked.upserted_id is not None:
            previous = await self.active_generation()
            generation = await self.allocate_generation()
            await self.activate(generation)
            for name in old:
                await self._db[name].drop()
            await ProjectionRepository(self._db, previous).drop()
            log.info("metrics_layout_migrated", generation=generation, dropped=old, previous=previous)

    async def split_team_counters(self) -> None:
        """Move the team counter documents that earlier code kept among the units' (in ``counts_gN``)
        to ``team_counts_gN``, watermarks and all, once, before any projector starts. A replica that
        races here inserts what is there already (ignored) and deletes what was moved."""
        if await applied(self._db, TEAM_COUNTS_MIGRATION):
            return
        moved = 0
        for name in await self._db.list_collection_names():
            found = COUNTS_NAME.fullmatch(name)
            if found is None:
                continue
            source, target = self._db[name], self._db[f"{TEAM_COUNTS_PREFIX}{found[1]}"]
            while batch := await source.find({"team": {"$exists": True}}).limit(MIGRATION_BATCH).to_list():
                await insert_ignoring_duplicates(target, batch)
                await source.delete_many({"_id": {"$in": [d["_id"] for d in batch]}})
                moved += len(batch)
        await record_applied(self._db, TEAM_COUNTS_MIGRATION, moved)

    async def rebuild_status(self) -> Document | None:
        return await self._col.find_one({"_id": "rebuild"}, {"_id": 0})

    async def set_rebuild_status(self, **fields: Any) -> None:
        await self._col.update_one(
            {"_id": "rebuild"}, {"$set": {**fields, "updated_at": datetime.now(UTC)}}, upsert=True
        )


META_FIELDS = ("_id", "unit", "team", "day", "wm")
MARKS = "wm"


def marks_filter(expected: Mapping[str, int | None]) -> Document:
    """A filter on watermarks: each partition key at exactly ``expected`` (None: never written)."""
    return {f"{MARKS}.{k}": (v if v is not None else {"$exists": False}) for k, v in expected.items()}


def _counts(doc: Mapping[str, Any]) -> dict[str, int]:
    return {k: v for k, v in doc.items() if k not in META_FIELDS and isinstance(v, int)}


def counter_row(doc: Mapping[str, Any]) -> Document:
    """A stored counter document as the ``{unit, day, c}`` row the readers add up."""
    return {"unit": doc["unit"], "day": doc["day"], "c": _counts(doc)}


class DeltaCache:
    """The deltas a repository has read or written and that are not folded yet.

    Deltas never change once written. Requests that want the same new delta at once (the pollers of a
    dashboard, the folder) share one read of it: each read decodes a document of hundreds of rows, and
    120 summaries a second each reading every new delta kept FerretDB busy decoding the same ones.
    """

    def __init__(self) -> None:
        self._deltas: dict[str, Delta] = {}
        self._reads: dict[str, asyncio.Task[dict[str, Delta]]] = {}

    def put(self, deltas: Iterable[Delta]) -> None:
        self._deltas.update((d.id, d) for d in deltas)

    def prune(self, folded: Mapping[str, int]) -> None:
        """Forget the deltas their chain has folded (a reader that still wants one reads it again,
        and finds it gone or not: either way the counters it reads next include it)."""
        self._deltas = {i: d for i, d in self._deltas.items() if d.start >= folded.get(d.key, 0)}

    async def get(
        self, ids: Sequence[str], read: Callable[[Sequence[str]], Awaitable[dict[str, Delta]]]
    ) -> dict[str, Delta]:
        """The deltas of ``ids`` that exist: kept, being read for another caller, or read now."""
        found = {i: d for i in ids if (d := self._deltas.get(i)) is not None}
        todo = [i for i in ids if i not in found and i not in self._reads]
        if todo:
            task = asyncio.ensure_future(self._read(todo, read))
            self._reads.update(dict.fromkeys(todo, task))
        waits = {t for i in ids if i not in found and (t := self._reads.get(i)) is not None}
        for task in waits:
            # Shielded: a caller that goes away does not cancel the read the others wait for.
            got = await asyncio.shield(task)
            found.update((i, got[i]) for i in ids if i in got)
        return found

    async def _read(
        self, ids: Sequence[str], read: Callable[[Sequence[str]], Awaitable[dict[str, Delta]]]
    ) -> dict[str, Delta]:
        try:
            got = await read(ids)
            self.put(got.values())
            return got
        finally:
            me = asyncio.current_task()
            for i in ids:
                if self._reads.get(i) is me:
                    del self._reads[i]


class ProjectionRepository:
    """The collections of one generation: counters, processed event ids, units and campaigns."""

    def __init__(self, db: AsyncDatabase[Document], generation: int, *, cache_seconds: float = 0.0) -> None:
        self.generation = generation
        # Readers may keep the unit tree this long (0: never); the projector's repository does not cache.
        self._cache_seconds = cache_seconds
        self._tree_cache: tuple[float, dict[str, Document]] | None = None
        self.counters = db[f"counts_g{generation}"]
        # Team counters (``team:<code>|<day>``) apart from the units': every read of unit rows scans on
        # FerretDB, and there are many more team rows (a 10x campaign: ~60,000 against ~3,000).
        self.team_counts = db[f"{TEAM_COUNTS_PREFIX}{generation}"]
        # Counter documents known to exist: a cache (a wrong entry only makes an update miss and be
        # planned again exactly).
        self._existing: set[str] = set()
        # The projector's own writes: processed ids, pending deltas and, per partition, their chain
        # (see the module docstring). In a database of their own, because FerretDB writes one
        # database one statement at a time, and a fetch's few writes would queue behind the folder's
        # counter updates (ADR 0006).
        stream = db.client[stream_db_name(db.name)]
        self.processed_events = stream[f"processed_events_g{generation}"]
        self.deltas = stream[f"deltas_g{generation}"]
        self.chains = stream[f"chains_g{generation}"]
        self._chains_known: set[str] = set()
        # Deltas never change once written, so a reader keeps those not folded yet.
        self._delta_cache = DeltaCache()
        self._pending: Pending | None = None
        self.units = db[f"units_g{generation}"]
        self.campaigns = db[f"campaigns_g{generation}"]
        self.teams = db[f"teams_g{generation}"]
        self._states = {"units": self.units, "campaigns": self.campaigns, "teams": self.teams}

    async def ensure_indexes(self) -> None:
        # Readers select by unit and day; FerretDB scans regardless, MongoDB uses these.
        await self.counters.create_index([("unit", ASCENDING), ("day", ASCENDING)])
        await self.team_counts.create_index([("team", ASCENDING), ("day", ASCENDING)])
        await self.processed_events.create_index([("group", ASCENDING), ("topic", ASCENDING), ("partition", ASCENDING)])

    async def drop(self) -> None:
        for col in (
            self.counters,
            self.team_counts,
            self.processed_events,
            self.deltas,
            self.chains,
            self.units,
            self.campaigns,
            self.teams,
        ):
            await col.drop()

    def _collection(self, doc_id: str) -> AsyncCollection[Document]:
        return self.team_counts if doc_id.startswith(TEAM_PREFIX) else self.counters

    # --- projector writes: deltas and their chains --------------------------------------------------

    async def put_deltas(self, deltas: Sequence[Delta]) -> list[Delta]:
        """Insert each delta unless its partition already has one at the same start; answer, per delta,
        the one stored there (an earlier writer's, of the same offsets, is as good as this one)."""
        existing = await insert_missing(self.deltas, [delta_doc(d) for d in deltas])
        stored = list(deltas)
        if existing:
            found = await find_by_ids(self.deltas, existing)
            # One gone again was folded and deleted meanwhile: its chain has passed it, as extend_chains sees.
            stored = [delta_of(found[d.id]) if d.id in found else d for d in deltas]
        # This process's folder would otherwise read back what it just wrote.
        self._delta_cache.put(stored)
        return stored

    async def extend_chains(self, deltas: Sequence[Delta]) -> dict[str, int]:
        """Append each delta to its partition's chain if the chain ends at or before its start, in one
        command; answer each partition's chain end after it (past the delta's start when it was not
        appended: the chain already holds those offsets, or the first of them)."""
        new = [d.key for d in deltas if d.key not in self._chains_known]
        if new:
            await insert_ignoring_duplicates(
                self.chains, [{"_id": k, "end": 0, "folded": 0, "starts": []} for k in new]
            )
            self._chains_known.update(new)
        appended = await update_each(
            self.chains,
            [
                UpdateOne(
                    {"_id": d.key, "end": {"$lte": d.start}}, {"$set": {"end": d.end}, "$push": {"starts": d.start}}
                )
                for d in deltas
            ],
        )
        if appended == len(deltas):
            return {d.key: d.end for d in deltas}
        found = await find_by_ids(self.chains, [d.key for d in deltas], {"end": 1})
        return {key: int(doc["end"]) for key, doc in found.items()}

    async def chain_heads(self) -> list[Document]:
        return await self.chains.find({}).to_list()

    async def chain_deltas(self, heads: Sequence[Document]) -> dict[str, list[Delta | None]]:
        """Per partition, its chain's deltas not folded yet, in order (None where one was deleted after
        ``heads`` were read: it was folded meanwhile)."""
        ids = {h["_id"]: [delta_id(h["_id"], s) for s in h.get("starts", ()) if s >= h.get("folded", 0)] for h in heads}
        self._delta_cache.prune({h["_id"]: int(h.get("folded", 0)) for h in heads})
        found = await self._delta_cache.get([i for chain in ids.values() for i in chain], self.read_deltas)
        return {key: [found.get(i) for i in chain] for key, chain in ids.items()}

    async def read_deltas(self, ids: Sequence[str]) -> dict[str, Delta]:
        """The stored deltas of ``ids`` (those deleted meanwhile are left out)."""
        return {i: delta_of(doc) for i, doc in (await find_by_ids(self.deltas, list(ids))).items()}

    async def folded(self, key: str, through: int, starts: Sequence[int], *, sweep: bool = False) -> None:
        """Record that a chain's deltas before ``through`` are in every counter document, then delete
        them by ``_id`` (FerretDB scans for any other filter). ``sweep`` also deletes the deltas of the
        partition that no chain names and that end before ``through``: those of a writer whose append
        lost to another's."""
        await self.chains.update_one({"_id": key}, {"$max": {"folded": through}, "$pullAll": {"starts": list(starts)}})
        await delete_by_ids(self.deltas, [delta_id(key, s) for s in starts])
        if sweep:
            await self.deltas.delete_many({"key": key, "end": {"$lte": through}})

    async def pending(self) -> Pending:
        """Every delta of every chain that may not be in the counters yet (read before the counters)."""
        chains = await self.chain_deltas(await self.chain_heads())
        deltas = [d for chain in chains.values() for d in chain if d is not None]
        if self._pending is None or self._pending.ids != tuple(d.id for d in deltas):
            self._pending = Pending(deltas)
        return self._pending

    # --- folder writes: the counters ------------------------------------------------------------------

    async def add_counts(
        self, changes: Mapping[str, Mapping[str, int]], guards: Mapping[str, Document], last: Mapping[str, int]
    ) -> set[str]:
        """``$inc`` each document's fields where its watermarks pass its guard; return the documents to
        plan exactly (those that may have missed).

        ``guards[doc]`` is a filter on the document's watermarks (:func:`marks_filter`, or
        ``{wm.k: {$not: {$gte: first}}}`` for a fetch none of whose offsets it has seen); ``last``
        are the fetch's highest offsets per partition key, which the document's watermarks of the
        guarded keys are raised to in the same atomic update.

        Documents are created first (plain ``{_id, unit, day}``, duplicates ignored), so the updates
        need no upsert and go ``UPDATES_PER_COMMAND`` to a command: FerretDB applies a statement of a
        many-statement command in a fraction of a separate command's time (see bench/results.md). A
        command whose matched count falls short cannot say which statements missed, so all of its
        documents are returned: the exact plan adds nothing twice to those that did apply.
        """
        ids = list(changes)
        unknown = [d for d in ids if d not in self._existing]
        if unknown:
            skeletons = [
                {"_id": d, owner: code, "day": day} for d in unknown for owner, code, day in [counter_owner(d)]
            ]
            for col in (self.counters, self.team_counts):
                await insert_ignoring_duplicates(col, [doc for doc in skeletons if self._collection(doc["_id"]) is col])
            if len(self._existing) + len(unknown) > EXISTING_CACHE_MAX:
                self._existing.clear()  # a miss only costs one insert of skeletons that exist
            self._existing.update(unknown)

        def statement(doc_id: str) -> UpdateOne:
            guard = guards[doc_id]
            update: Document = {"$max": {k: last[k.removeprefix(f"{MARKS}.")] for k in guard}}
            if changes[doc_id]:
                update["$inc"] = dict(changes[doc_id])
            return UpdateOne({"_id": doc_id, **guard}, update)

        async def command(chunk: list[str]) -> list[str]:
            result = await self._collection(chunk[0]).bulk_write([statement(d) for d in chunk], ordered=False)
            if result.matched_count == len(chunk):
                return []
            self._existing.difference_update(chunk)  # created again next round, should one be missing
            return chunk

        units = [d for d in ids if not d.startswith(TEAM_PREFIX)]
        teams = [d for d in ids if d.startswith(TEAM_PREFIX)]
        # A command writes one collection.
        step = UPDATES_PER_COMMAND
        chunks = [part[i : i + step] for part in (units, teams) for i in range(0, len(part), step)]
        missed: set[str] = set()
        for short in await asyncio.gather(*(command(c) for c in chunks)):
            missed.update(short)
        return missed

    async def marks(self, doc_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """The watermarks of these counter documents (absent ones: none)."""
        found = await asyncio.gather(*(self._collection(d).find_one({"_id": d}, {MARKS: 1}) for d in doc_ids))
        return {d["_id"]: dict(d.get(MARKS) or {}) for d in found if d is not None}

    async def set_state(self, kind: str, key: str, fields: Mapping[str, Any], position: tuple[str, int]) -> None:
        """Set a unit's or campaign's fields unless a later event of its partition already did."""
        col = self._states[kind]
        mark, offset = position
        with contextlib.suppress(DuplicateKeyError):  # it exists with a later position
            await col.update_one(
                {"_id": key, f"{MARKS}.{mark}": {"$not": {"$gte": offset}}},
                {"$set": {**fields, f"{MARKS}.{mark}": offset}},
                upsert=True,
            )

    # --- reads ------------------------------------------------------------------------------------

    async def tree(self) -> dict[str, Document]:
        """Every unit by code, as the registry's events last described it."""
        now = time.monotonic()
        if self._tree_cache is not None and now - self._tree_cache[0] < self._cache_seconds:
            return self._tree_cache[1]
        units = {d["_id"]: d async for d in self.units.find({}, {MARKS: 0})}
        if self._cache_seconds:
            self._tree_cache = (now, units)
        return units

    async def unit(self, code: str) -> Document | None:
        """The unit with its path as the tree stands now (a moved parent moves its descendants)."""
        tree = await self.tree()
        return {**tree[code], "path": path_of(tree, code)} if code in tree else None

    async def root_unit(self) -> Document | None:
        roots = sorted(code for code, u in (await self.tree()).items() if u.get("parent_code") is None)
        return await self.unit(roots[0]) if roots else None

    async def subtree(self, code: str) -> list[str]:
        return subtree_of(await self.tree(), code)

    async def campaign(self, code: str) -> Document | None:
        return await self.campaigns.find_one({"_id": code}, {MARKS: 0})

    async def all_campaigns(self) -> list[Document]:
        return await self.campaigns.find({}, {MARKS: 0}).sort("_id", ASCENDING).to_list()

    async def counters_in_range(self, unit: str, first: str, last: str) -> list[Document]:
        """``{unit, day, c}`` rows of the unit's subtree with ``first <= day <= last``, plus state rows."""
        return await self.counters_of(await self.subtree(unit), first, last)

    async def counters_of(self, units: Sequence[str], first: str, last: str) -> list[Document]:
        """``{unit, day, c}`` rows of exactly these units with ``first <= day <= last``, plus state rows."""
        pending = await self.pending()
        query = {"unit": {"$in": list(units)}, "$or": [{"day": STATE_DAY}, {"day": {"$gte": first, "$lte": last}}]}
        docs = {d["_id"]: d async for d in self.counters.find(query)}
        return [counter_row(d) for d in pending.add_to(docs, pending.dated("unit", units, first, last))]

    async def counters_all_time(self, unit: str) -> list[Document]:
        """The all-time and state rows of the unit's subtree, each read by ``_id``."""
        pending = await self.pending()
        ids = [counter_id(u, day) for u in await self.subtree(unit) for day in (ALL_DAY, STATE_DAY)]
        found = await asyncio.gather(*(self.counters.find_one({"_id": i}) for i in ids))
        docs = {d["_id"]: d for d in found if d is not None}
        return [counter_row(d) for d in pending.add_to(docs, ids)]

    async def all_counters(self) -> list[Document]:
        """Every unit counter row (one read for all of the gauges)."""
        pending = await self.pending()
        docs = {d["_id"]: d async for d in self.counters.find({})}
        return [counter_row(d) for d in pending.add_to(docs, pending.of_kind("unit"))]

    async def teams_of(self, units: Sequence[str]) -> list[Document]:
        """The teams the registry last placed in one of these units, active or not."""
        return await self.teams.find({"unit_code": {"$in": list(units)}}, {MARKS: 0}).to_list()

    async def team_counters(self, teams: Sequence[str], first: str, last: str) -> AsyncIterator[Document]:
        """``{team, day, c}`` rows of these teams with ``first <= day <= last``, plus their state rows,
        one at a time as the cursor reads them, so that a caller keeps only what it adds up."""
        pending = await self.pending()
        waiting = dict.fromkeys(pending.dated("team", teams, first, last))
        query = {"team": {"$in": list(teams)}, "$or": [{"day": STATE_DAY}, {"day": {"$gte": first, "$lte": last}}]}
        async for doc in self.team_counts.find(query):
            if doc["_id"] in waiting:
                del waiting[doc["_id"]]
                (doc,) = pending.add_to({doc["_id"]: doc}, [doc["_id"]])
            yield {"team": doc["team"], "day": doc["day"], "c": _counts(doc)}
        for doc in pending.add_to({}, waiting):
            yield {"team": doc["team"], "day": doc["day"], "c": _counts(doc)}


def stream_db_name(db: str) -> str:
    """The database of the projector's own writes beside the metrics database ``db``."""
    return f"{db}_stream"


def delta_doc(delta: Delta) -> Document:
    rows = [{"doc": doc_id, "c": fields} for doc_id, fields in delta.rows.items()]
    return {"_id": delta.id, "key": delta.key, "start": delta.start, "end": delta.end, "rows": rows}


def delta_of(doc: Mapping[str, Any]) -> Delta:
    rows: Sums = {r["doc"]: dict(r["c"]) for r in doc["rows"]}
    return Delta(doc["key"], int(doc["start"]), int(doc["end"]), rows)


class Pending:
    """The deltas not folded yet, indexed the way readers look them up: by counter document, and the
    documents by owner. Built once per set of deltas (they change with each fetch and pass, while
    readers come many times a second)."""

    def __init__(self, deltas: Sequence[Delta]) -> None:
        self.ids = tuple(d.id for d in deltas)
        self._of_doc: dict[str, list[Delta]] = {}
        self._of_owner: dict[tuple[str, str], list[tuple[str, str]]] = {}  # -> (doc id, day)
        for delta in deltas:
            for doc_id in delta.rows:
                found = self._of_doc.get(doc_id)
                if found is None:
                    found = self._of_doc[doc_id] = []
                    owner, code, day = counter_owner(doc_id)
                    self._of_owner.setdefault((owner, code), []).append((doc_id, day))
                found.append(delta)

    def dated(self, owner: str, codes: Iterable[str], first: str, last: str) -> list[str]:
        """The pending documents of these units (or teams) with ``first <= day <= last`` or state ones."""
        return [
            doc_id
            for code in codes
            for doc_id, day in self._of_owner.get((owner, code), ())
            if day == STATE_DAY or first <= day <= last
        ]

    def of_kind(self, owner: str) -> list[str]:
        return [doc_id for (kind, _), docs in self._of_owner.items() if kind == owner for doc_id, _ in docs]

    def add_to(self, docs: dict[str, Document], selected: Iterable[str]) -> Iterable[Document]:
        """The stored counter documents ``docs`` (by ``_id``, watermarks included) with what the deltas
        add to those of them in ``selected``, and the ``selected`` documents not stored yet."""
        for doc_id in selected:
            deltas = self._of_doc.get(doc_id)
            if not deltas:
                continue
            doc = docs.get(doc_id)
            if doc is None:
                owner, code, day = counter_owner(doc_id)
                doc = docs[doc_id] = {"_id": doc_id, owner: code, "day": day}
            marks = doc.get(MARKS)
            for delta in deltas:
                if unfolded(delta, marks):
                    for f, v in delta.rows[doc_id].items():
                        doc[f] = doc.get(f, 0) + v
        return docs.values()


def path_of(tree: Mapping[str, Mapping[str, Any]], code: str) -> list[str]:
    """Codes from the root down to ``code``, by the units' current parents."""
    path: list[str] = []
    current: str | None = code
    while current is not None and current in tree and current not in path:
        path.append(current)
        current = tree[current].get("parent_code")
    return path[::-1]


def subtree_of(tree: Mapping[str, Mapping[str, Any]], code: str) -> list[str]:
    """``code`` and every unit now below it, by the units' current parents."""
    children: dict[str, list[str]] = {}
    for c, u in tree.items():
        parent = u.get("parent_code")
        if parent is not None:
            children.setdefault(parent, []).append(c)
    out, todo = [], [code]
    while todo:
        c = todo.pop()
        if c in out:
            continue  # a cycle in bad data must not hang a reader
        out.append(c)
        todo.extend(children.get(c, ()))
    return out


def row_owners(tree: Mapping[str, Mapping[str, Any]], code: str) -> dict[str, str]:
    """Every unit of ``code``'s subtree mapped to the row it counts in: the direct child of ``code``
    it lies under, or ``code`` itself for its own records (one pass over the tree)."""
    children: dict[str, list[str]] = {}
    for c, u in tree.items():
        parent = u.get("parent_code")
        if parent is not None:
            children.setdefault(parent, []).append(c)
    owners = {code: code}
    todo = [(child, child) for child in children.get(code, ())]
    while todo:
        unit, owner = todo.pop()
        if unit in owners:
            continue
        owners[unit] = owner
        todo.extend((c, owner) for c in children.get(unit, ()))
    return owners


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


class PeriodRepository:
    """``period_closes``: one document per period and unit, ``{_id: "<period>|<unit>", status, reported,
    cut, audit, ...}``. Correctness state, not projection: no generation, kept by a rebuild."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._col = db["period_closes"]

    async def ensure_indexes(self) -> None:
        await self._col.create_index([("period", ASCENDING), ("unit", ASCENDING)])

    async def get(self, period: str, unit: str) -> Document | None:
        return await self._col.find_one({"_id": f"{period}|{unit}"})

    async def of_unit(self, unit: str) -> list[Document]:
        """Every period of the unit that was ever closed."""
        return await self._col.find({"unit": unit}).to_list()

    async def of_units(self, period: str, units: Sequence[str]) -> list[Document]:
        return await self._col.find({"period": period, "unit": {"$in": list(units)}}).to_list()

    async def close(
        self,
        period: str,
        unit: str,
        current: Document | None,
        fields: Document,
        entry: Document,
        events: Callable[[int], Sequence[Envelope]],
    ) -> Document | None:
        """Close an open period (never closed, or reopened since), with the events of the close version
        (``events(version)``) in the same write; None when someone else changed it first."""
        doc_id = f"{period}|{unit}"
        if current is None:
            doc = {"_id": doc_id, **fields, "version": 1, **audit_fields([entry]), **outbox_fields(events(1))}
            try:
                await self._col.insert_one(doc)
            except DuplicateKeyError:
                return None
            return doc
        version = int(current.get("version", 1))
        update = audit_update({"$set": {**fields, "version": version + 1}}, [entry])
        return await self._col.find_one_and_update(
            {"_id": doc_id, "status": "open", "version": version},
            outbox_update(update, events(version + 1)),
            return_document=ReturnDocument.AFTER,
        )

    async def transition(
        self, current: Document, fields: Document, entry: Document, events: Sequence[Envelope]
    ) -> Document | None:
        """Move ``current`` to ``fields`` unless its status or version changed meanwhile."""
        update = audit_update({"$set": fields}, [entry])
        return await self._col.find_one_and_update(
            {"_id": current["_id"], "status": current["status"], "version": current.get("version", 1)},
            outbox_update(update, events),
            return_document=ReturnDocument.AFTER,
        )
