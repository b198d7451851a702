"""A local read model of the registry, built from ``registry.events.v1``.

Visits and training validate references (unit, team, membership, skills) against this model in
their own database, so they keep working when the registry service is down and never call it.
Every event sets the full current state of its key, so replays and redeliveries are harmless.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from shared.consumer import Consumed
from shared.contracts import registry as ev

UNITS = "rm_units"
TEAMS = "rm_teams"
VOLUNTEERS = "rm_volunteers"
MEMBERSHIPS = "rm_memberships"

INDEXES: dict[str, list[IndexModel]] = {
    MEMBERSHIPS: [IndexModel("team_code"), IndexModel("volunteer_id")],
    TEAMS: [IndexModel("unit_code")],
}

# Called once per applied batch with the changed ("unit"|"team"|"volunteer"|"membership", key) pairs,
# so a service can re-check the records it had to hold as pending: one look per batch, not per key,
# because a roster upload changes thousands of keys at once.
ChangeListener = Callable[[Sequence[tuple[str, str]]], Awaitable[None]]

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
        self, ttl_seconds: float = 5.0, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._docs: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._loading: dict[tuple[str, str, int], asyncio.Future[dict[str, Any] | None]] = {}
        self.generation = 0  # bumped by every forget

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
        if len(self._docs) >= self._max:
            self._docs.clear()
        self._docs[(collection, key)] = (self._clock() + self._ttl, doc)

    async def load(
        self, collection: str, key: str, find: Callable[[], Awaitable[dict[str, Any] | None]]
    ) -> dict[str, Any] | None:
        """The cached document, or what ``find`` reads (kept if it exists); None if there is none."""
        doc = self.get(collection, key)
        if doc is not None:
            return doc
        # Only a read that started after the latest forget may answer: one from before could miss
        # the change a listener is re-checking pending records for.
        slot = (collection, key, self.generation)
        loading = self._loading.get(slot)
        if loading is None:
            loading = self._loading[slot] = asyncio.ensure_future(self._read(slot, find))
        return await asyncio.shield(loading)

    async def _read(
        self, slot: tuple[str, str, int], find: Callable[[], Awaitable[dict[str, Any] | None]]
    ) -> dict[str, Any] | None:
        collection, key, generation = slot
        try:
            doc = await find()
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
        reads: AsyncDatabase[dict[str, Any]] | None = None,
        *,
        cache: ReadModelCache | None = None,
    ) -> None:
        self._db = db
        self._reads = reads if reads is not None else db  # the queries below; writes stay on ``db``
        self._listeners: list[ChangeListener] = []
        self.cache = cache  # forgotten per applied batch; the queries below do not use it

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def _changed(self, changes: Sequence[tuple[str, str]]) -> None:
        if changes:
            for listener in self._listeners:
                await listener(changes)

    # --- queries -----------------------------------------------------------------------------------

    async def unit_path(self, code: str) -> list[str] | None:
        doc = await self._reads[UNITS].find_one({"_id": code}, {"path": 1})
        return list(doc["path"]) if doc else None

    async def team(self, code: str) -> dict[str, Any] | None:
        """``{"code", "kind", "unit_code", "unit_path", "active"}`` or None if never seen."""
        doc = await self._reads[TEAMS].find_one({"_id": code})
        # A membership event can arrive before its team's event (different keys, so no ordering
        # between them); such a stub only holds members and does not make the team known.
        if doc is None or "kind" not in doc:
            return None
        doc["code"] = doc.pop("_id")
        return doc

    async def active_members(self, team_code: str, volunteer_ids: Sequence[str]) -> set[str]:
        """Those of ``volunteer_ids`` who are current members of the team and have not left."""
        team = await self._reads[TEAMS].find_one({"_id": team_code}, {"members": 1})
        current = set(team.get("members", [])) if team else set()
        return {v for v in set(volunteer_ids) & current if await self._volunteer_active(v)}

    async def team_has_skill(self, team_code: str, skill: str) -> bool:
        """True if any current member of the team (who has not left) has ``skill``."""
        team = await self._reads[TEAMS].find_one({"_id": team_code}, {"members": 1})
        for volunteer_id in team.get("members", []) if team else []:
            doc = await self._reads[VOLUNTEERS].find_one({"_id": volunteer_id})
            if doc and doc.get("active") and skill in doc.get("skills", []):
                return True
        return False

    async def _volunteer_active(self, volunteer_id: str) -> bool:
        doc = await self._reads[VOLUNTEERS].find_one({"_id": volunteer_id}, {"active": 1})
        return bool(doc and doc.get("active"))

    # --- event handling ----------------------------------------------------------------------------

    async def apply(self, events: Sequence[Consumed]) -> None:
        """A :class:`shared.consumer.BatchHandler`: one write per document the batch touches.

        Every event sets the full current state of its document, so folding a batch in order and
        writing each document's final fields once equals applying the events one by one, and a
        redelivered batch rewrites the same values. Listeners hear once per changed key, after the
        writes. This matters on FerretDB, where each write costs a document read and rewrite: a
        roster import of thousands of memberships becomes one write per team.
        """
        sets: dict[tuple[str, str], dict[str, Any]] = {}
        moves: dict[str, list[tuple[str, bool]]] = {}
        changed: dict[tuple[str, str], None] = {}
        for c in events:
            fold = _FOLDS.get(c.envelope.type)
            if fold is None:
                continue  # producers may add types this view does not use
            payload = c.envelope.payload()
            for collection, key, fields in fold(payload):
                sets.setdefault((collection, key), {}).update(fields)
            if isinstance(payload, ev.MembershipStarted | ev.MembershipEnded):
                started = isinstance(payload, ev.MembershipStarted)
                moves.setdefault(payload.team_code, []).append((payload.volunteer_id, started))
            changed[_change_of(payload)] = None
        try:
            for team_code, team_moves in moves.items():
                # The team document keeps its current member ids so that checks are primary-key lookups:
                # FerretDB v1 only pushes an exact {"_id": ...} filter down to SQLite; anything else scans.
                team = await self._db[TEAMS].find_one({"_id": team_code}, {"members": 1})
                members = list(team.get("members", [])) if team else []
                for volunteer_id, started in team_moves:
                    if started and volunteer_id not in members:
                        members.append(volunteer_id)
                    elif not started and volunteer_id in members:
                        members.remove(volunteer_id)
                sets.setdefault((TEAMS, team_code), {})["members"] = members
            for (collection, key), fields in sets.items():
                await self._db[collection].update_one({"_id": key}, {"$set": fields}, upsert=True)
        finally:
            if self.cache is not None:
                self.cache.forget(changed)  # also after a failed write: some documents may have changed
        await self._changed(list(changed))


Fold = Callable[[Any], list[tuple[str, str, dict[str, Any]]]]


def _unit(e: ev.UnitCreated | ev.UnitUpdated) -> list[tuple[str, str, dict[str, Any]]]:
    fields = {"name": e.name, "kind": e.kind.value, "parent_code": e.parent_code, "path": list(e.path)}
    return [(UNITS, e.code, fields)]


def _team(e: ev.TeamCreated | ev.TeamUpdated | ev.TeamDeactivated) -> list[tuple[str, str, dict[str, Any]]]:
    active = e.active if isinstance(e, ev.TeamUpdated) else isinstance(e, ev.TeamCreated)
    fields = {"kind": e.kind.value, "unit_code": e.unit_code, "unit_path": list(e.unit_path), "active": active}
    return [(TEAMS, e.code, fields)]


def _volunteer(
    e: ev.VolunteerRegistered | ev.VolunteerUpdated | ev.VolunteerLeft,
) -> list[tuple[str, str, dict[str, Any]]]:
    fields: dict[str, Any] = {"unit_code": e.unit_code, "unit_path": list(e.unit_path)}
    if isinstance(e, ev.VolunteerLeft):
        fields["active"] = False
    else:
        fields["skills"] = [s.value for s in e.skills]
        fields["active"] = e.active if isinstance(e, ev.VolunteerUpdated) else True
    return [(VOLUNTEERS, e.volunteer_id, fields)]


def _membership(e: ev.MembershipStarted | ev.MembershipEnded) -> list[tuple[str, str, dict[str, Any]]]:
    fields = {"team_code": e.team_code, "volunteer_id": e.volunteer_id, "active": isinstance(e, ev.MembershipStarted)}
    return [(MEMBERSHIPS, f"{e.team_code}/{e.volunteer_id}", fields)]


def _change_of(payload: Any) -> tuple[str, str]:
    """The ``(kind, key)`` a listener hears for an event."""
    if isinstance(payload, ev.UnitCreated | ev.UnitUpdated):
        return ("unit", payload.code)
    if isinstance(payload, ev.TeamCreated | ev.TeamUpdated | ev.TeamDeactivated):
        return ("team", payload.code)
    if isinstance(payload, ev.MembershipStarted | ev.MembershipEnded):
        return ("membership", f"{payload.team_code}/{payload.volunteer_id}")
    return ("volunteer", payload.volunteer_id)


_FOLDS: dict[str, Fold] = {
    ev.UNIT_CREATED: _unit,
    ev.UNIT_UPDATED: _unit,
    ev.TEAM_CREATED: _team,
    ev.TEAM_UPDATED: _team,
    ev.TEAM_DEACTIVATED: _team,
    ev.VOLUNTEER_REGISTERED: _volunteer,
    ev.VOLUNTEER_UPDATED: _volunteer,
    ev.VOLUNTEER_LEFT: _volunteer,
    ev.MEMBERSHIP_STARTED: _membership,
    ev.MEMBERSHIP_ENDED: _membership,
}
