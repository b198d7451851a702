"""Audit trail: who did what, when, to which record, with the values before and after.

An entry is a plain subdocument in the ``audit`` array of the document it describes, written by the
*same* single-document insert or update as the change itself (:func:`audit_fields`,
:func:`audit_update`), exactly like the outbox: FerretDB has no transactions, so an entry written by
a second command could be lost while its change stays. A request that changes nothing writes
nothing, so an idempotent replay adds no second entry.

Entries stay readable by ordinary queries (``db.visits.find({"audit.actor.sub": "..."})``), and
:func:`read_audit` lists them across collections in ``id`` order (``id`` starts with the time), in
the caller's scope (:func:`audit_scope`). On FerretDB v1 such a read scans the collections; the
audit log is read by people, not on the request path of field devices.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pymongo.asynchronous.database import AsyncDatabase

from shared.auth import Principal, Role
from shared.errors import Forbidden, InvalidInput
from shared.pagination import decode_cursor, encode_cursor

AUDIT = "audit"
# Who reads which entries: admins all, managers those in their unit's subtree, field users their own.
AUDIT_READERS = (Role.admin, Role.manager, Role.field)

Document = dict[str, Any]


class Actor(BaseModel):
    """Who made a change: a token's subject and role, or a service acting on its own (role ``system``)."""

    sub: str
    role: str


class AuditEntry(BaseModel):
    """One change, as stored and as the API returns it."""

    id: str = Field(description="Unique and ordered by time: the list's order and its cursor key.")
    at: datetime
    actor: Actor
    action: str = Field(description="`<entity>.<what happened>`, e.g. `visit.corrected`, `unit.merged`.")
    entity: str = Field(description="What kind of record changed: visit, outreach_post, unit, team, course, ...")
    entity_id: str
    unit_path: list[str] = Field(description="Codes from the province to the unit the record belongs to.")
    previous_unit_path: list[str] | None = Field(
        default=None, description="Where the record belonged before, when this change moved it to another unit."
    )
    before: dict[str, Any] | None = Field(default=None, description="The changed values as they were.")
    after: dict[str, Any] | None = Field(default=None, description="The changed values as they are now.")
    reason: str | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "2025-07-14T09:30:12.345Z-3f9c2a7b1d04",
                    "at": "2025-07-14T09:30:12.345Z",
                    "actor": {"sub": "manager-halong", "role": "manager"},
                    "action": "visit.corrected",
                    "entity": "visit",
                    "entity_id": "0b1f4c1e-8a53-5f5e-9d8c-2f1c7e3a9b10",
                    "unit_path": ["QN", "QN-HALONG"],
                    "before": {"households": 3},
                    "after": {"households": 2},
                    "reason": None,
                }
            ]
        }
    )


def actor_of(principal: Principal) -> Actor:
    return Actor(sub=principal.sub, role=principal.role.value)


def system_actor(service: str) -> Actor:
    """The service itself, e.g. accepting a pending record once the registry event arrived."""
    return Actor(sub=service, role="system")


def _now() -> datetime:
    # BSON dates keep milliseconds: trimmed here, an entry reads back exactly as written.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def plain(value: Any) -> Any:
    """A value as BSON stores it and JSON shows it: dates as ISO text, enums as their value."""
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return plain(value.model_dump())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    return value


def changes(before: Mapping[str, Any], after: Mapping[str, Any], fields: Iterable[str]) -> tuple[Document, Document]:
    """The ``fields`` whose value differs between ``before`` and ``after``: (old values, new values)."""
    old: Document = {}
    new: Document = {}
    for f in fields:
        if plain(before.get(f)) != plain(after.get(f)):
            old[f] = plain(before.get(f))
            new[f] = plain(after.get(f))
    return old, new


def audit_entry(
    actor: Principal | Actor,
    action: str,
    entity: str,
    entity_id: str,
    unit_path: Sequence[str] | None,
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    reason: str | None = None,
    at: datetime | None = None,
    previous_unit_path: Sequence[str] | None = None,
) -> Document:
    """The plain subdocument of one change, ready for :func:`audit_fields` or :func:`audit_update`.

    ``previous_unit_path`` is kept when it differs from ``unit_path`` (a move): the managers of both
    places then read the entry.
    """
    who = actor_of(actor) if isinstance(actor, Principal) else actor
    when = at or _now()
    path = list(unit_path or [])
    previous = list(previous_unit_path) if previous_unit_path and list(previous_unit_path) != path else None
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    entry: Document = {
        "id": f"{stamp}Z-{uuid.uuid4().hex[:12]}",
        "at": when,
        "actor": who.model_dump(),
        "action": action,
        "entity": entity,
        "entity_id": entity_id,
        "unit_path": path,
    }
    optional = {"previous_unit_path": previous, "before": before, "after": after, "reason": reason}
    # Absent rather than null: every stored field costs FerretDB time on the intake path.
    entry.update({k: plain(v) for k, v in optional.items() if v is not None})
    return entry


