"""A local read model of the registry, built from ``registry.events.v1``.

Visits and training validate references (unit, team, membership, skills) against this model in
their own database, so they keep working when the registry service is down and never call it.
Every event sets the full current state of its key (or of its part of the key's document), and
every document records the Kafka offset of the event that set it, so replays, redeliveries and a
replica that lost its partitions mid-batch never put back an older state.

Reorganisation: a unit document also records how the unit ended, if it did (``status`` "merged"
with ``successor_code``, or "closed" with ``close_reason`` or the ``successors`` of a split, and
``closed_on``). :func:`follow_successors` / :meth:`RegistryView.resolve_unit` find the unit that now
takes a code's records, because offline devices keep sending merged units' old codes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field
from pymongo import IndexModel, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.concurrency import run_in_chunks
from shared.consumer import Consumed
from shared.contracts import registry as ev
from shared.mongo import UPDATES_PER_COMMAND, find_by_ids, insert_missing

UNITS = "rm_units"
TEAMS = "rm_teams"
VOLUNTEERS = "rm_volunteers"
MEMBERSHIPS = "rm_memberships"
# Every collection of the read model, in the database of its own (``ServiceSettings.view_db_name``).
COLLECTIONS = (UNITS, TEAMS, VOLUNTEERS, MEMBERSHIPS)
# On a team document: per volunteer id (see ``_field``), the offset of the membership event that
# last changed ``members``.
MEMBER_OFFSETS = "member_offsets"

INDEXES: dict[str, list[IndexModel]] = {
    MEMBERSHIPS: [IndexModel("team_code"), IndexModel("volunteer_id")],
    TEAMS: [IndexModel("unit_code")],
}

# Called once per applied batch with the changed ("unit"|"team"|"volunteer"|"membership", key) pairs,
# so a service can re-check the records it had to hold as pending: one look per batch, not per key,
# because a roster upload changes thousands of keys at once.
ChangeListener = Callable[[Sequence[tuple[str, str]]], Awaitable[None]]
# Reads the documents of some keys of one collection: ``{key: document}`` for those that exist.
FindMany = Callable[[Sequence[str]], Awaitable[dict[str, dict[str, Any]]]]

# ``status`` of a unit document; a unit without one is active.
MERGED = "merged"
CLOSED = "closed"
# A merged unit's successor may itself have been merged since; a longer chain is a registry error
# (or a cycle), and resolution stops there rather than loop.
MAX_MERGE_HOPS = 16

# The collection whose document ``_id`` a reported change names; a membership also changes its team's
# ``members`` list.
_COLLECTION_OF = {"unit": UNITS, "team": TEAMS, "volunteer": VOLUNTEERS, "membership": MEMBERSHIPS}


class ReadModelCache:
    """Read-model documents by ``(collection, _id)``, in memory, forgotten when the view changes them.

    A record's reference checks cost three or four ``_id`` lookups; from memory they cost none.
    :class:`RegistryView` calls :meth:`forget` after writing each batch and before its listeners
    run, and a lookup that overlapped such a change is not kept (see :attr:`generation`), so one
    process never answers from a document older than the batch it applied.

    Entries also expire after ``ttl_seconds``: with several replicas each applies only its own
    partitions and never hears of the others' changes, so that is how long a replica may answer
    from a document another replica has since changed. Only documents that exist are kept: an
    unknown key always asks the database, so a record is never held as pending on a stale "unknown".
    Callers must not modify the documents they get.

    :meth:`load` reads a missing document once for all the requests that want it at the same time
    (64 concurrent requests would otherwise each read a key that just expired).
    """

    def __init__(
        self, ttl_seconds: float = 5.0, *, max_entries: int = 20_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._docs: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._loading: dict[tuple[str, str, int], asyncio.Future[dict[str, Any] | None]] = {}
        self.generation = 0  # bumped by every forget

    def __len__(self) -> int:
        return len(self._docs)

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        entry = self._docs.get((collection, key))
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._docs[(collection, key)]
            return None
        return entry[1]

    def put(self, collection: str, key: str, doc: dict[str, Any], generation: int) -> None:
        """Keep ``doc``, read from the database after :attr:`generation` was ``generation``."""
        if generation != self.generation or self._ttl <= 0:
            return  # the view changed something while we read: this copy may predate it
        now = self._clock()
        # Entries sit in the order they were kept, so the expired ones are at the front: dropping
        # them here holds the last ``ttl_seconds`` of lookups, not every document ever read (at 10x
        # that was most of a 31,000-volunteer roster, and visits' RSS passed 170 MB).
        while self._docs:
            oldest = next(iter(self._docs))
            if self._docs[oldest][0] > now and len(self._docs) < self._max:
                break
            del self._docs[oldest]
        self._docs.pop((collection, key), None)
        self._docs[(collection, key)] = (now + self._ttl, doc)

    async def load(
        self, collection: str, key: str, find: Callable[[], Awaitable[dict[str, Any] | None]]
    ) -> dict[str, Any] | None:
        """The cached document, or what ``find`` reads (kept if it exists); None if there is none."""

        async def find_one(keys: Sequence[str]) -> dict[str, dict[str, Any]]:
            doc = await find()
            return {key: doc} if doc is not None else {}

        return (await self.load_many(collection, [key], find_one)).get(key)

    async def load_many(self, collection: str, keys: Iterable[str], find: FindMany) -> dict[str, dict[str, Any]]:
        """The documents of ``keys`` that exist: cached ones from memory, the rest by one ``find``.

        ``find(missing)`` answers ``{key: document}`` for those it found. A key another caller is
        reading already is awaited rather than read again. Only a read that started after the
        latest forget may answer: one from before could miss the change a listener is re-checking
        pending records for.
        """
        found: dict[str, dict[str, Any]] = {}
        waiting: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        missing: list[str] = []
        generation = self.generation
        for key in dict.fromkeys(keys):
            doc = self.get(collection, key)
            if doc is not None:
                found[key] = doc
            elif (loading := self._loading.get((collection, key, generation))) is not None:
                waiting[key] = loading
            else:
                missing.append(key)
        if missing:
            read = asyncio.ensure_future(find(missing))
            for key in missing:
                slot = (collection, key, generation)
                waiting[key] = self._loading[slot] = asyncio.ensure_future(self._settle(slot, read))
        outcomes = await asyncio.gather(*(asyncio.shield(f) for f in waiting.values()), return_exceptions=True)
        for key, outcome in zip(waiting, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is not None:
                found[key] = outcome
        return found

    async def _settle(
        self, slot: tuple[str, str, int], read: asyncio.Future[dict[str, dict[str, Any]]]
    ) -> dict[str, Any] | None:
        collection, key, generation = slot
        try:
            doc = (await asyncio.shield(read)).get(key)
            if doc is not None:
                self.put(collection, key, doc, generation)
            return doc
        finally:
            del self._loading[slot]

    def forget(self, changes: Iterable[tuple[str, str]]) -> None:
        """Drop the documents that ``changes`` (as listeners hear them) name."""
        self.generation += 1
        for kind, key in changes:
            collection = _COLLECTION_OF.get(kind)
            if collection is not None:
                self._docs.pop((collection, key), None)
            if kind == "membership":
                self._docs.pop((TEAMS, key.partition("/")[0]), None)


class RegistryView:
    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        *,
        cache: ReadModelCache | None = None,
        team_members: bool = True,
    ) -> None:
        self._db = db
        self._listeners: list[ChangeListener] = []
        self.cache = cache  # forgotten per applied batch; the queries below do not use it
        # Whether team documents keep their ``members`` (for :meth:`active_members` and
        # :meth:`team_has_skill`): one more write per team a batch of memberships touches, which a
        # service that reads memberships only by ``_id`` need not pay.
        self._team_members = team_members

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def _changed(self, changes: Sequence[tuple[str, str]]) -> None:
        if changes:
            for listener in self._listeners:
                await listener(changes)

    # --- queries -----------------------------------------------------------------------------------

    async def unit_path(self, code: str) -> list[str] | None:
        doc = await self._db[UNITS].find_one({"_id": code}, {"path": 1})
        return list(doc["path"]) if doc else None

    async def resolve_unit(self, code: str) -> ResolvedUnit:
        """The unit that now takes ``code``'s records and, if that is another unit, ``code``.

        See :func:`follow_successors`: never raises, the caller decides what an unknown, closed or
        unresolvable unit means for its record.
        """

        return await follow_successors(code, self._unit_document)

    async def known_unit(self, code: str) -> KnownUnit | None:
        """See :func:`known_unit`."""
        return await known_unit(code, self._unit_document)

    async def _unit_document(self, key: str) -> dict[str, Any] | None:
        return await self._db[UNITS].find_one({"_id": key})

    async def merged_into(self, unit: str) -> list[str]:
        """See :func:`merged_into`."""
        return await merged_into(self._db, unit)

    async def team(self, code: str) -> dict[str, Any] | None:
        """``{"code", "kind", "unit_code", "unit_path", "active"}`` or None if never seen."""
        doc = await self._db[TEAMS].find_one({"_id": code})
        # A membership event can arrive before its team's event (different keys, so no ordering
        # between them); such a stub only holds members and does not make the team known.
        if doc is None or "kind" not in doc:
            return None
        doc["code"] = doc.pop("_id")
        for bookkeeping in ("partition", "offset", MEMBER_OFFSETS):
            doc.pop(bookkeeping, None)
        return doc

    async def active_members(self, team_code: str, volunteer_ids: Sequence[str]) -> set[str]:
        """Those of ``volunteer_ids`` who are current members of the team and have not left."""
        team = await self._db[TEAMS].find_one({"_id": team_code}, {"members": 1})
        current = set(team.get("members", [])) if team else set()
        return set(await self._active_volunteers(set(volunteer_ids) & current))

    async def team_has_skill(self, team_code: str, skill: str) -> bool:
        """True if any current member of the team (who has not left) has ``skill``."""
        team = await self._db[TEAMS].find_one({"_id": team_code}, {"members": 1})
        members = await self._active_volunteers(team.get("members", []) if team else [])
        return any(skill in doc.get("skills", []) for doc in members.values())

    async def teams_with_members(self, team_codes: Iterable[str], volunteer_ids: AbstractSet[str]) -> set[str]:
        """Those of ``team_codes`` that count any of ``volunteer_ids`` among their members."""
        teams = await find_by_ids(self._db[TEAMS], team_codes, {"members": 1})
        return {code for code, doc in teams.items() if not volunteer_ids.isdisjoint(doc.get("members", ()))}

    async def _active_volunteers(self, volunteer_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        found = await find_by_ids(self._db[VOLUNTEERS], volunteer_ids, {"active": 1, "skills": 1})
        return {vid: doc for vid, doc in found.items() if doc.get("active")}

    # --- event handling ----------------------------------------------------------------------------

    async def apply(self, events: Sequence[Consumed]) -> None:
        """A :class:`shared.consumer.BatchHandler`: at most one write per document the batch touches.

        Every event sets the full current state of its part of a document (a unit's merge, split or
        close sets only how it ended, which its later updates leave alone), and a batch holds one
        partition's events in offset order, so folding it and writing each document's final fields
        once equals applying the events one by one. Each document records the offset of the event
        that set it and a write applies only over an older one: a redelivered batch, or a replica
        still finishing a batch of partitions it has lost, never puts back an older state. Team
        member lists change by atomic ``$addToSet``/``$pullAll`` guarded the same way, because
        memberships of one team come from many partitions, so from several replicas at once.
        Listeners hear once per key, after the writes.
        """
        sets: dict[tuple[str, str], _Write] = {}
        moves: dict[tuple[str, bool], dict[str, int]] = {}  # (team, started) -> {volunteer: offset}
        changed: dict[tuple[str, str], None] = {}
        for c in events:
            fold = _FOLDS.get(c.envelope.type)
            if fold is None:
                continue  # producers may add types this view does not use
            payload = c.envelope.payload()
            for collection, key, fields in fold(payload):
                write = sets.setdefault((collection, key), _Write())
                write.fields.update(fields)
                write.partition, write.offset = c.partition, c.offset
            if self._team_members and isinstance(payload, ev.MembershipStarted | ev.MembershipEnded):
                started = isinstance(payload, ev.MembershipStarted)
                moves.get((payload.team_code, not started), {}).pop(payload.volunteer_id, None)
                moves.setdefault((payload.team_code, started), {})[payload.volunteer_id] = c.offset
            changed[_change_of(payload)] = None
        try:
            # Members first: if the process dies before the membership document is written, the
            # redelivery finds that document older and writes it; the member change is then a no-op.
            teams: dict[str, list[tuple[bool, dict[str, int]]]] = {}
            for (team_code, started), offsets in moves.items():
                teams.setdefault(team_code, []).append((started, offsets))
            await run_in_chunks([partial(self._move_members, code, team_moves) for code, team_moves in teams.items()])
            by_collection: dict[str, dict[str, _Write]] = {}
            for (col, key), write in sets.items():
                by_collection.setdefault(col, {})[key] = write
            for col, writes in by_collection.items():
                await self._set_all_if_newer(col, writes)
        finally:
            if self.cache is not None:
                self.cache.forget(changed)  # also after a failed write: some documents may have changed
        await self._changed(list(changed))

    async def _set_all_if_newer(self, collection: str, writes: Mapping[str, _Write]) -> None:
        """Write each document's folded fields unless it already holds a later event: new documents
        by one unordered insert, existing ones by conditional updates, many to a command.

        A document the insert created holds this batch already and is not updated; one that existed
        (``_id`` taken) is updated only over an older offset. Not ``$lt``: a document without an
        offset (a team stub, or one written before offsets were kept) must match too. Before, each
        document was its own upsert round trip: a roster of 31,000 volunteers kept the read models of
        visits and training 15 minutes behind in the 10x campaign.
        """
        col = self._db[collection]
        fields = {key: {**w.fields, "partition": w.partition, "offset": w.offset} for key, w in writes.items()}
        existed = await insert_missing(col, [{"_id": key, **f} for key, f in fields.items()])
        updates = [
            UpdateOne({"_id": key, "offset": {"$not": {"$gte": writes[key].offset}}}, {"$set": f})
            for key, f in fields.items()
            if key in existed  # an inserted document holds this batch already
        ]
        commands = [updates[i : i + UPDATES_PER_COMMAND] for i in range(0, len(updates), UPDATES_PER_COMMAND)]
        await run_in_chunks([partial(col.bulk_write, command, ordered=False) for command in commands])

    async def _move_members(self, team_code: str, team_moves: list[tuple[bool, dict[str, int]]]) -> None:
        """Add (``started``) or remove the volunteers of ``team_moves`` from the team's ``members``.

        The team document keeps its current member ids so that checks are primary-key lookups:
        FerretDB v1 only pushes an ``_id`` filter down to SQLite; anything else scans. Next to them
        it keeps, per volunteer, the offset of the membership event that last changed the list, and
        a change applies in the same atomic update as its check: reading the membership document
        first would leave a window in which a newer replica ends the membership and a stale one then
        adds the member back.
        """
        col = self._db[TEAMS]
        for started, offsets in team_moves:
            pending = dict(offsets)
            if not pending:
                continue  # every volunteer's last event in the batch was the opposite move
            for _ in range(_ATTEMPTS):
                flt: dict[str, Any] = {"_id": team_code}
                flt |= {f"{MEMBER_OFFSETS}.{_field(v)}": {"$not": {"$gte": o}} for v, o in pending.items()}
                ids = list(pending)
                change: dict[str, Any] = (
                    {"$addToSet": {"members": {"$each": ids}}} if started else {"$pullAll": {"members": ids}}
                )
                change["$set"] = {f"{MEMBER_OFFSETS}.{_field(v)}": o for v, o in pending.items()}
                try:
                    await col.update_one(flt, change, upsert=True)
                    break
                except DuplicateKeyError:
                    # Some volunteer's change is already applied (a redelivery), or another writer
                    # created the team document meanwhile: retry with only what is still older.
                    doc = await col.find_one({"_id": team_code}, {MEMBER_OFFSETS: 1})
                    seen = (doc or {}).get(MEMBER_OFFSETS) or {}
                    pending = {v: o for v, o in pending.items() if not _applied(seen.get(_field(v)), o)}
                    if not pending:
                        break
            else:
                raise RuntimeError(f"team {team_code}: member change kept colliding")


class ResolvedUnit(NamedTuple):
    """``(unit, resolved_from)`` as :func:`follow_successors` answers."""

    unit: dict[str, Any] | None
    resolved_from: str | None


def unit_document(doc: dict[str, Any]) -> dict[str, Any]:
    """A read-model unit document as queries answer it: ``code`` instead of ``_id``, no bookkeeping.

    A copy: the given document may be shared (:class:`ReadModelCache`).
    """
    out = {k: v for k, v in doc.items() if k not in ("_id", "partition", "offset")}
    out["code"] = doc["_id"]
    return out


async def follow_successors(code: str, find: Callable[[str], Awaitable[dict[str, Any] | None]]) -> ResolvedUnit:
    """Follow ``successor_code`` from ``code`` to the unit that now takes its records.

    ``find`` reads a raw unit document by code (from the database or a cache). The answer is
    ``(unit, resolved_from)``: ``unit`` as :func:`unit_document` gives it, ``resolved_from`` the
    asked ``code`` when ``unit`` is another unit (``code`` was merged into it), else None.
    Never raises:
    - ``(None, None)``: ``code`` is not known (the read model has not seen it yet);
    - a ``unit`` whose ``status`` is still "merged": its successor is not known yet (another key,
      so possibly applied later), or the chain is longer than :data:`MAX_MERGE_HOPS` or loops;
    - a ``unit`` whose ``status`` is "closed" (closed or split): it takes no new records.
    """
    doc = await find(code)
    if doc is None or "path" not in doc:
        # A unit is known once its path is; a document holding only how the unit ended is not enough.
        return ResolvedUnit(None, None)
    seen = {code}
    while doc.get("status") == MERGED and len(seen) <= MAX_MERGE_HOPS:
        successor_code = doc.get("successor_code")
        if not successor_code or successor_code in seen:
            break
        successor = await find(successor_code)
        if successor is None or "path" not in successor:
            break
        seen.add(successor_code)
        doc = successor
    unit = unit_document(doc)
    return ResolvedUnit(unit, code if unit["code"] != code else None)


class KnownUnit(BaseModel):
    """A unit as this service knows it from the registry's events (``GET /v1/units/{code}``)."""

    code: str = Field(description="The code asked for.")
    takes_records_as: str | None = Field(
        description="The unit a record naming ``code`` is stored for now: the code itself, its successor "
        "after a merge, or null when the unit is closed or its successor is not known here yet."
    )
    status: Literal["active", "merged", "closed"]
    path: list[str] = Field(description="The path of ``takes_records_as`` (or of ``code``), root first.")
    closed_because: str | None = None


