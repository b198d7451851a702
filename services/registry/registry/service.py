"""Registry domain rules: the unit tree, teams, volunteers, memberships and campaigns.

Every change is one single-document write that embeds the event describing it (outbox). Volunteers'
names and contact details stay in this service: events carry only ids, units, roles, skills and
birth years.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from registry.repository import (
    CAMPAIGNS,
    JOINED_MEMBERS,
    JOINED_TEAMS,
    MEMBERSHIPS,
    TEAMS,
    UNITS,
    VOLUNTEERS,
    Repository,
)
from registry.schemas import (
    MASK,
    CampaignIn,
    CampaignOut,
    CloseIn,
    MemberIn,
    MembershipOut,
    MergeIn,
    MergeOut,
    Period,
    RosterItemIn,
    RosterItemOut,
    SplitIn,
    SplitOut,
    TargetIn,
    TargetOut,
    TeamIn,
    TeamOut,
    TeamPatch,
    UnitIn,
    UnitOut,
    UnitPatch,
    UnitStatus,
    VolunteerIn,
    VolunteerOut,
    VolunteerPatch,
    local_today,
)
from shared.audit import audit_entry, audit_fields, changes
from shared.auth import Principal, Role, require_role, require_scope
from shared.batch import BatchStatus
from shared.contracts import registry as ev
from shared.contracts.common import AgeBand, TeamKind, UnitKind
from shared.envelope import Envelope, make_event
from shared.errors import Conflict, InvalidInput, NotFound, ProblemError, validation_problem
from shared.mongo import Document
from shared.pagination import Page

SOURCE = "/registry"
WRITERS = (Role.admin, Role.manager)


def _event(event_type: str, payload: BaseModel, key: str) -> Envelope:
    return make_event(event_type, payload, source=SOURCE, key=key)


def authorize_write(principal: Principal, unit_path: Sequence[str], what: str) -> None:
    """Admins write anywhere; managers only inside their unit's subtree; other roles only read."""
    require_role(principal, *WRITERS)
    require_scope(principal, unit_path, what)


def sees_personal_data(principal: Principal, unit_path: Sequence[str]) -> bool:
    return principal.role is Role.admin or (principal.role is Role.manager and principal.in_scope(unit_path))


# What audit entries show of each aggregate (volunteers' contact details included: only admins and
# managers in scope read the audit log, the same people who see them in the API).
UNIT_AUDITED = ("name", "kind", "parent_code", "path")
TEAM_AUDITED = ("name", "kind", "unit_code", "unit_path", "base", "campaign_code", "active")
VOLUNTEER_AUDITED = ("full_name", "birth_year", "unit_code", "unit_path", "roles", "skills", "phone", "email", "active")


def _audit(
    principal: Principal,
    action: str,
    doc: Document,
    path: Sequence[str],
    *,
    before: Document | None = None,
    after: Document | None = None,
    reason: str | None = None,
    previous_path: Sequence[str] | None = None,
) -> Document:
    """The audit entry of one write to ``doc``; ``action`` is ``<entity>.<what happened>``."""
    entity = action.split(".", 1)[0]
    return audit_entry(
        principal,
        action,
        entity,
        doc["_id"],
        path,
        before=before,
        after=after,
        reason=reason,
        previous_unit_path=previous_path,
    )


def _audit_change(
    principal: Principal, action: str, old: Document, new: Document, fields: Sequence[str], path: Sequence[str]
) -> Document:
    before, after = changes(old, new, fields)
    previous = old["path"] if "path" in old else old.get("unit_path")  # units keep "path", the others "unit_path"
    return _audit(principal, action, old, path, before=before, after=after, previous_path=previous)


def _targets_changed(old: Sequence[Document], new: Sequence[Document]) -> tuple[Document, Document]:
    """The targets that differ, as they were and as they are (each side keyed by indicator and unit)."""

    def key(t: Document) -> tuple[str, str]:
        return t["indicator"], t["unit_code"]

    was = {key(t): ev.Target(**t) for t in old}
    now = {key(t): ev.Target(**t) for t in new}
    changed = [k for k in dict.fromkeys([*was, *now]) if was.get(k) != now.get(k)]
    return (
        {"targets": [was[k].model_dump(mode="json") for k in changed if k in was]},
        {"targets": [now[k].model_dump(mode="json") for k in changed if k in now]},
    )


# Compare-and-set attempts of one team's or volunteer's move before a reorganisation gives up (409).
MOVE_ATTEMPTS = 5


def _lost_race(what: str) -> Conflict:
    return Conflict(f"{what} was changed by another request at the same time; retry", slug="concurrent-change")


def _now() -> datetime:
    return datetime.now(UTC)


# --- document -> response ---------------------------------------------------------------------------


def unit_status(d: Document) -> UnitStatus:
    return UnitStatus(d.get("status", UnitStatus.active.value))  # units created before reorganisation have none


def unit_out(d: Document) -> UnitOut:
    closed_on = d.get("merged_on") or d.get("closed_on")
    return UnitOut(
        code=d["_id"],
        name=d["name"],
        kind=d["kind"],
        parent_code=d["parent_code"],
        path=d["path"],
        status=unit_status(d),
        successor_code=d.get("successor_code"),
        successors=d.get("successors", []),
        closed_on=date.fromisoformat(closed_on) if closed_on else None,
    )


def refuse_if_not_active(unit: Document) -> None:
    """A merged or closed unit takes no new records; the problem names where they go instead."""
    status = unit_status(unit)
    if status is UnitStatus.merged:
        successor = unit["successor_code"]
        raise Conflict(
            f"unit {unit['_id']} was merged into {successor} on {unit['merged_on']}; use {successor}",
            slug="unit-merged",
            unit_code=unit["_id"],
            successor_code=successor,
        )
    if status is UnitStatus.closed:
        successors = unit.get("successors", [])
        instead = f"; it was split into {', '.join(successors)}" if successors else ""
        raise Conflict(
            f"unit {unit['_id']} is closed since {unit['closed_on']}{instead}",
            slug="unit-closed",
            unit_code=unit["_id"],
            successors=successors,
        )


def team_out(d: Document) -> TeamOut:
    return TeamOut(
        code=d["_id"],
        name=d["name"],
        kind=d["kind"],
        unit_code=d["unit_code"],
        unit_path=d["unit_path"],
        base=d.get("base"),
        campaign_code=d.get("campaign_code"),
        active=d["active"],
    )


def volunteer_out(d: Document, principal: Principal) -> VolunteerOut:
    visible = sees_personal_data(principal, d["unit_path"])

    def mask(value: str | None) -> str | None:
        return value if visible or value is None else MASK

    return VolunteerOut(
        id=d["_id"],
        full_name=d["full_name"] if visible else MASK,
        birth_year=d["birth_year"],
        unit_code=d["unit_code"],
        unit_path=d["unit_path"],
        roles=d["roles"],
        skills=d["skills"],
        phone=mask(d.get("phone")),
        email=mask(d.get("email")),
        active=d["active"],
        left_on=date.fromisoformat(d["left_on"]) if d.get("left_on") else None,
        personal_data_masked=not visible,
    )


def _periods(d: Document) -> list[Period]:
    return [
        Period(since=date.fromisoformat(p["since"]), until=date.fromisoformat(p["until"]) if p["until"] else None)
        for p in d["periods"]
    ]


