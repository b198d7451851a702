"""Every database query of the training service.

One ``courses`` document per course carries the outbox of *all* that course's events, so the
relay publishes them in the order they were written (one key, one partition, one document).
Participants and sessions live in their own collections because a course can have thousands.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from shared.audit import audit_fields, audit_update
from shared.envelope import Envelope
from shared.migrations import applied, record_applied
from shared.mongo import (
    Document,
    delete_by_ids,
    find_by_ids,
    id_chunks,
    insert_ignoring_duplicates,
    insert_missing,
    insert_once,
)
from shared.outbox import outbox_fields, outbox_update
from shared.pagination import after_filter

COURSES = "courses"
PARTICIPANTS = "participants"
SESSIONS = "sessions"
# ``{_id: course code}`` of the courses held as pending: what a registry change re-checks.
PENDING_COURSES = "pending_courses"
PENDING_MIGRATION = "0003-pending-courses-index"
# A course's ``last_applied`` marker names a list of children (``ids``), no longer one (``id``).
LAST_APPLIED_MIGRATION = "0004-last-applied-ids"
# How long an index entry may wait for its course's insert before it counts as a crash's leftover.
UNSTORED_GRACE = timedelta(minutes=5)

INDEXES: dict[str, list[IndexModel]] = {
    COURSES: [
        IndexModel("client_ref", unique=True),
        IndexModel("unit_path"),
        IndexModel("team_code"),
        IndexModel("status"),
        IndexModel("starts_on"),
    ],
    PARTICIPANTS: [IndexModel("client_ref", unique=True), IndexModel([("course_code", ASCENDING), ("_id", ASCENDING)])],
    SESSIONS: [IndexModel("client_ref", unique=True), IndexModel("course_code")],
}

# Course reads leave out what only the relay and the audit log read.
HIDDEN = {"outbox": 0, "audit": 0}

# Which child collection and flag a course's ``last_applied`` marker refers to (see service.py).
CHILD_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "enrol": (PARTICIPANTS, {"counted": True}),
    "complete": (PARTICIPANTS, {"status": "completed"}),
    "session": (SESSIONS, {"counted": True}),
}


class TrainingRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        self._courses = db[COURSES]
        self._participants = db[PARTICIPANTS]
        self._sessions = db[SESSIONS]
        self._pending = db[PENDING_COURSES]

    # --- courses -----------------------------------------------------------------------------------

    async def insert_course(
        self, doc: Document, events: Sequence[Envelope], audit: Sequence[Document] = ()
    ) -> tuple[Document, bool]:
        new = {**doc, **outbox_fields(events), **audit_fields(audit)}
        return await insert_once(self._courses, new, {"client_ref": doc["client_ref"]})

    async def get_course(self, code: str) -> Document | None:
        return await self._courses.find_one({"_id": code}, HIDDEN)

    async def update_course(
        self,
        code: str,
        expected: dict[str, Any],
        update: dict[str, Any],
        events: Sequence[Envelope],
        audit: Sequence[Document] = (),
    ) -> bool:
        """Conditional single-document update with its events and audit entries; False if ``expected`` fails."""
        res = await self._courses.update_one(
            {"_id": code, **expected}, audit_update(outbox_update(update, events), audit)
        )
        return res.matched_count == 1

    async def hold(self, code: str) -> None:
        """Note a course about to be stored as pending, or still pending after a re-check (before its
        insert: a crash between the two leaves an entry that :meth:`pending_courses` drops later,
        never a pending course nobody re-checks)."""
        await insert_ignoring_duplicates(self._pending, [{"_id": code, "at": datetime.now(UTC)}])

    async def pending_courses(self) -> list[Document]:
        """The pending courses, read by ``_id`` from the small index: a query on ``status`` reads every
        course on FerretDB, and each registry batch asks."""
        now = datetime.now(UTC)
        entries = await self._pending.find({}).to_list()
        courses = await find_by_ids(self._courses, (e["_id"] for e in entries), HIDDEN)
        out = [c for c in courses.values() if c["status"] == "pending"]
        # Scheduled, rejected or cancelled since; or never stored (a crash). A young entry without
        # its course is a course being stored right now: keep it.
        stale = [
            e["_id"]
            for e in entries
            if ((course := courses.get(e["_id"])) is not None and course["status"] != "pending")
            or (course is None and now - e.get("at", now - UNSTORED_GRACE) >= UNSTORED_GRACE)
        ]
        await delete_by_ids(self._pending, stale)
        return out

    async def release(self, code: str) -> None:
        await self._pending.delete_one({"_id": code})

    async def migrate_pending_index(self) -> None:
        """The training database's one-off migrations, each once per database (start-up calls this).

        Indexes the courses held as pending before the index existed, and rewrites the old
        ``last_applied`` markers as lists.
        """
        if not await applied(self._db, PENDING_MIGRATION):
            codes = [{"_id": c["_id"]} async for c in self._courses.find({"status": "pending"}, {"_id": 1})]
            await insert_ignoring_duplicates(self._pending, codes)
            await record_applied(self._db, PENDING_MIGRATION, len(codes))
        await self._migrate_last_applied_ids()

    async def _migrate_last_applied_ids(self) -> None:
        """``last_applied = {kind, id, by?}`` becomes ``{kind, ids: [id], by?}``."""
        if await applied(self._db, LAST_APPLIED_MIGRATION):
            return
        old = {"last_applied.id": {"$exists": True}}
        moved = 0
        for found in await self._courses.find(old, {"last_applied": 1, "rev": 1}).to_list():
            doc: Document | None = found
            # Conditional on rev, and moving it: a writer that read the course before meanwhile misses
            # its compare-and-set and reads the list; a course written meanwhile is read again.
            while doc is not None and (marker := doc.get("last_applied")) and "id" in marker:
                as_list = {k: v for k, v in marker.items() if k != "id"} | {"ids": [marker["id"]]}
                update = {"$set": {"last_applied": as_list}, "$inc": {"rev": 1}}
                if (await self._courses.update_one({"_id": doc["_id"], "rev": doc["rev"]}, update)).matched_count:
                    moved += 1
                    break
                doc = await self._courses.find_one({"_id": doc["_id"]}, {"last_applied": 1, "rev": 1})
        await record_applied(self._db, LAST_APPLIED_MIGRATION, moved)

    async def list_courses(self, query: dict[str, Any], cursor: str | None, limit: int) -> list[Document]:
        return (
            await self._courses.find({**query, **after_filter(cursor)}, HIDDEN)
            .sort("_id", ASCENDING)
            .limit(limit + 1)
            .to_list()
        )

    # --- children: participants and sessions -------------------------------------------------------

    async def insert_participants(self, docs: Sequence[tuple[Document, Document]]) -> set[str]:
        """Insert participants, each with its audit entry, in one command; the ids that existed already."""
        return await insert_missing(self._participants, [{**doc, **audit_fields([entry])} for doc, entry in docs])

    async def get_participant(self, participant_id: str) -> Document | None:
        return await self._participants.find_one({"_id": participant_id})

    async def counted_participant_ids(self, course_code: str, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` counted in the course: the rosters of a whole request, read by ``_id``."""
        found = await find_by_ids(self._participants, ids, {"course_code": 1, "counted": 1})
        return {i for i, d in found.items() if d.get("course_code") == course_code and d.get("counted")}

    async def list_participants(self, course_code: str, cursor: str | None, limit: int) -> list[Document]:
        return (
            await self._participants.find({"course_code": course_code, "counted": True, **after_filter(cursor)})
            .sort("_id", ASCENDING)
            .limit(limit + 1)
            .to_list()
        )

    async def insert_sessions(self, docs: Sequence[tuple[Document, Document]]) -> set[str]:
        """Insert sessions, each with its audit entry, in one command; the ids that existed already."""
        return await insert_missing(self._sessions, [{**doc, **audit_fields([entry])} for doc, entry in docs])

    async def list_sessions(self, course_code: str, cursor: str | None, limit: int) -> list[Document]:
        return (
            await self._sessions.find({"course_code": course_code, "counted": True, **after_filter(cursor)})
            .sort("_id", ASCENDING)
            .limit(limit + 1)
            .to_list()
        )

    async def get_children(self, kind: str, ids: Sequence[str]) -> dict[str, Document]:
        collection, _ = CHILD_FLAGS[kind]
        return await find_by_ids(self._db[collection], ids)

    async def mark_children_applied(self, kind: str, ids: Sequence[str]) -> None:
        """Flag children as applied: one write for a request's children."""
        collection, flag = CHILD_FLAGS[kind]
        for chunk in id_chunks(ids):
            await self._db[collection].update_many({"_id": {"$in": chunk}}, {"$set": flag})

    async def mark_child_applied(self, kind: str, child_id: str, audit: Document) -> None:
        """Flag a child as applied, if not flagged yet, pushing its audit entry in the same write."""
        collection, flag = CHILD_FLAGS[kind]
        not_yet = {k: {"$ne": v} for k, v in flag.items()}
        await self._db[collection].update_one({"_id": child_id, **not_yet}, audit_update({"$set": flag}, [audit]))

    async def discard_unapplied_children(self, kind: str, ids: Sequence[str]) -> None:
        """Remove participants or sessions that were stored but never counted (their course refused them)."""
        collection, _ = CHILD_FLAGS[kind]
        await delete_by_ids(self._db[collection], ids, {"counted": False})