async def known_unit(code: str, find: Callable[[str], Awaitable[dict[str, Any] | None]]) -> KnownUnit | None:
    """How a record naming ``code`` would be judged here, or None if the unit is not known here yet."""
    resolved = await follow_successors(code, find)
    if resolved.unit is None:
        return None
    unit = resolved.unit
    closed = why_closed(unit)
    status: Literal["active", "merged", "closed"] = "active"
    if closed:
        status = "closed"
    elif resolved.resolved_from or unit.get("status") == MERGED:
        status = "merged"
    takes = None if closed or unit.get("status") == MERGED else str(unit["code"])
    return KnownUnit(
        code=code, takes_records_as=takes, status=status, path=list(unit.get("path", [])), closed_because=closed
    )


def why_closed(unit: dict[str, Any]) -> str | None:
    """Why ``unit`` (as :func:`follow_successors` answers it) takes no new records; None if it does."""
    if unit.get("status") != CLOSED:
        return None
    on = f" on {unit['closed_on']}" if unit.get("closed_on") else ""
    if unit.get("successors"):
        return f"unit {unit['code']} was split{on} into {', '.join(unit['successors'])}; record for one of those"
    reason = unit.get("close_reason")
    return f"unit {unit['code']} was closed{on}" + (f": {reason}" if reason else "") + "; it takes no new records"


