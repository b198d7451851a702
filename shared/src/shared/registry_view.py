"""A local read model of the registry, built from ``registry.events.v1``.

Visits and training validate references (unit, team, membership, skills) against this model in
their own database, so they keep working when the registry service is down and never call it.
Every handler writes the full current state by key, so replays and redeliveries are harmless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from shared.consumer import EventHandler
from shared.contracts import registry as ev
from shared.envelope import Envelope

UNITS = "rm_units"
TEAMS = "rm_teams"
VOLUNTEERS = "rm_volunteers"
MEMBERSHIPS = "rm_memberships"

INDEXES: dict[str, list[IndexModel]] = {
    MEMBERSHIPS: [IndexModel("team_code"), IndexModel("volunteer_id")],
    TEAMS: [IndexModel("unit_code")],
}

# Called with ("unit"|"team"|"volunteer"|"membership", key) after a registry change is applied, so a
# service can re-check records it had to hold as pending.
ChangeListener = Callable[[str, str], Awaitable[None]]


class RegistryView:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._db = db
        self._listeners: list[ChangeListener] = []

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def _changed(self, kind: str, key: str) -> None:
        for listener in self._listeners:
            await listener(kind, key)

    # --- queries -----------------------------------------------------------------------------------

    async def unit_path(self, code: str) -> list[str] | None:
        doc = await self._db[UNITS].find_one({"_id": code}, {"path": 1})
        return list(doc["path"]) if doc else None

    async def team(self, code: str) -> dict[str, Any] | None:
        """``{"code", "kind", "unit_code", "unit_path", "active"}`` or None if never seen."""
        doc = await self._db[TEAMS].find_one({"_id": code})
        # A membership event can arrive before its team's event (different keys, so no ordering
        # between them); such a stub only holds members and does not make the team known.
        if doc is None or "kind" not in doc:
            return None
        doc["code"] = doc.pop("_id")
        return doc

    async def active_members(self, team_code: str, volunteer_ids: Sequence[str]) -> set[str]:
        """Those of ``volunteer_ids`` who are current members of the team and have not left."""
        team = await self._db[TEAMS].find_one({"_id": team_code}, {"members": 1})
        current = set(team.get("members", [])) if team else set()
        return {v for v in set(volunteer_ids) & current if await self._volunteer_active(v)}

    async def team_has_skill(self, team_code: str, skill: str) -> bool:
        """True if any current member of the team (who has not left) has ``skill``."""
        team = await self._db[TEAMS].find_one({"_id": team_code}, {"members": 1})
        for volunteer_id in team.get("members", []) if team else []:
            doc = await self._db[VOLUNTEERS].find_one({"_id": volunteer_id})
            if doc and doc.get("active") and skill in doc.get("skills", []):
                return True
        return False

    async def _volunteer_active(self, volunteer_id: str) -> bool:
        doc = await self._db[VOLUNTEERS].find_one({"_id": volunteer_id}, {"active": 1})
        return bool(doc and doc.get("active"))

    # --- event handlers ----------------------------------------------------------------------------

    async def _unit(self, e: ev.UnitCreated | ev.UnitUpdated, _: Envelope) -> None:
        await self._db[UNITS].update_one(
            {"_id": e.code},
            {"$set": {"name": e.name, "kind": e.kind.value, "parent_code": e.parent_code, "path": list(e.path)}},
            upsert=True,
        )
        await self._changed("unit", e.code)

    async def _team(self, e: ev.TeamCreated | ev.TeamUpdated, _: Envelope) -> None:
        active = e.active if isinstance(e, ev.TeamUpdated) else True
        await self._db[TEAMS].update_one(
            {"_id": e.code},
            {
                "$set": {
                    "kind": e.kind.value,
                    "unit_code": e.unit_code,
                    "unit_path": list(e.unit_path),
                    "active": active,
                }
            },
            upsert=True,
        )
        await self._changed("team", e.code)

    async def _team_deactivated(self, e: ev.TeamDeactivated, _: Envelope) -> None:
        await self._db[TEAMS].update_one(
            {"_id": e.code},
            {"$set": {"kind": e.kind.value, "unit_code": e.unit_code, "unit_path": list(e.unit_path), "active": False}},
            upsert=True,
        )
        await self._changed("team", e.code)

    async def _volunteer(self, e: ev.VolunteerRegistered | ev.VolunteerUpdated, _: Envelope) -> None:
        active = e.active if isinstance(e, ev.VolunteerUpdated) else True
        await self._db[VOLUNTEERS].update_one(
            {"_id": e.volunteer_id},
            {
                "$set": {
                    "unit_code": e.unit_code,
                    "unit_path": list(e.unit_path),
                    "skills": [s.value for s in e.skills],
                    "active": active,
                }
            },
            upsert=True,
        )
        await self._changed("volunteer", e.volunteer_id)

    async def _volunteer_left(self, e: ev.VolunteerLeft, _: Envelope) -> None:
        await self._db[VOLUNTEERS].update_one(
            {"_id": e.volunteer_id},
            {"$set": {"unit_code": e.unit_code, "unit_path": list(e.unit_path), "active": False}},
            upsert=True,
        )
        await self._changed("volunteer", e.volunteer_id)

    async def _membership(self, e: ev.MembershipStarted | ev.MembershipEnded, _: Envelope) -> None:
        key = f"{e.team_code}/{e.volunteer_id}"
        started = isinstance(e, ev.MembershipStarted)
        await self._db[MEMBERSHIPS].update_one(
            {"_id": key},
            {"$set": {"team_code": e.team_code, "volunteer_id": e.volunteer_id, "active": started}},
            upsert=True,
        )
        # The team document keeps its current member ids so that checks are primary-key lookups:
        # FerretDB v1 only pushes an exact {"_id": ...} filter down to SQLite; anything else scans.
        team = await self._db[TEAMS].find_one({"_id": e.team_code}, {"members": 1})
        members = list(team.get("members", [])) if team else []
        if started and e.volunteer_id not in members:
            members.append(e.volunteer_id)
        elif not started and e.volunteer_id in members:
            members.remove(e.volunteer_id)
        await self._db[TEAMS].update_one({"_id": e.team_code}, {"$set": {"members": members}}, upsert=True)
        await self._changed("membership", key)

    def handlers(self) -> dict[str, EventHandler]:
        """Event type → handler, for a :class:`shared.consumer.TypeDispatch`."""
        return {
            ev.UNIT_CREATED: self._unit,
            ev.UNIT_UPDATED: self._unit,
            ev.TEAM_CREATED: self._team,
            ev.TEAM_UPDATED: self._team,
            ev.TEAM_DEACTIVATED: self._team_deactivated,
            ev.VOLUNTEER_REGISTERED: self._volunteer,
            ev.VOLUNTEER_UPDATED: self._volunteer,
            ev.VOLUNTEER_LEFT: self._volunteer_left,
            ev.MEMBERSHIP_STARTED: self._membership,
            ev.MEMBERSHIP_ENDED: self._membership,
        }