def membership_out(d: Document) -> MembershipOut:
    periods = _periods(d)
    return MembershipOut(
        team_code=d["team_code"],
        volunteer_id=d["volunteer_id"],
        active=d["active"],
        since=periods[-1].since,
        until=periods[-1].until,
        periods=periods,
    )


def _new_unit(code: str, name: str, kind: UnitKind, parent: Document | None) -> tuple[Document, Envelope]:
    parent_code = parent["_id"] if parent else None
    path = [*parent["path"], code] if parent else [code]
    doc: Document = {
        "_id": code,
        "name": name,
        "kind": kind.value,
        "parent_code": parent_code,
        "path": path,
        "status": UnitStatus.active.value,
        "created_at": _now(),
    }
    payload = ev.UnitCreated(code=code, name=name, kind=kind, parent_code=parent_code, path=path)
    return doc, _event(ev.UNIT_CREATED, payload, code)


def _same_unit(doc: Document, name: str, kind: UnitKind, parent_code: str | None) -> bool:
    return (doc["name"], doc["kind"], doc["parent_code"]) == (name, kind.value, parent_code)


def _merge_targets(targets: list[Document], merging: set[str], into: str) -> list[Document]:
    """Each indicator's targets on ``merging`` units added into one target on ``into``.

    ``merged_from`` keeps every unit whose target went in, including those an earlier merge had
    already added into a source's target.
    """
    kept = [{**t, "merged_from": list(t.get("merged_from", []))} for t in targets if t["unit_code"] not in merging]
    on_into = {t["indicator"]: t for t in kept if t["unit_code"] == into}
    for t in targets:
        if t["unit_code"] not in merging:
            continue
        target = on_into.get(t["indicator"])
        if target is None:
            target = {"indicator": t["indicator"], "unit_code": into, "value": 0, "merged_from": []}
            on_into[t["indicator"]] = target
            kept.append(target)
        target["value"] += t["value"]
        target["merged_from"] = list(dict.fromkeys([*target["merged_from"], *t.get("merged_from", []), t["unit_code"]]))
    return kept


def _targets_equal(a: Sequence[Document], b: Sequence[Document]) -> bool:
    return [ev.Target(**t) for t in a] == [ev.Target(**t) for t in b]


def campaign_out(d: Document) -> CampaignOut:
    return CampaignOut(
        code=d["_id"],
        name=d["name"],
        starts_on=date.fromisoformat(d["starts_on"]),
        ends_on=date.fromisoformat(d["ends_on"]),
        targets=[TargetOut(**t) for t in d["targets"]],
    )


ROSTER_NAMESPACE = uuid.UUID("6f1d0c52-9a57-4f43-8f0e-2d7c1e4b9a10")


def _new_volunteer(body: VolunteerIn, unit: Document, volunteer_id: str) -> tuple[Document, Envelope]:
    doc: Document = {
        "_id": volunteer_id,
        "full_name": body.full_name,
        "birth_year": body.birth_year,
        "unit_code": body.unit_code,
        "unit_path": unit["path"],
        "roles": [r.value for r in body.roles],
        "skills": [s.value for s in body.skills],
        "phone": body.phone,
        "email": body.email,
        "active": True,
        "left_on": None,
        # Every team the volunteer ever had a membership in (see Repository.note_joined).
        JOINED_TEAMS: [],
        "created_at": _now(),
    }
    payload = ev.VolunteerRegisteredV2(
        volunteer_id=volunteer_id,
        unit_code=body.unit_code,
        unit_path=unit["path"],
        roles=body.roles,
        skills=body.skills,
        age_band=AgeBand.of(body.birth_year, local_today().year),
    )
    return doc, _event(ev.VOLUNTEER_REGISTERED_V2, payload, volunteer_id)


def _team_facts(team: Document) -> dict[str, Any]:
    """The team as a membership event describes it, so members can be counted by team kind and unit."""
    return {"team_kind": team["kind"], "team_unit_path": team["unit_path"], "team_active": team["active"]}


def _membership_audit(principal: Principal, action: str, doc: Document, team: Document) -> Document:
    since = doc["periods"][-1]["since"]
    after = {"team_code": doc["team_code"], "volunteer_id": doc["volunteer_id"], "active": True, "since": since}
    return _audit(principal, action, doc, team["unit_path"], after=after)


def _new_membership(team: Document, volunteer_id: str, since: date) -> tuple[Document, Envelope]:
    team_code = team["_id"]
    key = f"{team_code}/{volunteer_id}"
    doc: Document = {
        "_id": key,
        "team_code": team_code,
        "volunteer_id": volunteer_id,
        "active": True,
        "periods": [{"since": since.isoformat(), "until": None}],
    }
    payload = ev.MembershipStarted(team_code=team_code, volunteer_id=volunteer_id, since=since, **_team_facts(team))
    return doc, _event(ev.MEMBERSHIP_STARTED, payload, key)