@dataclass
class _Write:
    """A document's fields folded from a batch and the position of the last event that set them."""

    fields: dict[str, Any] = field(default_factory=dict)
    partition: int = 0
    offset: int = -1


# A conditional write that fails because its document appeared meanwhile is tried again; only a
# concurrent creation of the same document can make it fail, so a few tries always suffice.
_ATTEMPTS = 4


def _applied(stored: Any, offset: int) -> bool:
    """True if a document that records ``stored`` already holds the event at ``offset``."""
    return isinstance(stored, int) and stored >= offset


def _field(volunteer_id: str) -> str:
    """``volunteer_id`` as a field name: FerretDB rejects names with "." or a leading "$"."""
    return volunteer_id.replace("%", "%25").replace(".", "%2E").replace("$", "%24")


Fold = Callable[[Any], list[tuple[str, str, dict[str, Any]]]]


def _unit(e: ev.UnitCreated | ev.UnitUpdated) -> list[tuple[str, str, dict[str, Any]]]:
    fields = {"name": e.name, "kind": e.kind.value, "parent_code": e.parent_code, "path": list(e.path)}
    return [(UNITS, e.code, fields)]


def _unit_merged(e: ev.UnitMerged) -> list[tuple[str, str, dict[str, Any]]]:
    # Only the fields of how the unit ended: a later UnitUpdated ($set of its own fields) keeps them.
    fields = {
        "status": MERGED,
        "successor_code": e.successor_code,
        "successor_path": list(e.successor_path),
        "successors": [],
        "closed_on": e.merged_on.isoformat(),
        "close_reason": None,
    }
    return [(UNITS, e.code, fields)]


