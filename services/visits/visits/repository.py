"""Every database query of the visits service: records (visits, outreach posts) and the read model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from shared import registry_view as rm
from shared.migrations import applied, record_applied
from shared.mongo import InsertBatcher, delete_by_ids, find_by_ids, insert_missing, insert_once, update_each
from shared.pagination import after_filter, next_cursor

VISITS = "visits"
OUTREACH = "outreach"
PENDING = "pending_index"
PENDING_KEYS = "pending_keys"

Document = dict[str, Any]

TEAM_MEMBERS_MIGRATION = "0002-read-model-without-team-members"
PENDING_KEYS_MIGRATION = "0003-pending-records-by-key"

INDEXES: dict[str, list[IndexModel]] = {
    VISITS: [
        IndexModel([("client_ref", ASCENDING)], unique=True),
        IndexModel("unit_path"),
        IndexModel("team_code"),
        IndexModel("unit_code"),
        IndexModel("visited_on"),
        IndexModel("status"),
    ],
    OUTREACH: [
        IndexModel([("client_ref", ASCENDING)], unique=True),
        IndexModel("unit_path"),
        IndexModel("team_code"),
        IndexModel("unit_code"),
        IndexModel("published_on"),
        IndexModel("status"),
    ],
    PENDING: [IndexModel("keys")],
}


async def drop_team_members(db: AsyncDatabase[Document]) -> None:
    """Take ``members`` off the read model's teams, once per database: this service reads memberships
    by ``_id`` only, and its view no longer keeps them up to date (``team_members=False``)."""
    if await applied(db, TEAM_MEMBERS_MIGRATION):
        return
    result = await db[rm.TEAMS].update_many({}, {"$unset": {"members": "", rm.MEMBER_OFFSETS: ""}})
    await record_applied(db, TEAM_MEMBERS_MIGRATION, result.modified_count)


class RecordRepository:
    """One collection of field records. ``_id`` is derived from ``client_ref`` (see the service), so
    every lookup on the request path is an ``_id`` equality: FerretDB v1 on SQLite pushes down only
    those, and scans the whole collection for any other filter (``$in`` included)."""

    def __init__(self, col: AsyncCollection[Document]) -> None:
        self._col = col
        self._inserts = InsertBatcher(col)  # concurrent intakes share one insert command

    async def insert_once(self, doc: Document) -> tuple[Document, bool]:
        return await insert_once(self._col, doc, {"_id": doc["_id"]}, inserts=self._inserts)

    async def insert_new(self, docs: Sequence[Document]) -> set[str]:
        """Insert ``docs``; return the ids that already existed (those docs were not written)."""
        return await insert_missing(self._col, docs)

    async def get(self, record_id: str) -> Document | None:
        return await self._col.find_one({"_id": record_id})

    async def get_many(self, record_ids: Iterable[str]) -> dict[str, Document]:
        return await find_by_ids(self._col, record_ids)

    async def page(self, query: Document, limit: int, cursor: str | None) -> tuple[list[Document], str | None]:
        query = {**query, **after_filter(cursor)}
        docs = await self._col.find(query, {"audit": 0}).sort("_id", ASCENDING).limit(limit + 1).to_list()
        return docs[:limit], next_cursor(docs, limit)

    async def update_if(self, record_id: str, expect: Document, update: Document) -> bool:
        """Compare-and-set on ``expect`` (status, rev): False when someone else changed the record first."""
        result = await self._col.update_one({"_id": record_id, **expect}, update)
        return result.matched_count == 1


class PendingIndex:
    """Which pending records wait on which registry key (``team:QN-VD-1``, ``membership:T/v``...).

    Two plain collections. ``pending_index`` has one entry per pending record, ``{_id:
    "<kind>:<record id>", kind, record_id, keys, at}``. ``pending_keys`` has one document per kind and
    key, naming the records that wait on it: ``{_id: "<kind>|<key>", kind, key, records: [...]}``.
    A registry batch finds its records by the ids of its keys, so it reads only what it can unblock.
    It used to read every entry of its kind. That is a scan on FerretDB, so at 100x, with tens of
    thousands of uploads held while the read model lagged, each batch cost about 3 s and the lag fed
    itself.

    Writes go in this order: the key documents, then the entry, then the record. So a key never
    misses a record that waits on it (a key added later, by :meth:`wait_also`, is followed by one more
    look at the record). A key may name a record whose entry is gone (resolved, or an
    add still under way): lookups skip such records, and removals take them out of their keys. A
    crash leaves at worst an entry or a key naming a record that is no longer pending (ignored).
    """

    def __init__(self, col: AsyncCollection[Document], by_key: AsyncCollection[Document]) -> None:
        self._col = col
        self._keys = by_key

    async def _name(self, kind: str, waiting: dict[str, list[str]]) -> None:
        """Add record ids to the documents of their keys (``{key: [record id, ...]}``)."""
        await update_each(
            self._keys,
            [
                UpdateOne(
                    {"_id": f"{kind}|{key}"},
                    {"$addToSet": {"records": {"$each": rids}}, "$setOnInsert": {"kind": kind, "key": key}},
                    upsert=True,
                )
                for key, rids in waiting.items()
            ],
        )

    async def add(self, kind: str, record_ids: Sequence[str], keys: Sequence[Sequence[str]]) -> None:
        if record_ids:
            waiting: dict[str, list[str]] = {}
            for rid, ks in zip(record_ids, keys, strict=True):
                for key in ks:
                    waiting.setdefault(key, []).append(rid)
            await self._name(kind, waiting)
            now = datetime.now(UTC)
            docs = [
                {"_id": f"{kind}:{rid}", "kind": kind, "record_id": rid, "keys": list(k), "at": now}
                for rid, k in zip(record_ids, keys, strict=True)
            ]
            await insert_missing(self._col, docs)

    async def waiting_on(self, kind: str, keys: AbstractSet[str]) -> list[tuple[str, datetime | None]]:
        """``(record id, when its entry was written)`` of the records of ``kind`` waiting on any of
        ``keys``: reads by ``_id`` only, the keys' documents and then their records' entries."""
        named = await find_by_ids(self._keys, (f"{kind}|{key}" for key in keys), {"records": 1})
        rids = {rid for d in named.values() for rid in d.get("records", ())}
        entries = await find_by_ids(self._col, (f"{kind}:{rid}" for rid in sorted(rids)), {"record_id": 1, "at": 1})
        return [(d["record_id"], d.get("at")) for d in entries.values()]

    async def wait_also(self, kind: str, record_id: str, keys: Sequence[str]) -> bool:
        """Make the record wait on ``keys`` too (a merged unit's successor, found late), writing its
        entry again if a listener took it away before the record was stored (see
        ``RecordService.on_registry_change``). True if some key was new.
        """
        before = await self._col.find_one_and_update(
            {"_id": f"{kind}:{record_id}"},
            {
                "$addToSet": {"keys": {"$each": list(keys)}},
                "$setOnInsert": {"kind": kind, "record_id": record_id, "at": datetime.now(UTC)},
            },
            upsert=True,
            return_document=ReturnDocument.BEFORE,
        )
        new = [key for key in keys if before is None or key not in before.get("keys", ())]
        # Only the keys it did not wait on yet: a record re-checked while still pending would otherwise
        # rewrite every one of its keys' documents each time. The key documents come after the entry
        # here, so the caller looks once more when this answers True (see ``RecordService._resolve``).
        await self._name(kind, {key: [record_id] for key in new})
        return bool(new)

    async def remove(self, kind: str, record_ids: Sequence[str]) -> None:
        """Forget records that no longer wait: out of their keys' documents, then their entries."""
        entry_ids = [f"{kind}:{rid}" for rid in record_ids]
        leaving: dict[str, list[str]] = {}
        for d in (await find_by_ids(self._col, entry_ids, {"record_id": 1, "keys": 1})).values():
            for key in d.get("keys", ()):
                leaving.setdefault(key, []).append(d["record_id"])
        if leaving:
            await update_each(
                self._keys,
                [UpdateOne({"_id": f"{kind}|{key}"}, {"$pullAll": {"records": rids}}) for key, rids in leaving.items()],
            )
            # Keys nobody waits on any more: gone, so the collection holds only what is pending.
            await delete_by_ids(self._keys, [f"{kind}|{key}" for key in leaving], {"records": []})
        await delete_by_ids(self._col, entry_ids)

    async def migrate_keys(self, db: AsyncDatabase[Document]) -> None:
        """Name the records of entries written before the key documents existed; once per database."""
        if await applied(db, PENDING_KEYS_MIGRATION):
            return
        waiting: dict[str, dict[str, list[str]]] = {}
        async for d in self._col.find({}, {"kind": 1, "record_id": 1, "keys": 1}):
            for key in d.get("keys", ()):
                waiting.setdefault(d["kind"], {}).setdefault(key, []).append(d["record_id"])
        for kind, by_key in waiting.items():
            await self._name(kind, by_key)
        await record_applied(db, PENDING_KEYS_MIGRATION, sum(len(k) for k in waiting.values()))


@dataclass
class RegistryFacts:
    """What the local read model knows about the references of some records."""

    teams: dict[str, Document] = field(default_factory=dict)
    # Per code a record or a team names: the unit that takes its records now (a merged code's successor).
    units: dict[str, rm.ResolvedUnit] = field(default_factory=dict)
    memberships: dict[tuple[str, str], bool] = field(default_factory=dict)
    volunteers: dict[str, bool] = field(default_factory=dict)


class RegistryReader:
    """Lookups in the read model that :class:`shared.registry_view.RegistryView` maintains.

    By ``_id`` only, the keys of one collection in one ``$in`` read: memberships by
    ``team/volunteer``, which also tells an ended membership from one not seen yet (this view keeps
    no member lists). With a ``cache`` (the one the view forgets changes in) known documents come
    from memory: the request path then makes no read-model round trip at all.
    """

    def __init__(self, db: AsyncDatabase[Document], cache: rm.ReadModelCache | None = None) -> None:
        self._db = db
        self._cache = cache

    def uncached(self) -> RegistryReader:
        """The same lookups straight from the database, for re-checking pending records.

        A replica's cache may hold a document that another replica has changed since (a team stub
        before its team event), and that replica's listener may have looked for pending records before
        ours was stored: only a fresh read after our insert closes that window.
        """
        return RegistryReader(self._db) if self._cache is not None else self

    async def _by_id(self, collection: str, keys: Iterable[str]) -> dict[str, Document]:
        col = self._db[collection]

        async def find(missing: Sequence[str]) -> dict[str, Document]:
            return await find_by_ids(col, missing)

        return await (self._cache.load_many(collection, keys, find) if self._cache is not None else find(list(keys)))

    async def merged_into(self, unit: str) -> list[str]:
        """See :func:`shared.registry_view.merged_into`."""
        return await rm.merged_into(self._db, unit)

    async def teams(self, codes: Iterable[str]) -> dict[str, Document]:
        # A membership event can arrive before its team's event (another key, so no order between
        # them); the view then holds a stub with only ``members``, which does not make the team known.
        return {k: d for k, d in (await self._by_id(rm.TEAMS, codes)).items() if "kind" in d}

    async def _unit(self, code: str) -> Document | None:
        return (await self._by_id(rm.UNITS, [code])).get(code)

    async def units(self, codes: Iterable[str]) -> dict[str, rm.ResolvedUnit]:
        """Per code, the unit that now takes its records (see :func:`shared.registry_view.follow_successors`)."""
        return {code: await rm.follow_successors(code, self._unit) for code in sorted(set(codes))}

    async def known_unit(self, code: str) -> rm.KnownUnit | None:
        return await rm.known_unit(code, self._unit)

    async def memberships(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        docs = await self._by_id(rm.MEMBERSHIPS, (f"{team}/{vid}" for team, vid in pairs))
        return {(d["team_code"], d["volunteer_id"]): bool(d.get("active")) for d in docs.values()}

    async def volunteers(self, ids: Iterable[str]) -> dict[str, bool]:
        return {k: bool(d.get("active")) for k, d in (await self._by_id(rm.VOLUNTEERS, ids)).items()}