def audit_fields(entries: Sequence[Document]) -> Document:
    """Fields to include in a newly inserted document whose creation ``entries`` describe."""
    return {AUDIT: list(entries)}


def audit_update(update: Mapping[str, Any], entries: Sequence[Document]) -> Document:
    """Merge the append of ``entries`` into a Mongo update document (``$set``/``$inc``/``$push``)."""
    merged = {k: dict(v) for k, v in update.items()}
    if entries:
        merged.setdefault("$push", {})[AUDIT] = {"$each": list(entries)}
    return merged


# --- reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditQuery:
    """Filters of ``GET /v1/audit``; None means no filter."""

    entity: str | None = None
    entity_id: str | None = None
    actor: str | None = None
    action: str | None = None
    unit: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def audit_scope(principal: Principal) -> AuditQuery:
    """What ``principal`` may read, as filters: admins everything, managers their unit's subtree
    (including changes made by others), field users the changes they made themselves."""
    if principal.role is Role.admin:
        return AuditQuery()
    if principal.role is Role.manager:
        if principal.unit is None:
            raise Forbidden("your token has no unit scope", slug="out-of-scope")
        return AuditQuery(unit=principal.unit)
    if principal.role is Role.field:
        return AuditQuery(actor=principal.sub)
    allowed = ", ".join(r.value for r in AUDIT_READERS)
    raise Forbidden(f"role '{principal.role.value}' may not read the audit log; it needs one of: {allowed}")


def _conditions(scope: AuditQuery, query: AuditQuery, after_id: str | None) -> Document:
    """One filter on ``audit.*``: on documents it keeps those with a matching entry, on unwound entries the matches."""
    cond: Document = {}
    units = sorted({u for u in (scope.unit, query.unit) if u})
    within = [{"$or": [{"audit.unit_path": u}, {"audit.previous_unit_path": u}]} for u in units]
    if len(within) == 1:
        cond.update(within[0])
    elif within:
        cond["$and"] = within
    actors = {a for a in (scope.actor, query.actor) if a}
    if len(actors) > 1:
        return {"_id": {"$in": []}}  # a field user asking for somebody else's changes
    if actors:
        cond["audit.actor.sub"] = actors.pop()
    for name in ("entity", "entity_id", "action"):
        value = getattr(query, name)
        if value:
            cond[f"audit.{name}"] = value
    at = {op: t for op, t in (("$gte", query.since), ("$lt", query.until)) if t is not None}
    if at:
        cond["audit.at"] = at
    if after_id is not None:
        cond["audit.id"] = {"$gt": after_id}
    return cond


async def read_audit(
    db: AsyncDatabase[Document],
    collections: Sequence[str],
    scope: AuditQuery,
    query: AuditQuery,
    limit: int,
    cursor: str | None,
) -> tuple[list[AuditEntry], str | None]:
    """One page of the entries kept in ``collections`` that match ``scope`` and ``query``, by ``id``.

    Each collection answers at most ``limit + 1`` entries with one aggregation; the pages are merged.
    """
    last = decode_cursor(cursor)
    if last is not None and not isinstance(last, str):
        raise InvalidInput("cursor is not valid", slug="invalid-cursor")
    cond = _conditions(scope, query, last)
    pipeline: list[Document] = [
        {"$match": {f"{AUDIT}.0": {"$exists": True}, **cond}},
        {"$unwind": f"${AUDIT}"},
        {"$match": cond},
        {"$sort": {f"{AUDIT}.id": 1}},
        {"$limit": limit + 1},
        {"$project": {"_id": 0, AUDIT: 1}},
    ]
    found: list[Document] = []
    for name in collections:
        async for row in await db[name].aggregate(pipeline):
            found.append(row[AUDIT])
    found.sort(key=lambda e: e["id"])
    page = found[: limit + 1]
    nxt = encode_cursor(page[limit - 1]["id"]) if len(page) > limit else None
    return [AuditEntry.model_validate(e) for e in page[:limit]], nxt


class AuditTrail:
    """The audit entries a service keeps in ``collections``, read in the caller's scope."""

    def __init__(self, db: AsyncDatabase[Document], collections: Sequence[str]) -> None:
        self._db = db
        self._collections = list(collections)

    async def page(
        self, principal: Principal, query: AuditQuery, limit: int, cursor: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        """One page of what ``principal`` may read (see :func:`audit_scope`) matching ``query``."""
        return await read_audit(self._db, self._collections, audit_scope(principal), query, limit, cursor)