def _unit_split(e: ev.UnitSplit) -> list[tuple[str, str, dict[str, Any]]]:
    fields = {
        "status": CLOSED,
        "successor_code": None,
        "successors": list(e.successors),
        "closed_on": e.split_on.isoformat(),
        "close_reason": None,
    }
    return [(UNITS, e.code, fields)]


def _unit_closed(e: ev.UnitClosed) -> list[tuple[str, str, dict[str, Any]]]:
    fields = {
        "status": CLOSED,
        "path": list(e.path),
        "successor_code": None,
        "successors": [],
        "closed_on": e.closed_on.isoformat(),
        "close_reason": e.reason,
    }
    return [(UNITS, e.code, fields)]


def _team(e: ev.TeamCreated | ev.TeamUpdated | ev.TeamDeactivated) -> list[tuple[str, str, dict[str, Any]]]:
    active = e.active if isinstance(e, ev.TeamUpdated) else isinstance(e, ev.TeamCreated)
    fields = {"kind": e.kind.value, "unit_code": e.unit_code, "unit_path": list(e.unit_path), "active": active}
    return [(TEAMS, e.code, fields)]


def _volunteer(
    e: ev.VolunteerRegistered
    | ev.VolunteerUpdated
    | ev.VolunteerRegisteredV2
    | ev.VolunteerUpdatedV2
    | ev.VolunteerLeft,
) -> list[tuple[str, str, dict[str, Any]]]:
    fields: dict[str, Any] = {"unit_code": e.unit_code, "unit_path": list(e.unit_path)}
    if isinstance(e, ev.VolunteerLeft):
        fields["active"] = False
    else:
        fields["skills"] = [s.value for s in e.skills]
        fields["active"] = e.active if isinstance(e, ev.VolunteerUpdated | ev.VolunteerUpdatedV2) else True
    return [(VOLUNTEERS, e.volunteer_id, fields)]


