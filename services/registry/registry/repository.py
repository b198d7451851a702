"""Every Mongo query of the registry. Each aggregate is one document that carries its own outbox."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pymongo import IndexModel, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.audit import audit_fields, audit_update
from shared.envelope import Envelope
from shared.migrations import applied, record_applied
from shared.mongo import Document, insert_missing, update_each
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

# Reads of aggregates leave out what only the relay and the audit log read.
HIDDEN = {"outbox": 0, "audit": 0}
# On a volunteer: every team it ever had a membership in (Repository.note_joined).
JOINED_TEAMS = "joined_teams"
# On a team: every volunteer it ever had a membership of (Repository.note_joined).
JOINED_MEMBERS = "joined_members"
HINTS_MIGRATION = "0002-membership-hints"


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

    async def note_joined(self, volunteer_id: str, team_code: str) -> None:
        """Add the team to the volunteer's ``joined_teams`` and the volunteer to the team's
        ``joined_members``, before their membership document is written.

        Both lists only grow, so they always hold every membership document there is (and at worst one
        whose write failed after them): a volunteer's or a team's memberships are then ``_id`` reads,
        where a query on ``volunteer_id`` or ``team_code`` scans every membership on FerretDB (50 s per
        departure and 10 s per team update with the 10x campaign's 31,000 memberships).
        """
        await self._db[VOLUNTEERS].update_one({"_id": volunteer_id}, {"$addToSet": {JOINED_TEAMS: team_code}})
        await self.note_members(team_code, [volunteer_id])

    async def note_members(self, team_code: str, volunteer_ids: Sequence[str]) -> None:
        """The team's half of :meth:`note_joined`, for many volunteers at once."""
        await self.note_members_of_teams({team_code: volunteer_ids})

    async def note_members_of_teams(self, members: Mapping[str, Sequence[str]]) -> None:
        """:meth:`note_members` for every team of a roster upload, in as few commands as can be."""
        await update_each(
            self._db[TEAMS],
            [
                UpdateOne({"_id": team}, {"$addToSet": {JOINED_MEMBERS: {"$each": list(ids)}}})
                for team, ids in members.items()
            ],
        )

    async def migrate_membership_hints(self) -> None:
        """Fill ``joined_teams`` and ``joined_members`` of volunteers and teams stored before the lists
        existed, from the memberships. Once per database, before the service answers; ``$addToSet``
        keeps the lists right if a membership starts meanwhile (or another replica runs it too)."""
        if await applied(self._db, HINTS_MIGRATION):
            return
        volunteers, teams = self._db[VOLUNTEERS], self._db[TEAMS]
        members: dict[str, list[str]] = {}
        async for m in self._db[MEMBERSHIPS].find({}, {"volunteer_id": 1, "team_code": 1}):
            await volunteers.update_one({"_id": m["volunteer_id"]}, {"$addToSet": {JOINED_TEAMS: m["team_code"]}})
            members.setdefault(m["team_code"], []).append(m["volunteer_id"])
        await self.note_members_of_teams(members)
        filled = 0
        for col, field in ((volunteers, JOINED_TEAMS), (teams, JOINED_MEMBERS)):
            filled += (await col.update_many({field: {"$exists": False}}, {"$set": {field: []}})).modified_count
        await record_applied(self._db, HINTS_MIGRATION, filled)

    async def memberships_of(self, volunteer_id: str, teams: Sequence[str]) -> list[Document]:
        """The volunteer's membership documents in ``teams`` (its ``joined_teams``), by ``_id``."""
        found = [await self.get(MEMBERSHIPS, f"{team}/{volunteer_id}") for team in teams]
        return [d for d in found if d is not None]

    async def active_member_ids(self, team_code: str) -> list[str]:
        """Current members of the team, read by ``_id`` through its ``joined_members``."""
        team = await self._db[TEAMS].find_one({"_id": team_code}, {JOINED_MEMBERS: 1})
        ids: list[str] = []
        for volunteer_id in (team or {}).get(JOINED_MEMBERS, []):
            m = await self._db[MEMBERSHIPS].find_one({"_id": f"{team_code}/{volunteer_id}"}, {"active": 1})
            if m is not None and m["active"]:
                ids.append(volunteer_id)
        return ids

    async def count_active_members(self, team_code: str) -> int:
        return len(await self.active_member_ids(team_code))

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
        taken = await insert_missing(self._db[collection], [{**d, **outbox_fields(e)} for d, e in docs])
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
