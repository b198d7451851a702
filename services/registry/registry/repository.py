"""Every Mongo query of the registry. Each aggregate is one document that carries its own outbox."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from shared.audit import audit_fields, audit_update
from shared.envelope import Envelope
from shared.mongo import Document
from shared.outbox import outbox_fields, outbox_update
from shared.pagination import decode_cursor, next_cursor

UNITS = "units"
TEAMS = "teams"
VOLUNTEERS = "volunteers"
MEMBERSHIPS = "memberships"
CAMPAIGNS = "campaigns"
COLLECTIONS = (UNITS, TEAMS, VOLUNTEERS, MEMBERSHIPS, CAMPAIGNS)

INDEXES: dict[str, list[IndexModel]] = {
    UNITS: [IndexModel("path"), IndexModel("parent_code"), IndexModel("kind")],
    TEAMS: [IndexModel("unit_path"), IndexModel("kind"), IndexModel("active"), IndexModel("campaign_code")],
    VOLUNTEERS: [IndexModel("unit_path"), IndexModel("skills"), IndexModel("active")],
    MEMBERSHIPS: [IndexModel("team_code"), IndexModel("volunteer_id")],
}

DUPLICATE_KEY = 11000
# Reads of aggregates leave out what only the relay and the audit log read.
HIDDEN = {"outbox": 0, "audit": 0}


class Repository:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        notify: Callable[[str, list[Any]], None],
    ) -> None:
        self._db = db
        self._notify = notify

    async def get(self, collection: str, key: str) -> Document | None:
        return await self._db[collection].find_one({"_id": key}, HIDDEN)

    async def find_all(self, collection: str, query: dict[str, Any]) -> list[Document]:
        return await self._db[collection].find(query, HIDDEN).sort("_id", 1).to_list()

    async def root_unit(self) -> Document | None:
        return await self._db[UNITS].find_one({"parent_code": None}, HIDDEN)

    async def active_member_ids(self, team_code: str) -> list[str]:
        docs = await self._db[MEMBERSHIPS].find({"team_code": team_code, "active": True}, {"volunteer_id": 1}).to_list()
        return [d["volunteer_id"] for d in docs]

    async def count_active_members(self, team_code: str) -> int:
        """Current members of a team; a scan on FerretDB, acceptable because team changes are rare."""
        return await self._db[MEMBERSHIPS].count_documents({"team_code": team_code, "active": True})

    async def page(
        self, collection: str, query: dict[str, Any], limit: int, cursor: str | None
    ) -> tuple[list[Document], str | None]:
        """One page ordered by ``_id``; the cursor condition is merged into any ``_id`` filter."""
        query = dict(query)
        last = decode_cursor(cursor)
        if last is not None:
            existing = query.get("_id")
            cond = dict(existing) if isinstance(existing, dict) else {} if existing is None else {"$in": [existing]}
            query["_id"] = {**cond, "$gt": last}
        docs = await self._db[collection].find(query, HIDDEN).sort("_id", 1).limit(limit + 1).to_list()
        return docs[:limit], next_cursor(docs, limit)

    async def insert(
        self, collection: str, doc: Document, events: Sequence[Envelope], audit: Sequence[Document] = ()
    ) -> bool:
        """Insert a new aggregate with its events and audit entries; False if its ``_id`` is taken."""
        try:
            await self._db[collection].insert_one({**doc, **outbox_fields(events), **audit_fields(audit)})
        except DuplicateKeyError:
            return False
        self._notify(collection, [doc["_id"]])
        return True

    async def insert_new(self, collection: str, docs: Sequence[tuple[Document, Sequence[Envelope]]]) -> set[Any]:
        """Insert many new aggregates with their events in one command; returns the ``_id``s that were taken.

        Audit entries come inside each document (``shared.audit.audit_fields``).
        """
        if not docs:
            return set()
        taken: set[Any] = set()
        try:
            await self._db[collection].insert_many([{**d, **outbox_fields(e)} for d, e in docs], ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors) or exc.details.get("writeConcernErrors"):
                raise
            taken = {docs[e["index"]][0]["_id"] for e in errors}
        self._notify(collection, [d["_id"] for d, _ in docs if d["_id"] not in taken])
        return taken

    async def update(
        self,
        collection: str,
        current: Document,
        changes: Document,
        events: Sequence[Envelope],
        audit: Sequence[Document] = (),
    ) -> bool:
        """Compare-and-set on ``rev``: False if someone else changed the document since ``current`` was read."""
        result = await self._db[collection].update_one(
            {"_id": current["_id"], "rev": current["rev"]},
            audit_update(outbox_update({"$set": changes}, events), audit),
        )
        if result.matched_count:
            self._notify(collection, [current["_id"]])
        return bool(result.matched_count)