def _membership(e: ev.MembershipStarted | ev.MembershipEnded) -> list[tuple[str, str, dict[str, Any]]]:
    fields = {"team_code": e.team_code, "volunteer_id": e.volunteer_id, "active": isinstance(e, ev.MembershipStarted)}
    return [(MEMBERSHIPS, f"{e.team_code}/{e.volunteer_id}", fields)]


def _change_of(payload: Any) -> tuple[str, str]:
    """The ``(kind, key)`` a listener hears for an event."""
    if isinstance(payload, ev.UnitCreated | ev.UnitUpdated | ev.UnitMerged | ev.UnitSplit | ev.UnitClosed):
        return ("unit", payload.code)
    if isinstance(payload, ev.TeamCreated | ev.TeamUpdated | ev.TeamDeactivated):
        return ("team", payload.code)
    if isinstance(payload, ev.MembershipStarted | ev.MembershipEnded):
        return ("membership", f"{payload.team_code}/{payload.volunteer_id}")
    return ("volunteer", payload.volunteer_id)


_FOLDS: dict[str, Fold] = {
    ev.UNIT_CREATED: _unit,
    ev.UNIT_UPDATED: _unit,
    ev.UNIT_MERGED: _unit_merged,
    ev.UNIT_SPLIT: _unit_split,
    ev.UNIT_CLOSED: _unit_closed,
    ev.TEAM_CREATED: _team,
    ev.TEAM_UPDATED: _team,
    ev.TEAM_DEACTIVATED: _team,
    ev.VOLUNTEER_REGISTERED: _volunteer,
    ev.VOLUNTEER_UPDATED: _volunteer,
    ev.VOLUNTEER_REGISTERED_V2: _volunteer,
    ev.VOLUNTEER_UPDATED_V2: _volunteer,
    ev.VOLUNTEER_LEFT: _volunteer,
    ev.MEMBERSHIP_STARTED: _membership,
    ev.MEMBERSHIP_ENDED: _membership,
}


# A chain of merges longer than this is bad data; reading stops rather than loops.
MAX_MERGED = 10_000


async def merged_into(db: AsyncDatabase[dict[str, Any]], unit: str) -> list[str]:
    """Units merged into ``unit`` or a unit below it (and those merged into them), whose records
    keep their old paths: a manager of the successor reads them."""
    found: list[str] = []
    todo = [unit]
    while todo and len(found) < MAX_MERGED:
        batch = db[UNITS].find({"status": MERGED, "successor_path": {"$in": todo}}, {"_id": 1})
        todo = [d["_id"] async for d in batch if d["_id"] not in found]
        found += todo
    return found