class RegistryService:
    def __init__(self, repo: Repository) -> None:
        self._repo = repo

    # --- lookups ------------------------------------------------------------------------------------

    async def _unit_or_404(self, code: str) -> Document:
        doc = await self._repo.get(UNITS, code)
        if doc is None:
            raise NotFound(f"unit {code} does not exist")
        return doc

    async def _referenced_unit(self, code: str, field: str) -> Document:
        """A unit named in a request body: a missing one is invalid input (422), not a missing resource."""
        doc = await self._repo.get(UNITS, code)
        if doc is None:
            raise InvalidInput(f"{field}: unit {code} does not exist", slug="unknown-unit", field=field)
        return doc

    async def _team_or_404(self, code: str) -> Document:
        doc = await self._repo.get(TEAMS, code)
        if doc is None:
            raise NotFound(f"team {code} does not exist")
        return doc

    async def _volunteer_or_404(self, volunteer_id: str) -> Document:
        doc = await self._repo.get(VOLUNTEERS, volunteer_id)
        if doc is None:
            raise NotFound(f"volunteer {volunteer_id} does not exist")
        return doc

    async def _campaign_or_404(self, code: str) -> Document:
        doc = await self._repo.get(CAMPAIGNS, code)
        if doc is None:
            raise NotFound(f"campaign {code} does not exist")
        return doc

    async def _update(
        self, collection: str, current: Document, changes: Document, events: list[Envelope], audit: Document
    ) -> None:
        if not await self._repo.update(collection, current, changes, events, [audit]):
            raise _lost_race(f"{collection[:-1]} {current['_id']}")

    # --- units --------------------------------------------------------------------------------------

    async def create_unit(self, principal: Principal, body: UnitIn) -> UnitOut:
        require_role(principal, *WRITERS)
        if body.kind is UnitKind.province:
            if body.parent_code is not None:
                raise InvalidInput("a province is the root of the tree: parent_code must be null", field="parent_code")
            require_role(principal, Role.admin)
            root = await self._repo.root_unit()
            if root is not None:
                raise Conflict(f"the province {root['_id']} already exists; the tree has one root", slug="root-exists")
            parent = None
        else:
            if body.parent_code is None:
                raise InvalidInput(f"a {body.kind.value} needs a parent_code", field="parent_code")
            parent = await self._referenced_unit(body.parent_code, "parent_code")
            authorize_write(principal, parent["path"], "the parent unit")
            refuse_if_not_active(parent)
        doc, event = _new_unit(body.code, body.name, body.kind, parent)
        entry = _audit(principal, "unit.created", doc, doc["path"], after={k: doc[k] for k in UNIT_AUDITED})
        if not await self._repo.insert(UNITS, doc, [event], [entry]):
            raise Conflict(f"unit {body.code} already exists", slug="duplicate-code")
        return unit_out(doc)

    async def get_unit(self, code: str) -> UnitOut:
        return unit_out(await self._unit_or_404(code))

    async def list_units(
        self,
        *,
        parent_code: str | None,
        kind: UnitKind | None,
        status: UnitStatus | None,
        limit: int,
        cursor: str | None,
    ) -> Page[UnitOut]:
        query: dict[str, Any] = {}
        if parent_code is not None:
            query["parent_code"] = parent_code
        if kind is not None:
            query["kind"] = kind.value
        if status is UnitStatus.active:
            query["status"] = {"$nin": [UnitStatus.merged.value, UnitStatus.closed.value]}
        elif status is not None:
            query["status"] = status.value
        docs, nxt = await self._repo.page(UNITS, query, limit, cursor)
        return Page[UnitOut](items=[unit_out(d) for d in docs], next_cursor=nxt)

    async def update_unit(self, principal: Principal, code: str, patch: UnitPatch) -> UnitOut:
        doc = await self._unit_or_404(code)
        authorize_write(principal, doc["path"], "the unit")
        refuse_if_not_active(doc)
        changes = patch.changes()
        name: str = changes["name"] if "name" in changes else doc["name"]
        kind = UnitKind(changes["kind"] if "kind" in changes else doc["kind"])
        moving = "parent_code" in changes
        parent_code = changes["parent_code"] if moving else doc["parent_code"]
        if (kind is UnitKind.province) != (parent_code is None):
            raise InvalidInput("the province is the root: it alone has no parent, and only it is a province")
        if parent_code is None and doc["parent_code"] is not None:
            raise InvalidInput(f"{code} cannot become a second root", field="parent_code")
        path = doc["path"]
        if moving and parent_code is not None:
            # The path is recomputed from the parent even when the parent is unchanged, so repeating a
            # move repairs a subtree that an earlier, interrupted move left half-updated.
            parent = await self._referenced_unit(parent_code, "parent_code")
            if code in parent["path"]:
                raise InvalidInput(
                    f"moving {code} under {parent_code} would make a cycle: {parent_code} is inside {code}'s subtree",
                    slug="unit-cycle",
                    field="parent_code",
                )
            if parent_code != doc["parent_code"]:
                authorize_write(principal, parent["path"], "the new parent unit")
                refuse_if_not_active(parent)
            path = [*parent["path"], code]
        updated = await self._set_unit(principal, doc, name=name, kind=kind, parent_code=parent_code, path=path)
        if moving:
            await self._move_subtree(principal, code, path)
        return unit_out(updated)

    async def _set_unit(
        self,
        principal: Principal,
        doc: Document,
        *,
        name: str,
        kind: UnitKind,
        parent_code: str | None,
        path: list[str],
    ) -> Document:
        """Write a unit's name, kind, parent and path with one UnitUpdated; nothing if nothing changed."""
        updated = {"name": name, "kind": kind.value, "parent_code": parent_code, "path": path}
        if any(doc[k] != v for k, v in updated.items()):
            event = _event(
                ev.UNIT_UPDATED,
                ev.UnitUpdated(
                    code=doc["_id"],
                    name=name,
                    kind=kind,
                    parent_code=parent_code,
                    path=path,
                    previous_path=doc["path"],
                ),
                doc["_id"],
            )
            action = "unit.moved" if parent_code != doc["parent_code"] else "unit.updated"
            entry = _audit_change(principal, action, doc, {**doc, **updated}, UNIT_AUDITED, path)
            await self._update(UNITS, doc, {**updated, "updated_at": _now()}, [event], entry)
        return {**doc, **updated}

    async def _move_under(self, principal: Principal, unit: Document, parent: Document) -> None:
        """Move ``unit`` with its subtree under ``parent``; repeating it repairs a half-done move."""
        path = [*parent["path"], unit["_id"]]
        kind = UnitKind(unit["kind"])
        await self._set_unit(principal, unit, name=unit["name"], kind=kind, parent_code=parent["_id"], path=path)
        await self._move_subtree(principal, unit["_id"], path)

    async def _move_subtree(self, principal: Principal, code: str, path: list[str]) -> None:
        """Bring the paths below ``code`` (units, then their teams and volunteers) in line with ``path``.

        FerretDB has no transactions, so a move is several single-document writes, each carrying its
        own event; only documents whose path is stale are written, which makes a retry finish the job.
        """
        paths = {code: path}
        descendants = await self._repo.find_all(UNITS, {"path": code, "_id": {"$ne": code}})
        for unit in sorted(descendants, key=lambda u: len(u["path"])):
            old = unit["path"]
            new = [*path, *old[old.index(code) + 1 :]]
            paths[unit["_id"]] = new
            if old != new:
                event = _event(
                    ev.UNIT_UPDATED,
                    ev.UnitUpdated(
                        code=unit["_id"],
                        name=unit["name"],
                        kind=unit["kind"],
                        parent_code=unit["parent_code"],
                        path=new,
                        previous_path=old,
                    ),
                    unit["_id"],
                )
                entry = _audit_change(principal, "unit.moved", unit, {**unit, "path": new}, ("path",), new)
                await self._update(UNITS, unit, {"path": new, "updated_at": _now()}, [event], entry)
        for team in await self._repo.find_all(TEAMS, {"unit_path": code}):
            team_path = paths.get(team["unit_code"])
            if team_path is not None and team["unit_path"] != team_path:
                moved = {**team, "unit_path": team_path}
                event = await self._team_updated(moved, team)
                entry = _audit_change(principal, "team.moved", team, moved, ("unit_path",), team_path)
                await self._update(TEAMS, team, {"unit_path": team_path}, [event], entry)
        for vol in await self._repo.find_all(VOLUNTEERS, {"unit_path": code}):
            vol_path = paths.get(vol["unit_code"])
            if vol_path is not None and vol["unit_path"] != vol_path:
                moved = {**vol, "unit_path": vol_path}
                event = self._volunteer_updated(moved, vol)
                entry = _audit_change(principal, "volunteer.moved", vol, moved, ("unit_path",), vol_path)
                await self._update(VOLUNTEERS, vol, {"unit_path": vol_path}, [event], entry)

    # --- reorganisation -----------------------------------------------------------------------------
    # Like a move, each operation is a sequence of single-document writes with their events. Every
    # step writes only what is not done yet and the final mark (merged/closed) comes last, so
    # re-sending the request after a crash finishes the job, and re-sending it afterwards writes nothing.

    async def _move_team(self, principal: Principal, team: Document, unit: Document) -> None:
        async def event(current: Document, moved: Document) -> Envelope:
            return await self._team_updated({**current, **moved}, current)

        await self._move(principal, TEAMS, "team", team, unit, event)

    async def _move_volunteer(self, principal: Principal, volunteer: Document, unit: Document) -> None:
        async def event(current: Document, moved: Document) -> Envelope:
            return self._volunteer_updated({**current, **moved}, current)

        await self._move(principal, VOLUNTEERS, "volunteer", volunteer, unit, event)

    async def _move(
        self,
        principal: Principal,
        collection: str,
        entity: str,
        doc: Document,
        unit: Document,
        event: Callable[[Document, Document], Awaitable[Envelope]],
    ) -> None:
        """Move a team or volunteer to ``unit``; after a lost compare-and-set, read it again and move
        it again if it still has to go.

        A reorganisation moves hundreds of teams and thousands of volunteers while their offices keep
        editing them; one edit in between used to fail the whole request (409), and each retry of a
        10x merge lost another race and took 35 s, until the client gave up.
        """
        moved = {"unit_code": unit["_id"], "unit_path": unit["path"]}
        for _ in range(MOVE_ATTEMPTS):
            entry = _audit_change(principal, f"{entity}.moved", doc, {**doc, **moved}, list(moved), unit["path"])
            changes = {**moved, "updated_at": _now()}
            if await self._repo.update(collection, doc, changes, [await event(doc, moved)], [entry]):
                return
            fresh = await self._repo.get(collection, doc["_id"])
            if fresh is None or fresh["unit_path"] == unit["path"]:
                return
            doc = fresh
        raise _lost_race(f"{entity} {doc['_id']}")

    async def _move_children(self, principal: Principal, codes: Sequence[str], into: Document) -> None:
        """Move the units right below ``codes`` (with their subtrees) under ``into``.

        A path that still runs through one of ``codes`` names the unit below it even after that unit
        was moved: an interrupted attempt may have left its subtree, teams or volunteers on the old
        path, and moving it again repairs them. One scan per collection, whatever the number of codes.
        """
        below: set[str] = set()
        for collection, field in ((UNITS, "path"), (TEAMS, "unit_path"), (VOLUNTEERS, "unit_path")):
            for d in await self._repo.find_all(collection, {field: {"$in": list(codes)}}):
                path = d[field]
                below.update(path[i + 1] for i, c in enumerate(path[:-1]) if c in codes)
        for child_code in sorted(below):
            child = await self._repo.get(UNITS, child_code)
            if child is None:
                continue
            if child["parent_code"] in codes:
                await self._move_under(principal, child, into)
            else:
                await self._move_subtree(principal, child_code, child["path"])

    async def _merge_sources(self, principal: Principal, codes: list[str], into: str) -> list[Document]:
        found = {code: await self._repo.get(UNITS, code) for code in codes}
        missing = [code for code, doc in found.items() if doc is None]
        if missing:
            raise InvalidInput(
                f"sources: units that do not exist: {', '.join(missing)}",
                slug="unknown-unit",
                field="sources",
                units=missing,
            )
        sources = [doc for doc in found.values() if doc is not None]
        for doc in sources:
            authorize_write(principal, doc["path"], f"unit {doc['_id']}")
            if doc["parent_code"] is None:
                raise InvalidInput(
                    f"sources: {doc['_id']} is the province, the root of the tree; it cannot be merged",
                    slug="root-unit",
                    field="sources",
                )
            if not (unit_status(doc) is UnitStatus.merged and doc["successor_code"] == into):
                refuse_if_not_active(doc)
        return sources

    async def merge_units(self, principal: Principal, body: MergeIn) -> MergeOut:
        """Merge ``sources`` into ``into``: child units, teams, volunteers and campaign targets go first,
        then each source is marked merged (a source merged into ``into`` before passes, as a retry)."""
        require_role(principal, *WRITERS)
        codes = [code for code in body.sources if code != body.into]
        if not codes:
            raise InvalidInput("sources: nothing to merge besides `into` itself", field="sources")
        sources = await self._merge_sources(principal, codes, body.into)

        def not_below_a_source(path: list[str]) -> None:
            inside = [code for code in codes if code in path]
            if inside:
                raise InvalidInput(
                    f"into: {body.into} is inside the subtree of {', '.join(inside)}; "
                    "a unit cannot be merged into its own descendant",
                    slug="unit-cycle",
                    field="into",
                )

        into = await self._repo.get(UNITS, body.into)
        new = body.new_unit
        if into is None:
            if new is None:
                raise InvalidInput(
                    f"into: unit {body.into} does not exist; describe it in new_unit to create it",
                    slug="unknown-unit",
                    field="new_unit",
                )
            parent = await self._referenced_unit(new.parent_code, "new_unit.parent_code")
            authorize_write(principal, parent["path"], "the new unit's parent")
            refuse_if_not_active(parent)
            not_below_a_source(parent["path"])
            into = await self._insert_unit(principal, *_new_unit(body.into, new.name, new.kind, parent))
        else:
            authorize_write(principal, into["path"], "the unit merged into")
            refuse_if_not_active(into)
            if new is not None and not _same_unit(into, new.name, new.kind, new.parent_code):
                raise Conflict(
                    f"unit {body.into} already exists with another name, kind or parent than new_unit",
                    slug="duplicate-code",
                )
            not_below_a_source(into["path"])
        day = body.merged_on or local_today()
        await self._move_children(principal, codes, into)
        for team in await self._repo.find_all(TEAMS, {"unit_code": {"$in": codes}, "active": True}):
            await self._move_team(principal, team, into)
        for volunteer in await self._repo.find_all(VOLUNTEERS, {"unit_code": {"$in": codes}}):
            await self._move_volunteer(principal, volunteer, into)
        await self._merge_campaign_targets(principal, set(codes), into["_id"])
        merged = []
        for source in sources:
            doc = await self._unit_or_404(source["_id"])  # re-read: the moves may have raced with a PATCH
            if unit_status(doc) is UnitStatus.active:
                event = _event(
                    ev.UNIT_MERGED,
                    ev.UnitMerged(
                        code=doc["_id"], successor_code=into["_id"], successor_path=into["path"], merged_on=day
                    ),
                    doc["_id"],
                )
                changes = {
                    "status": UnitStatus.merged.value,
                    "successor_code": into["_id"],
                    "merged_on": day.isoformat(),
                    "updated_at": _now(),
                }
                entry = _audit(
                    principal,
                    "unit.merged",
                    doc,
                    doc["path"],
                    before={"status": unit_status(doc).value},
                    after={k: changes[k] for k in ("status", "successor_code", "merged_on")},
                )
                await self._update(UNITS, doc, changes, [event], entry)
                doc = {**doc, **changes}
            elif doc.get("successor_code") != into["_id"]:
                refuse_if_not_active(doc)
            merged.append(unit_out(doc))
        return MergeOut(successor=unit_out(into), merged=merged)

    async def _insert_unit(self, principal: Principal, doc: Document, event: Envelope) -> Document:
        """Create a unit for a reorganisation; one with the same name, kind and parent is a retry's."""
        entry = _audit(principal, "unit.created", doc, doc["path"], after={k: doc[k] for k in UNIT_AUDITED})
        if await self._repo.insert(UNITS, doc, [event], [entry]):
            return doc
        existing = await self._repo.get(UNITS, doc["_id"])
        if existing is None or not _same_unit(existing, doc["name"], UnitKind(doc["kind"]), doc["parent_code"]):
            raise Conflict(f"unit {doc['_id']} already exists with another name, kind or parent", slug="duplicate-code")
        return existing

    async def _merge_campaign_targets(self, principal: Principal, merging: set[str], into: str) -> None:
        """One CampaignTargetsSet per campaign that still has targets on a merged unit."""
        query = {"targets.unit_code": {"$in": sorted(merging)}}
        for campaign in await self._repo.find_all(CAMPAIGNS, query):
            if not any(t["unit_code"] in merging for t in campaign["targets"]):
                continue
            targets = _merge_targets(campaign["targets"], merging, into)
            event = _event(
                ev.CAMPAIGN_TARGETS_SET,
                ev.CampaignTargetsSet(code=campaign["_id"], targets=[ev.Target(**t) for t in targets]),
                campaign["_id"],
            )
            before, after = _targets_changed(campaign["targets"], targets)
            entry = _audit(
                principal,
                "campaign.targets_set",
                campaign,
                await self._campaign_path(),
                before=before,
                after=after,
                reason=f"units {', '.join(sorted(merging))} merged into {into}",
            )
            await self._update(CAMPAIGNS, campaign, {"targets": targets, "updated_at": _now()}, [event], entry)

    async def _active_children(self, code: str) -> list[str]:
        children = await self._repo.find_all(UNITS, {"parent_code": code})
        return [u["_id"] for u in children if unit_status(u) is UnitStatus.active]

    async def split_unit(self, principal: Principal, code: str, body: SplitIn) -> SplitOut:
        """Close ``code`` after creating its successors under its parent and moving its teams (as
        assigned) and volunteers to them; its history stays under its own code."""
        source = await self._unit_or_404(code)
        authorize_write(principal, source["path"], "the unit")
        if source["parent_code"] is None:
            raise InvalidInput(f"{code} is the province, the root of the tree; it cannot be split", slug="root-unit")
        parent = await self._unit_or_404(source["parent_code"])
        authorize_write(principal, parent["path"], "the parent unit, where the new units are created")
        codes = [u.code for u in body.into]
        if code in codes:
            raise InvalidInput(f"into: {code} cannot be one of its own successors", field="into")
        if not (unit_status(source) is UnitStatus.closed and source.get("successors") == codes):
            refuse_if_not_active(source)
        successors: dict[str, Document | None] = {}
        for u in body.into:
            existing = await self._repo.get(UNITS, u.code)
            if existing is not None:
                if not _same_unit(existing, u.name, u.kind, parent["_id"]):
                    raise Conflict(
                        f"unit {u.code} already exists with another name, kind or parent than in this split",
                        slug="duplicate-code",
                    )
                refuse_if_not_active(existing)
            successors[u.code] = existing
        if any(doc is None for doc in successors.values()):
            refuse_if_not_active(parent)
        teams = await self._repo.find_all(TEAMS, {"unit_code": code, "active": True})
        assigned = {a.team_code: a.unit_code for a in body.teams}
        unassigned = [t["_id"] for t in teams if t["_id"] not in assigned]
        if unassigned:
            raise InvalidInput(
                f"teams: every active team of {code} needs one of the new units; unassigned: {', '.join(unassigned)}",
                slug="unassigned-teams",
                field="teams",
                teams=unassigned,
            )
        own = {t["_id"] for t in teams}
        for team_code, unit_code in assigned.items():
            if team_code in own:
                continue
            team = await self._repo.get(TEAMS, team_code)
            if team is None or team["unit_code"] != unit_code:  # in its new unit already: an earlier attempt
                raise InvalidInput(
                    f"teams: {team_code} is not an active team of {code}", slug="unknown-team", field="teams"
                )
        volunteers = await self._repo.find_all(VOLUNTEERS, {"unit_code": code})
        if volunteers and body.volunteers_to is None:
            raise InvalidInput(
                f"volunteers_to: {code} has {len(volunteers)} volunteer(s); name the new unit that takes them",
                field="volunteers_to",
            )
        children = await self._active_children(code)
        if children:
            raise Conflict(
                f"{code} still has child units {', '.join(children)}; move them first",
                slug="unit-has-children",
                units=children,
            )
        day = body.split_on or local_today()
        units: dict[str, Document] = {}
        for u in body.into:
            units[u.code] = successors[u.code] or await self._insert_unit(
                principal, *_new_unit(u.code, u.name, u.kind, parent)
            )
        for team in teams:
            await self._move_team(principal, team, units[assigned[team["_id"]]])
        if body.volunteers_to is not None:
            for volunteer in volunteers:
                await self._move_volunteer(principal, volunteer, units[body.volunteers_to])
        if unit_status(source) is UnitStatus.active:
            payload = ev.UnitSplit(
                code=code,
                successors=codes,
                teams=[ev.TeamAssignment(team_code=a.team_code, unit_code=a.unit_code) for a in body.teams],
                split_on=day,
            )
            changes = {
                "status": UnitStatus.closed.value,
                "successors": codes,
                "closed_on": day.isoformat(),
                "updated_at": _now(),
            }
            entry = _audit(
                principal,
                "unit.split",
                source,
                source["path"],
                before={"status": UnitStatus.active.value},
                after={k: changes[k] for k in ("status", "successors", "closed_on")},
            )
            await self._update(UNITS, source, changes, [_event(ev.UNIT_SPLIT, payload, code)], entry)
            source = {**source, **changes}
        return SplitOut(closed=unit_out(source), successors=[unit_out(units[c]) for c in codes])

    async def close_unit(self, principal: Principal, code: str, body: CloseIn) -> UnitOut:
        doc = await self._unit_or_404(code)
        authorize_write(principal, doc["path"], "the unit")
        if doc["parent_code"] is None:
            raise InvalidInput(f"{code} is the province, the root of the tree; it cannot be closed", slug="root-unit")
        if unit_status(doc) is UnitStatus.closed and doc.get("close_reason") == body.reason:
            return unit_out(doc)
        refuse_if_not_active(doc)
        teams = [t["_id"] for t in await self._repo.find_all(TEAMS, {"unit_code": code, "active": True})]
        children = await self._active_children(code)
        if teams or children:
            left = [f"active teams {', '.join(teams)}"] if teams else []
            left += [f"active child units {', '.join(children)}"] if children else []
            raise Conflict(
                f"{code} still has {' and '.join(left)}; move or deactivate them first",
                slug="unit-not-empty",
                teams=teams,
                units=children,
            )
        day = body.closed_on or local_today()
        event = _event(
            ev.UNIT_CLOSED, ev.UnitClosed(code=code, path=doc["path"], reason=body.reason, closed_on=day), code
        )
        changes = {
            "status": UnitStatus.closed.value,
            "closed_on": day.isoformat(),
            "close_reason": body.reason,
            "updated_at": _now(),
        }
        entry = _audit(
            principal,
            "unit.closed",
            doc,
            doc["path"],
            before={"status": unit_status(doc).value},
            after={k: changes[k] for k in ("status", "closed_on")},
            reason=body.reason,
        )
        await self._update(UNITS, doc, changes, [event], entry)
        return unit_out({**doc, **changes})

    # --- teams --------------------------------------------------------------------------------------

    async def _check_campaign(self, code: str | None) -> None:
        if code is not None and await self._repo.get(CAMPAIGNS, code) is None:
            raise InvalidInput(
                f"campaign_code: campaign {code} does not exist", slug="unknown-campaign", field="campaign_code"
            )

    async def _team_updated(self, new: Document, old: Document) -> Envelope:
        # Counted just before the write: a consumer moves this many members with the team's kind and unit.
        members = await self._repo.count_active_members(new["_id"])
        return _event(
            ev.TEAM_UPDATED,
            ev.TeamUpdated(
                code=new["_id"],
                name=new["name"],
                kind=new["kind"],
                unit_code=new["unit_code"],
                unit_path=new["unit_path"],
                base=new.get("base"),
                campaign_code=new.get("campaign_code"),
                active=new["active"],
                previous_kind=old["kind"],
                previous_unit_path=old["unit_path"],
                members=members,
                previous_active=old["active"],
            ),
            new["_id"],
        )

    async def create_team(self, principal: Principal, body: TeamIn) -> TeamOut:
        require_role(principal, *WRITERS)
        unit = await self._referenced_unit(body.unit_code, "unit_code")
        authorize_write(principal, unit["path"], "the team's unit")
        refuse_if_not_active(unit)
        await self._check_campaign(body.campaign_code)
        doc = {
            "_id": body.code,
            "name": body.name,
            "kind": body.kind.value,
            "unit_code": body.unit_code,
            "unit_path": unit["path"],
            "base": body.base,
            "campaign_code": body.campaign_code,
            "active": True,
            JOINED_MEMBERS: [],  # see Repository.note_joined
            "created_at": _now(),
        }
        event = _event(
            ev.TEAM_CREATED,
            ev.TeamCreated(
                code=body.code,
                name=body.name,
                kind=body.kind,
                unit_code=body.unit_code,
                unit_path=unit["path"],
                base=body.base,
                campaign_code=body.campaign_code,
            ),
            body.code,
        )
        entry = _audit(principal, "team.created", doc, unit["path"], after={k: doc[k] for k in TEAM_AUDITED})
        if not await self._repo.insert(TEAMS, doc, [event], [entry]):
            raise Conflict(f"team {body.code} already exists", slug="duplicate-code")
        return team_out(doc)

    async def get_team(self, code: str) -> TeamOut:
        return team_out(await self._team_or_404(code))

    async def list_teams(
        self,
        *,
        unit: str | None,
        kind: TeamKind | None,
        active: bool | None,
        campaign_code: str | None,
        limit: int,
        cursor: str | None,
    ) -> Page[TeamOut]:
        query: dict[str, Any] = {}
        if unit is not None:
            query["unit_path"] = unit
        if kind is not None:
            query["kind"] = kind.value
        if active is not None:
            query["active"] = active
        if campaign_code is not None:
            query["campaign_code"] = campaign_code
        docs, nxt = await self._repo.page(TEAMS, query, limit, cursor)
        return Page[TeamOut](items=[team_out(d) for d in docs], next_cursor=nxt)

    async def update_team(self, principal: Principal, code: str, patch: TeamPatch) -> TeamOut:
        doc = await self._team_or_404(code)
        authorize_write(principal, doc["unit_path"], "the team's unit")
        changes = {k: v.value if isinstance(v, TeamKind) else v for k, v in patch.changes().items()}
        if "unit_code" in changes and changes["unit_code"] != doc["unit_code"]:
            unit = await self._referenced_unit(changes["unit_code"], "unit_code")
            authorize_write(principal, unit["path"], "the team's new unit")
            refuse_if_not_active(unit)
            changes["unit_path"] = unit["path"]
        if "campaign_code" in changes and changes["campaign_code"] != doc.get("campaign_code"):
            await self._check_campaign(changes["campaign_code"])
        new = {**doc, **changes}
        if all(doc.get(k) == v for k, v in changes.items()):
            return team_out(doc)
        action = "team.moved" if new["unit_code"] != doc["unit_code"] else "team.updated"
        entry = _audit_change(principal, action, doc, new, TEAM_AUDITED, new["unit_path"])
        await self._update(TEAMS, doc, {**changes, "updated_at": _now()}, [await self._team_updated(new, doc)], entry)
        return team_out(new)

    async def deactivate_team(self, principal: Principal, code: str) -> TeamOut:
        doc = await self._team_or_404(code)
        authorize_write(principal, doc["unit_path"], "the team's unit")
        if not doc["active"]:
            return team_out(doc)  # already closed: repeating the request changes nothing
        event = _event(
            ev.TEAM_DEACTIVATED,
            ev.TeamDeactivated(
                code=code,
                kind=doc["kind"],
                unit_code=doc["unit_code"],
                unit_path=doc["unit_path"],
                members=await self._repo.count_active_members(code),
            ),
            code,
        )
        entry = _audit(
            principal, "team.deactivated", doc, doc["unit_path"], before={"active": True}, after={"active": False}
        )
        await self._update(TEAMS, doc, {"active": False, "deactivated_at": _now()}, [event], entry)
        return team_out({**doc, "active": False})

    # --- volunteers ---------------------------------------------------------------------------------

    @staticmethod
    def _volunteer_updated(new: Document, old: Document) -> Envelope:
        return _event(
            ev.VOLUNTEER_UPDATED_V2,
            ev.VolunteerUpdatedV2(
                volunteer_id=new["_id"],
                unit_code=new["unit_code"],
                unit_path=new["unit_path"],
                roles=new["roles"],
                skills=new["skills"],
                age_band=AgeBand.of(new["birth_year"], local_today().year),
                active=new["active"],
                previous_unit_path=old["unit_path"],
                previous_roles=old["roles"],
                previous_skills=old["skills"],
            ),
            new["_id"],
        )

    async def register_volunteer(self, principal: Principal, body: VolunteerIn) -> VolunteerOut:
        require_role(principal, *WRITERS)
        unit = await self._referenced_unit(body.unit_code, "unit_code")
        authorize_write(principal, unit["path"], "the volunteer's unit")
        refuse_if_not_active(unit)
        doc, event = _new_volunteer(body, unit, str(uuid.uuid4()))
        entry = _audit(
            principal, "volunteer.registered", doc, unit["path"], after={k: doc[k] for k in VOLUNTEER_AUDITED}
        )
        if not await self._repo.insert(VOLUNTEERS, doc, [event], [entry]):
            raise _lost_race(f"volunteer {doc['_id']}")  # a uuid4 collision; practically unreachable
        return volunteer_out(doc, principal)

    def authorize_roster_import(self, principal: Principal) -> None:
        """Only writers import rosters; checked before an uploaded file is read."""
        require_role(principal, *WRITERS)

    async def import_roster(self, principal: Principal, rows: Sequence[dict[str, Any]]) -> list[RosterItemOut]:
        """Register volunteers with their team memberships, many rows per request.

        Each row is checked on its own (a bad row is rejected, the others go ahead). Volunteer ids
        derive from ``client_ref``, so a re-sent row finds its first copy instead of a second person,
        and memberships a crash left unwritten are written by the re-send. A row repeating an
        earlier row's ``client_ref`` in the same request is answered like a re-send. All new
        volunteers, then all new memberships, go in one insert each: a roster costs two writes, not
        two per row.
        """
        self.authorize_roster_import(principal)
        units: dict[str, Document] = {}
        teams: dict[str, Document] = {}

        async def unit_of(code: str) -> Document:
            if code not in units:
                units[code] = await self._referenced_unit(code, "unit_code")
            return units[code]

        async def team_of(code: str) -> Document:
            if code not in teams:
                doc = await self._repo.get(TEAMS, code)
                if doc is None:
                    raise InvalidInput(f"teams: team {code} does not exist", slug="unknown-team", field="teams")
                teams[code] = doc
            return teams[code]

        results: list[RosterItemOut] = []
        volunteers: list[tuple[int, Document, Envelope]] = []
        memberships: dict[str, tuple[Document, Envelope]] = {}  # by _id: a repeated row joins once
        registered: set[str] = set()
        for i, raw in enumerate(rows):
            ref = raw.get("client_ref")
            results.append(RosterItemOut(client_ref=ref if isinstance(ref, str) else None, status=BatchStatus.created))
            try:
                row = RosterItemIn.model_validate(raw)
                unit = await unit_of(row.unit_code)
                authorize_write(principal, unit["path"], "the volunteer's unit")
                refuse_if_not_active(unit)
                volunteer_id = str(uuid.uuid5(ROSTER_NAMESPACE, row.client_ref))
                joined = []
                for m in row.teams:
                    team = await team_of(m.code)
                    authorize_write(principal, team["unit_path"], "the team's unit")
                    if not team["active"]:
                        raise Conflict(f"team {m.code} is deactivated", slug="team-inactive")
                    joined.append(_new_membership(team, volunteer_id, m.since))
            except ValidationError as exc:
                results[i] = results[i].model_copy(
                    update={"status": BatchStatus.rejected, "problem": validation_problem(exc)}
                )
                continue
            except ProblemError as exc:
                results[i] = results[i].model_copy(update={"status": BatchStatus.rejected, "problem": exc.to_problem()})
                continue
            update: dict[str, Any] = {"id": volunteer_id, "teams": [m.code for m in row.teams]}
            if volunteer_id in registered:
                update["status"] = BatchStatus.duplicate
            else:
                registered.add(volunteer_id)
                doc, event = _new_volunteer(row, unit, volunteer_id)
                doc[JOINED_TEAMS] = sorted({m.code for m in row.teams})
                entry = _audit(
                    principal, "volunteer.registered", doc, unit["path"], after={k: doc[k] for k in VOLUNTEER_AUDITED}
                )
                volunteers.append((i, {**doc, **audit_fields([entry])}, event))
            for m_doc, m_event in joined:
                team = teams[m_doc["team_code"]]
                m_entry = _membership_audit(principal, "membership.started", m_doc, team)
                memberships.setdefault(m_doc["_id"], ({**m_doc, **audit_fields([m_entry])}, m_event))
            results[i] = results[i].model_copy(update=update)
        taken = await self._repo.insert_new(VOLUNTEERS, [(d, [e]) for _, d, e in volunteers])
        for i, doc, _ in volunteers:
            if doc["_id"] in taken:
                results[i] = results[i].model_copy(update={"status": BatchStatus.duplicate})
        listed = {d["_id"]: set(d[JOINED_TEAMS]) for _, d, _ in volunteers if d["_id"] not in taken}
        by_team: dict[str, list[str]] = {}
        for d, _ in memberships.values():
            by_team.setdefault(d["team_code"], []).append(d["volunteer_id"])
            # A volunteer registered before, or a repeated row naming other teams: note the team.
            if d["team_code"] not in listed.get(d["volunteer_id"], ()):
                await self._repo.note_joined(d["volunteer_id"], d["team_code"])
        await self._repo.note_members_of_teams(by_team)
        # Memberships of re-sent rows too: the first attempt may have stopped between the two inserts.
        # One that exists already (possibly ended since) is left as it is.
        await self._repo.insert_new(MEMBERSHIPS, [(d, [e]) for d, e in memberships.values()])
        return results

    async def get_volunteer(self, principal: Principal, volunteer_id: str) -> VolunteerOut:
        return volunteer_out(await self._volunteer_or_404(volunteer_id), principal)

    async def list_volunteers(
        self,
        principal: Principal,
        *,
        unit: str | None,
        skill: str | None,
        team: str | None,
        active: bool | None,
        limit: int,
        cursor: str | None,
    ) -> Page[VolunteerOut]:
        query: dict[str, Any] = {}
        if unit is not None:
            query["unit_path"] = unit
        if skill is not None:
            query["skills"] = skill
        if active is not None:
            query["active"] = active
        if team is not None:
            query["_id"] = {"$in": await self._repo.active_member_ids(team)}
        docs, nxt = await self._repo.page(VOLUNTEERS, query, limit, cursor)
        return Page[VolunteerOut](items=[volunteer_out(d, principal) for d in docs], next_cursor=nxt)

    async def update_volunteer(self, principal: Principal, volunteer_id: str, patch: VolunteerPatch) -> VolunteerOut:
        doc = await self._volunteer_or_404(volunteer_id)
        authorize_write(principal, doc["unit_path"], "the volunteer's unit")
        changes = patch.changes()
        for listed in ("roles", "skills"):
            if listed in changes:
                changes[listed] = [v.value for v in changes[listed]]
        if "unit_code" in changes and changes["unit_code"] != doc["unit_code"]:
            unit = await self._referenced_unit(changes["unit_code"], "unit_code")
            authorize_write(principal, unit["path"], "the volunteer's new unit")
            refuse_if_not_active(unit)
            changes["unit_path"] = unit["path"]
        new = {**doc, **changes}
        if all(doc.get(k) == v for k, v in changes.items()):
            return volunteer_out(doc, principal)
        action = "volunteer.moved" if new["unit_code"] != doc["unit_code"] else "volunteer.updated"
        entry = _audit_change(principal, action, doc, new, VOLUNTEER_AUDITED, new["unit_path"])
        event = self._volunteer_updated(new, doc)
        await self._update(VOLUNTEERS, doc, {**changes, "updated_at": _now()}, [event], entry)
        return volunteer_out(new, principal)

    async def volunteer_leaves(self, principal: Principal, volunteer_id: str, left_on: date | None) -> VolunteerOut:
        doc = await self._volunteer_or_404(volunteer_id)
        authorize_write(principal, doc["unit_path"], "the volunteer's unit")
        if doc["active"]:
            day = left_on or local_today()
            event = _event(
                ev.VOLUNTEER_LEFT,
                ev.VolunteerLeft(
                    volunteer_id=volunteer_id,
                    unit_code=doc["unit_code"],
                    unit_path=doc["unit_path"],
                    roles=doc["roles"],
                    skills=doc["skills"],
                ),
                volunteer_id,
            )
            changes = {"active": False, "left_on": day.isoformat(), "updated_at": _now()}
            entry = _audit(
                principal,
                "volunteer.left",
                doc,
                doc["unit_path"],
                before={"active": True},
                after={"active": False, "left_on": changes["left_on"]},
            )
            await self._update(VOLUNTEERS, doc, changes, [event], entry)
            doc = {**doc, **changes}
        # Someone who left is no longer a current member anywhere; repeating the request closes any
        # membership an interrupted earlier attempt left open.
        left = date.fromisoformat(doc["left_on"])
        for membership in await self._repo.memberships_of(volunteer_id, doc[JOINED_TEAMS]):
            if not membership["active"]:
                continue
            since = date.fromisoformat(membership["periods"][-1]["since"])
            team = await self._team_or_404(membership["team_code"])
            await self._close_membership(principal, membership, team, max(left, since))
        return volunteer_out(doc, principal)

    # --- memberships --------------------------------------------------------------------------------

    async def add_member(self, principal: Principal, team_code: str, body: MemberIn) -> MembershipOut:
        team = await self._team_or_404(team_code)
        authorize_write(principal, team["unit_path"], "the team's unit")
        if not team["active"]:
            raise Conflict(f"team {team_code} is deactivated", slug="team-inactive")
        volunteer = await self._repo.get(VOLUNTEERS, body.volunteer_id)
        if volunteer is None:
            raise InvalidInput(
                f"volunteer_id: volunteer {body.volunteer_id} does not exist",
                slug="unknown-volunteer",
                field="volunteer_id",
            )
        if not volunteer["active"]:
            raise Conflict(f"volunteer {body.volunteer_id} has left", slug="volunteer-left")
        key = f"{team_code}/{body.volunteer_id}"
        doc, event = _new_membership(team, body.volunteer_id, body.since)
        existing = await self._repo.get(MEMBERSHIPS, key)
        await self._repo.note_joined(body.volunteer_id, team_code)
        entry = _membership_audit(principal, "membership.started", doc, team)
        if existing is None:
            if not await self._repo.insert(MEMBERSHIPS, doc, [event], [entry]):
                raise _lost_race(f"membership {key}")
            return membership_out(doc)
        if existing["active"]:
            raise Conflict(f"volunteer {body.volunteer_id} is already a member of {team_code}", slug="already-member")
        last_until = existing["periods"][-1]["until"]
        if body.since.isoformat() < last_until:
            raise InvalidInput(f"since is before the end of the previous membership ({last_until})", field="since")
        changes = {"active": True, "periods": [*existing["periods"], *doc["periods"]]}
        await self._update(MEMBERSHIPS, existing, changes, [event], entry)
        return membership_out({**existing, **changes})

    async def end_member(
        self, principal: Principal, team_code: str, volunteer_id: str, until: date | None
    ) -> MembershipOut:
        team = await self._team_or_404(team_code)
        authorize_write(principal, team["unit_path"], "the team's unit")
        doc = await self._repo.get(MEMBERSHIPS, f"{team_code}/{volunteer_id}")
        if doc is None or not doc["active"]:
            raise NotFound(f"volunteer {volunteer_id} is not a current member of {team_code}")
        day = until or local_today()
        since = doc["periods"][-1]["since"]
        if day.isoformat() < since:
            raise InvalidInput(f"until is before the membership started ({since})", field="until")
        return membership_out(await self._close_membership(principal, doc, team, day))

    async def _close_membership(self, principal: Principal, doc: Document, team: Document, until: date) -> Document:
        event = _event(
            ev.MEMBERSHIP_ENDED,
            ev.MembershipEnded(
                team_code=doc["team_code"], volunteer_id=doc["volunteer_id"], until=until, **_team_facts(team)
            ),
            doc["_id"],
        )
        periods = [*doc["periods"][:-1], {**doc["periods"][-1], "until": until.isoformat()}]
        changes = {"active": False, "periods": periods}
        entry = _audit(
            principal,
            "membership.ended",
            doc,
            team["unit_path"],
            before={"active": True},
            after={"active": False, "until": until.isoformat()},
        )
        await self._update(MEMBERSHIPS, doc, changes, [event], entry)
        return {**doc, **changes}

    async def list_members(
        self, team_code: str, *, include_ended: bool, limit: int, cursor: str | None
    ) -> Page[MembershipOut]:
        await self._team_or_404(team_code)
        query: dict[str, Any] = {"team_code": team_code}
        if not include_ended:
            query["active"] = True
        docs, nxt = await self._repo.page(MEMBERSHIPS, query, limit, cursor)
        return Page[MembershipOut](items=[membership_out(d) for d in docs], next_cursor=nxt)

    # --- campaigns ----------------------------------------------------------------------------------

    async def _authorize_campaign_write(self, principal: Principal) -> None:
        """A campaign spans the whole organisation, so writing one needs the province's scope."""
        require_role(principal, *WRITERS)
        if principal.role is Role.admin:
            return
        root = await self._repo.root_unit()
        require_scope(principal, [root["_id"] if root else "?"], "campaigns are organisation-wide: the province")

    async def _campaign_path(self) -> list[str]:
        """Where campaign entries sit in the audit log: at the province (campaigns are organisation-wide)."""
        root = await self._repo.root_unit()
        return [root["_id"]] if root else []

    async def _check_targets(
        self, targets: Sequence[TargetIn], stored: Sequence[Document] = ()
    ) -> list[dict[str, Any]]:
        """Targets as stored; a new target on a merged or closed unit is refused, one kept from ``stored`` is not."""
        units: dict[str, Document] = {}
        missing = []
        for code in dict.fromkeys(c for t in targets for c in (t.unit_code, *t.merged_from)):
            doc = await self._repo.get(UNITS, code)
            if doc is None:
                missing.append(code)
            else:
                units[code] = doc
        if missing:
            raise InvalidInput(
                f"targets name units that do not exist: {', '.join(missing)}", slug="unknown-unit", units=missing
            )
        kept = {(t["indicator"], t["unit_code"]) for t in stored}
        for t in targets:
            if (t.indicator.value, t.unit_code) not in kept:
                refuse_if_not_active(units[t.unit_code])
        return [
            {"indicator": t.indicator.value, "unit_code": t.unit_code, "value": t.value, "merged_from": t.merged_from}
            for t in targets
        ]

    async def create_campaign(self, principal: Principal, body: CampaignIn) -> CampaignOut:
        await self._authorize_campaign_write(principal)
        targets = await self._check_targets(body.targets)
        doc = {
            "_id": body.code,
            "name": body.name,
            "starts_on": body.starts_on.isoformat(),
            "ends_on": body.ends_on.isoformat(),
            "targets": targets,
            "created_at": _now(),
        }
        event = _event(
            ev.CAMPAIGN_CREATED,
            ev.CampaignCreated(
                code=body.code,
                name=body.name,
                starts_on=body.starts_on,
                ends_on=body.ends_on,
                targets=[ev.Target(**t) for t in targets],
            ),
            body.code,
        )
        entry = _audit(
            principal,
            "campaign.created",
            doc,
            await self._campaign_path(),
            after={k: doc[k] for k in ("name", "starts_on", "ends_on", "targets")},
        )
        if not await self._repo.insert(CAMPAIGNS, doc, [event], [entry]):
            raise Conflict(f"campaign {body.code} already exists", slug="duplicate-code")
        return campaign_out(doc)

    async def get_campaign(self, code: str) -> CampaignOut:
        return campaign_out(await self._campaign_or_404(code))

    async def list_campaigns(self, *, active_on: date | None, limit: int, cursor: str | None) -> Page[CampaignOut]:
        query: dict[str, Any] = {}
        if active_on is not None:
            day = active_on.isoformat()  # ISO dates compare correctly as strings
            query = {"starts_on": {"$lte": day}, "ends_on": {"$gte": day}}
        docs, nxt = await self._repo.page(CAMPAIGNS, query, limit, cursor)
        return Page[CampaignOut](items=[campaign_out(d) for d in docs], next_cursor=nxt)

    async def set_targets(self, principal: Principal, code: str, targets: Sequence[TargetIn]) -> CampaignOut:
        doc = await self._campaign_or_404(code)
        await self._authorize_campaign_write(principal)
        stored = await self._check_targets(targets, doc["targets"])
        if _targets_equal(stored, doc["targets"]):
            return campaign_out(doc)
        event = _event(
            ev.CAMPAIGN_TARGETS_SET,
            ev.CampaignTargetsSet(code=code, targets=[ev.Target(**t) for t in stored]),
            code,
        )
        before, after = _targets_changed(doc["targets"], stored)
        entry = _audit(principal, "campaign.targets_set", doc, await self._campaign_path(), before=before, after=after)
        await self._update(CAMPAIGNS, doc, {"targets": stored, "updated_at": _now()}, [event], entry)
        return campaign_out({**doc, "targets": stored})
