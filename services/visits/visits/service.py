"""Domain rules of the visits service: intake (single and batch), reference checks against the local
registry read model, pending records, corrections and voids."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from shared import registry_view as rm
from shared.audit import Actor, audit_entry, audit_fields, audit_update, system_actor
from shared.audit import changes as changed_values
from shared.auth import Principal, Role, require_role
from shared.concurrency import run_in_chunks
from shared.contracts import visits as ev
from shared.envelope import Envelope, make_event
from shared.errors import Conflict, Forbidden, InvalidInput, NotFound, ProblemError, validation_problem
from shared.outbox import outbox_fields, outbox_update
from visits.repository import Document, PendingIndex, RecordRepository, RegistryFacts, RegistryReader
from visits.schemas import OutreachIn, VisitCorrectionIn, VisitFields, VisitIn

SOURCE = "/visits"
# Record ids derive from the device's client_ref, so finding "the first copy" is an _id lookup.
ID_NAMESPACE = uuid.UUID("7d4f0a52-58c4-4b8e-9a57-1f3c2e6b9d10")
WRITERS = (Role.admin, Role.manager, Role.field)
MAX_CAS_ATTEMPTS = 5
SYSTEM = system_actor("visits")
# What a correction's audit entry compares: the figures and references, not free-text notes.
VISIT_AUDITED = (
    "team_code",
    "unit_code",
    "unit_path",
    "visited_on",
    "setting",
    "area",
    "household_ref",
    "households",
    "people",
    "services",
    "volunteer_ids",
)

Outcome = Literal["created", "pending", "duplicate"]
# How long a pending-index entry may wait for its record's insert before it counts as a crash's leftover.
UNWRITTEN_GRACE = timedelta(minutes=5)
# Pending records re-checked at a time after a registry batch: bounds what one batch holds in memory.
RECHECK_CHUNK = 500
Access = Literal["ok", "denied", "unknown"]
ItemT = TypeVar("ItemT", bound=BaseModel)


def utcnow() -> datetime:
    # Mongo keeps milliseconds; trimming here keeps events and stored documents identical.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def list_filter(date_field: str, date_from: date | None, date_to: date | None, **equal: str | None) -> Document:
    """Equality filters for the values given (None means no filter) and an inclusive date range."""
    query: Document = {k: v for k, v in equal.items() if v}
    dates = {op: d.isoformat() for op, d in (("$gte", date_from), ("$lte", date_to)) if d}
    if dates:
        query[date_field] = dates
    return query


@dataclass(frozen=True)
class Refs:
    """The registry references of one record and who submitted it."""

    team_code: str | None
    unit_code: str
    volunteer_ids: tuple[str, ...]
    submitter: Principal


@dataclass
class Verdict:
    outcome: Literal["accepted", "pending", "rejected"]
    unit_path: list[str] | None
    problem: ProblemError | None = None
    waiting_for: list[str] = field(default_factory=list)
    # The unit a record is stored under: the named one, or the successor it was merged into
    # (then ``resolved_from`` is the named code).
    unit_code: str | None = None
    resolved_from: str | None = None
    # Registry keys a pending record waits on besides those of its references (a successor unit).
    wait_keys: list[str] = field(default_factory=list)


def record_id(kind: str, client_ref: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{kind}:{client_ref}"))


def _member_lookups(r: Refs) -> set[str]:
    """Volunteers whose membership of ``r.team_code`` matters: the listed ones and a field submitter."""
    if r.team_code is None:
        return set()
    wanted = set(r.volunteer_ids)
    if r.submitter.role is Role.field and r.team_code not in r.submitter.teams:
        wanted.add(r.submitter.sub)  # a field user may act for a team the token does not list yet
    return wanted


def pending_keys(r: Refs, verdict: Verdict) -> list[str]:
    """The registry keys (as :class:`RegistryView` reports changes) a pending record waits on."""
    keys = [f"unit:{r.unit_code}", *verdict.wait_keys]
    if r.team_code:
        keys.append(f"team:{r.team_code}")
    for vid in sorted(_member_lookups(r)):
        keys += [f"volunteer:{vid}", f"membership:{r.team_code}/{vid}"]
    return keys


async def load_facts(reader: RegistryReader, refs: Sequence[Refs]) -> RegistryFacts:
    """Everything ``judge`` needs for ``refs``: one ``_id`` lookup per distinct key."""
    teams = await reader.teams({r.team_code for r in refs if r.team_code})
    # Every named unit, even a team's own: it may have been merged or closed since the team's event.
    # The teams' units too: a team of a merged unit may not have been moved in this read model yet.
    units_needed = {r.unit_code for r in refs} | {t["unit_code"] for t in teams.values()}
    pairs = {(r.team_code, vid) for r in refs if r.team_code for vid in _member_lookups(r)}
    return RegistryFacts(
        teams=teams,
        units=await reader.units(units_needed),
        memberships=await reader.memberships(pairs),
        volunteers=await reader.volunteers({vid for _, vid in pairs}),
    )


def authorize(p: Principal, team_code: str | None, path: list[str] | None, facts: RegistryFacts) -> tuple[Access, str]:
    """May ``p`` write records for this team/unit? ``unknown`` until the read model knows enough."""
    if p.role is Role.admin:
        return "ok", ""
    if p.role is Role.manager or (p.role is Role.field and team_code is None):
        if path is None:
            return "unknown", ""
        if p.in_scope(path):
            return "ok", ""
        return "denied", f"unit {path[-1]} is outside your unit scope ({p.unit})"
    if p.role is Role.field and team_code is not None:
        if team_code in p.teams:
            return "ok", ""
        if facts.memberships.get((team_code, p.sub)) is True and facts.volunteers.get(p.sub) is not False:
            return "ok", ""
        if team_code not in facts.teams:
            return "unknown", ""
        return "denied", f"you are not a member of team {team_code}"
    return "denied", f"role '{p.role.value}' may not record field activity"


def _team_covers(team: Document, path: list[str], facts: RegistryFacts) -> bool:
    """Is ``path`` the team's unit or below it? The team's unit counts as the unit it was merged into."""
    if team["unit_code"] in path:
        return True
    successor = facts.units.get(team["unit_code"], rm.ResolvedUnit(None, None)).unit
    return successor is not None and successor["code"] in path


def unit_closed(unit: Document, resolved_from: str | None) -> Conflict:
    """The problem of a record for a closed or split unit (named directly or through a merge)."""
    why = rm.why_closed(unit) or f"unit {unit['code']} takes no new records"
    if resolved_from:
        why = f"unit {resolved_from} was merged into {unit['code']}; {why}"
    extra: dict[str, Any] = {"unit_code": unit["code"]}
    if unit.get("successors"):
        extra["successors"] = list(unit["successors"])
    return Conflict(why, slug="unit-closed", title="The unit takes no new records", **extra)


def judge(refs: Refs, facts: RegistryFacts) -> Verdict:
    """Accept, hold as pending (a reference is not known yet) or reject a record.

    A merged unit's code is judged as its successor's, where the record is then stored; a closed or
    split unit refuses new records.
    """
    waiting: list[str] = []
    wait_keys: list[str] = []
    wrong: list[tuple[str, str]] = []
    closed: Conflict | None = None
    team = facts.teams.get(refs.team_code) if refs.team_code else None
    if refs.team_code and team is None:
        waiting.append(f"team {refs.team_code}")
    resolution = facts.units.get(refs.unit_code, rm.ResolvedUnit(None, None))
    unit, resolved_from = resolution.unit, resolution.resolved_from
    unit_code, path = refs.unit_code, None
    if unit is None:
        if team is not None and team["unit_code"] == refs.unit_code:
            path = list(team["unit_path"])  # the team's event came first; it tells the unit's path
        else:
            waiting.append(f"unit {refs.unit_code}")
    elif unit.get("status") == rm.MERGED:
        successor = unit.get("successor_code")
        waiting.append(f"unit {successor}, which unit {unit['code']} was merged into")
        wait_keys.append(f"unit:{successor}")
    else:
        unit_code, path = unit["code"], list(unit["path"])
        if resolved_from:
            wait_keys.append(f"unit:{unit_code}")
        if unit.get("status") == rm.CLOSED:
            closed = unit_closed(unit, resolved_from)
    if team is not None:
        if not team.get("active", True):
            wrong.append(("team_code", f"team {refs.team_code} is not active"))
        if path is not None and not _team_covers(team, path, facts):
            named = f"unit {refs.unit_code}" + (f" (merged into {unit_code})" if resolved_from else "")
            wrong.append(
                (
                    "unit_code",
                    f"{named} is not team {refs.team_code}'s unit ({team['unit_code']}) or below it",
                )
            )
    for vid in refs.volunteer_ids:
        active = facts.volunteers.get(vid)
        member = facts.memberships.get((refs.team_code or "", vid))
        if active is False:
            wrong.append(("volunteer_ids", f"volunteer {vid} has left"))
        elif member is False:
            wrong.append(("volunteer_ids", f"volunteer {vid} is no longer a member of team {refs.team_code}"))
        elif active is None or member is None:
            waiting.append(f"membership of volunteer {vid} in team {refs.team_code}")
    access, why = authorize(refs.submitter, refs.team_code, path, facts)
    if access == "denied":
        return Verdict("rejected", path, Forbidden(why, slug="out-of-scope"))
    if closed is not None:
        return Verdict("rejected", path, closed)
    if wrong:
        return Verdict(
            "rejected",
            path,
            InvalidInput(
                "; ".join(message for _, message in wrong),
                slug="invalid-reference",
                errors=[{"field": f, "message": m, "type": "reference"} for f, m in wrong],
            ),
        )
    if waiting or access == "unknown":
        return Verdict("pending", path, waiting_for=waiting or ["your membership or unit scope"], wait_keys=wait_keys)
    return Verdict("accepted", path, unit_code=unit_code, resolved_from=resolved_from)


def principal_doc(p: Principal) -> Document:
    return {"sub": p.sub, "role": p.role.value, "unit": p.unit, "teams": list(p.teams)}


def can_read(p: Principal, doc: Document, merged: Sequence[str] = ()) -> bool:
    """``merged``: units merged into the principal's subtree, whose old records it now reads."""
    if p.role is Role.admin:
        return True
    if doc.get("unit_path") and p.in_scope(doc["unit_path"]):
        return True
    if merged and doc.get("unit_path") and not set(doc["unit_path"]).isdisjoint(merged):
        return True
    if p.role is Role.field and doc.get("team_code") in p.teams:
        return True
    return p.role in WRITERS and doc.get("submitted_by", {}).get("sub") == p.sub


def read_scope(p: Principal, merged: Sequence[str] = ()) -> Document:
    """The list filter matching :func:`can_read`."""
    if p.role is Role.admin:
        return {}
    options: list[Document] = []
    if p.unit:
        options.append({"unit_path": {"$in": [p.unit, *merged]}} if merged else {"unit_path": p.unit})
    if p.role is Role.field and p.teams:
        options.append({"team_code": {"$in": list(p.teams)}})
    if p.role in WRITERS:
        options.append({"submitted_by.sub": p.sub})
    if not options:
        return {"_id": {"$in": []}}
    return options[0] if len(options) == 1 else {"$or": options}


@dataclass(frozen=True)
class BatchResult:
    client_ref: str | None
    status: Literal["created", "pending", "duplicate", "rejected"]
    id: str | None = None
    problem: dict[str, Any] | None = None
    resolved_from: str | None = None


class Intake(Generic[ItemT]):
    """What visits and outreach posts share: idempotent intake, pending records, voids, reads."""

    accepted_status = "recorded"
    noun = "record"
    kind = "record"
    item_model: type[ItemT]
    entity = "record"  # the audit log's name for this kind of record

    def __init__(
        self,
        records: RecordRepository,
        pending: PendingIndex,
        reader: RegistryReader,
        notify: Callable[[Sequence[str], Sequence[dict[str, Any]]], None],
    ) -> None:
        self.records = records
        self.pending = pending
        self.reader = reader
        self.notify = notify
        # How many pending records a registry change re-checks at a time (see on_registry_change).
        self.recheck_chunk = RECHECK_CHUNK
        self._adapter: TypeAdapter[ItemT] = TypeAdapter(self.item_model)

    # --- what differs between kinds of record ---------------------------------------------------

    def _refs(self, item: ItemT, submitter: Principal) -> Refs:
        raise NotImplementedError

    def _fields(self, item: ItemT) -> Document:
        raise NotImplementedError

    def _accepted_events(self, doc: Document) -> list[Envelope]:
        raise NotImplementedError

    def _voided_events(self, doc: Document, reason: str, now: datetime) -> list[Envelope]:
        raise NotImplementedError

    def _audit(
        self,
        actor: Principal | Actor,
        what: str,
        doc: Document,
        *,
        before: Document | None = None,
        after: Document | None = None,
        reason: str | None = None,
        moved_from: Document | None = None,
    ) -> Document:
        path = doc.get("unit_path") or [doc["unit_code"]]  # a pending record may not know its path yet
        return audit_entry(
            actor,
            f"{self.entity}.{what}",
            self.entity,
            doc["_id"],
            path,
            before=before,
            after=after,
            reason=reason,
            previous_unit_path=moved_from.get("unit_path") if moved_from else None,
        )

    # --- intake ----------------------------------------------------------------------------------

    def _doc_refs(self, doc: Document) -> Refs:
        return Refs(
            team_code=doc.get("team_code"),
            unit_code=doc["unit_code"],
            volunteer_ids=tuple(doc.get("volunteer_ids", ())),
            submitter=Principal(**doc["submitted_by"]),
        )

    def _new_doc(self, item: ItemT, client_ref: str, submitter: Principal, verdict: Verdict) -> Document:
        now = utcnow()
        accepted = verdict.outcome == "accepted"
        doc: Document = {
            "_id": record_id(self.kind, client_ref),
            "client_ref": client_ref,
            **self._fields(item),
            # A pending record keeps the code it named until it is judged again.
            **({"unit_code": verdict.unit_code} if accepted and verdict.unit_code else {}),
            "resolved_from": verdict.resolved_from if accepted else None,
            "unit_path": verdict.unit_path,
            "status": self.accepted_status if accepted else "pending",
            "submitted_by": principal_doc(submitter),
            "created_at": now,
            "recorded_at": now if accepted else None,
            "problem": None,
        }
        # Only the status: the figures as received are the record's own fields and its event's, and a
        # correction's entry keeps the values it replaced. Intake is the hot path, and every field of
        # the entry costs FerretDB time on each insert (the full figures doubled it).
        what = self.accepted_status if accepted else "held_pending"
        entry = self._audit(submitter, what, doc, after={"status": doc["status"]})
        return {**doc, **outbox_fields(self._accepted_events(doc) if accepted else []), **audit_fields([entry])}

    async def record(self, principal: Principal, item: ItemT) -> tuple[Document, Outcome]:
        require_role(principal, *WRITERS)
        client_ref = str(item.client_ref)  # type: ignore[attr-defined]
        refs = self._refs(item, principal)
        verdict = judge(refs, await load_facts(self.reader, [refs]))
        if verdict.outcome == "rejected":
            # A retry of a record accepted earlier stays a duplicate even if the registry moved on.
            existing = await self.records.get(record_id(self.kind, client_ref))
            if existing is not None and can_read(principal, existing):
                return existing, "duplicate"
            assert verdict.problem is not None
            raise verdict.problem
        doc = self._new_doc(item, client_ref, principal, verdict)
        if verdict.outcome == "pending":
            await self.pending.add(self.kind, [doc["_id"]], [pending_keys(refs, verdict)])
        stored, created = await self.records.insert_once(doc)
        if not created:
            if not can_read(principal, stored):
                raise Conflict(f"client_ref {client_ref} is already used by another {self.noun}")
            return stored, "duplicate"
        if verdict.outcome == "pending":
            # The registry event may have been applied between our read and our insert.
            stored = (await self._resolve([stored])).get(stored["_id"], stored)
        else:
            self.notify([], [stored])  # as inserted: the relay need not read it back
        return stored, "created" if stored["status"] == self.accepted_status else "pending"

    async def record_batch(self, principal: Principal, raw_items: Sequence[Any]) -> list[BatchResult]:
        require_role(principal, *WRITERS)
        results: list[BatchResult | None] = [None] * len(raw_items)
        parsed: list[tuple[int, ItemT, str, Refs]] = []
        for i, raw in enumerate(raw_items):
            try:
                item = self._adapter.validate_python(raw)
            except ValidationError as exc:
                ref = raw.get("client_ref") if isinstance(raw, dict) else None
                results[i] = BatchResult(
                    ref if isinstance(ref, str) else None, "rejected", problem=validation_problem(exc)
                )
                continue
            parsed.append((i, item, str(item.client_ref), self._refs(item, principal)))  # type: ignore[attr-defined]

        facts = await load_facts(self.reader, [r for *_, r in parsed])
        to_insert: list[tuple[int, Document, list[str]]] = []
        seen: set[str] = set()
        for i, item, ref, r in parsed:
            rid = record_id(self.kind, ref)
            if rid in seen:
                results[i] = BatchResult(ref, "duplicate", rid)
                continue
            verdict = judge(r, facts)
            if verdict.outcome == "rejected":
                assert verdict.problem is not None
                exists = await self.records.get(rid) is not None
                results[i] = (
                    BatchResult(ref, "duplicate", rid)
                    if exists
                    else BatchResult(ref, "rejected", problem=verdict.problem.to_problem())
                )
                continue
            seen.add(rid)
            to_insert.append((i, self._new_doc(item, ref, principal, verdict), pending_keys(r, verdict)))

        held = [(d, keys) for _, d, keys in to_insert if d["status"] == "pending"]
        await self.pending.add(self.kind, [d["_id"] for d, _ in held], [keys for _, keys in held])
        # Records sent before (a re-sent batch) collide on _id and are reported as duplicates.
        collided = await self.records.insert_new([d for _, d, _ in to_insert])
        fresh_pending = [d for d, _ in held if d["_id"] not in collided]
        resolved = await self._resolve(fresh_pending) if fresh_pending else {}
        for i, doc, _ in to_insert:
            rid = doc["_id"]
            if rid in collided:
                results[i] = BatchResult(doc["client_ref"], "duplicate", rid)
            else:
                now = resolved.get(rid, doc)
                outcome: Literal["created", "pending"] = (
                    "created" if now["status"] == self.accepted_status else "pending"
                )
                results[i] = BatchResult(doc["client_ref"], outcome, rid, resolved_from=now.get("resolved_from"))
        self.notify([], [d for _, d, _ in to_insert if d["_id"] not in collided and d["status"] != "pending"])
        return [r for r in results if r is not None]

    # --- pending records -------------------------------------------------------------------------

    async def _resolve(self, docs: Sequence[Document], *, again: bool = True) -> dict[str, Document]:
        """Re-check pending records; those whose references are now known are recorded or rejected.

        One read of the read model for all of them, and their writes concurrently: a registry batch
        can unblock thousands of records, and one at a time it held the read model's consumer for
        minutes at 10x (which left more records pending, which made the next batch slower still).
        """
        facts = await load_facts(self.reader.uncached(), [self._doc_refs(d) for d in docs])
        outcomes = await run_in_chunks([partial(self._settle, doc, facts) for doc in docs])
        changed = {doc["_id"]: new for doc, (new, _) in zip(docs, outcomes, strict=True) if new is not None}
        if changed:
            await self.pending.remove(self.kind, list(changed))
        emitted = [rid for rid, new in changed.items() if new["status"] == self.accepted_status]
        if emitted:
            self.notify(emitted, [])
        rewaiting = [doc["_id"] for doc, (_, rewait) in zip(docs, outcomes, strict=True) if rewait]
        if rewaiting and again:
            # A record now waits on a new key (a merged unit's successor), which may have been applied
            # (by another replica) before the index named it, so no listener looked: look once more.
            fresh = [d for d in (await self.records.get_many(rewaiting)).values() if d["status"] == "pending"]
            if fresh:
                changed |= await self._resolve(fresh, again=False)
        return changed

    async def _settle(self, doc: Document, facts: RegistryFacts) -> tuple[Document | None, bool]:
        """Judge one pending record again: ``(its new state if it was recorded or rejected, whether
        it now waits on a key it did not wait on before)``."""
        verdict = judge(self._doc_refs(doc), facts)
        expect = {"status": "pending", "rev": doc["rev"]}
        if verdict.outcome == "pending":
            # Every key it waits on now, and its entry written again should it be gone.
            keys = pending_keys(self._doc_refs(doc), verdict)
            rewait = await self.pending.wait_also(self.kind, doc["_id"], keys)
            if verdict.unit_path and doc.get("unit_path") != verdict.unit_path:
                await self.records.update_if(
                    doc["_id"], expect, {"$set": {"unit_path": verdict.unit_path}, "$inc": {"rev": 1}}
                )
            return None, rewait
        if verdict.outcome == "accepted":
            new = {
                **doc,
                "status": self.accepted_status,
                "unit_code": verdict.unit_code or doc["unit_code"],
                "resolved_from": verdict.resolved_from,
                "unit_path": verdict.unit_path,
                "recorded_at": utcnow(),
            }
            fields = ("status", "unit_code", "resolved_from", "unit_path", "recorded_at")
            update = outbox_update({"$set": {k: new[k] for k in fields}}, self._accepted_events(new))
            what = self.accepted_status
        else:
            assert verdict.problem is not None
            new = {**doc, "status": "rejected", "unit_path": verdict.unit_path, "problem": verdict.problem.to_problem()}
            update = {"$set": {k: new[k] for k in ("status", "unit_path", "problem")}, "$inc": {"rev": 1}}
            what = "rejected"
        before, after = changed_values(doc, new, ("status", "unit_code", "unit_path", "resolved_from"))
        if verdict.outcome == "rejected":
            after["problem"] = new["problem"]["detail"]
        # The service decides here, once the registry event it waited for arrived.
        entry = self._audit(SYSTEM, what, new, before=before, after=after)
        if await self.records.update_if(doc["_id"], expect, audit_update(update, [entry])):
            return new, False
        return None, False

    async def on_registry_change(self, changes: Sequence[tuple[str, str]]) -> None:
        """Listener for :meth:`shared.registry_view.RegistryView.on_change`.

        The records a batch names are read and settled :attr:`recheck_chunk` at a time: a read model
        far behind (the 100x campaign) hears of thousands of pending records in one batch, and all of
        them read at once held every document, its facts and its writes in memory together.
        """
        now = utcnow()
        entries = await self.pending.waiting_on(self.kind, {f"{kind}:{key}" for kind, key in changes})
        for i in range(0, len(entries), self.recheck_chunk):
            await self._recheck(entries[i : i + self.recheck_chunk], now)

    async def _recheck(self, entries: Sequence[tuple[str, datetime | None]], now: datetime) -> None:
        records = await self.records.get_many(rid for rid, _ in entries)
        waiting = [doc for doc in records.values() if doc["status"] == "pending"]
        # Resolved or voided; or never written (a crash between index and insert). A young entry
        # without its record is a record being stored right now: taking its entry away left it
        # pending for good once its own re-check still found a key missing.
        stale = [
            rid
            for rid, at in entries
            if ((doc := records.get(rid)) is not None and doc["status"] != "pending")
            or (doc is None and (at is None or now - at > UNWRITTEN_GRACE))
        ]
        if stale:
            await self.pending.remove(self.kind, stale)
        if waiting:
            await self._resolve(waiting)

    # --- reads and voids -------------------------------------------------------------------------

    async def known_unit(self, code: str) -> rm.KnownUnit:
        """How a record naming ``code`` is judged here now (through the same cache as intake)."""
        known = await self.reader.known_unit(code)
        if known is None:
            raise NotFound(f"unit {code} is not known to this service (yet)", slug="unit-not-found")
        return known

    async def _merged(self, principal: Principal) -> list[str]:
        if principal.role is Role.admin or not principal.unit:
            return []
        return await self.reader.merged_into(principal.unit)

    async def get(self, principal: Principal, record_id: str) -> Document:
        doc = await self.records.get(record_id)
        if doc is None or not can_read(principal, doc, await self._merged(principal)):
            raise NotFound(f"{self.noun} {record_id} not found")
        return doc

    async def _list(
        self, principal: Principal, query: Document, limit: int, cursor: str | None
    ) -> tuple[list[Document], str | None]:
        scope = read_scope(principal, await self._merged(principal))
        combined = {"$and": [scope, query]} if scope and query else scope or query
        return await self.records.page(combined, limit, cursor)

    async def _check_may_change(self, principal: Principal, doc: Document) -> None:
        require_role(principal, *WRITERS)
        refs = Refs(doc.get("team_code"), doc["unit_code"], (), principal)
        access, why = authorize(principal, refs.team_code, doc.get("unit_path"), await load_facts(self.reader, [refs]))
        if access != "ok" and doc.get("submitted_by", {}).get("sub") != principal.sub:
            raise Forbidden(why or f"you may not change this {self.noun}", slug="out-of-scope")

    async def void(self, principal: Principal, record_id: str, reason: str) -> Document:
        for _ in range(MAX_CAS_ATTEMPTS):
            doc = await self.get(principal, record_id)
            await self._check_may_change(principal, doc)
            if doc["status"] == "voided":
                return doc  # voiding twice is the same request arriving twice
            if doc["status"] == "rejected":
                raise Conflict(f"{self.noun} {record_id} was rejected and never counted", slug="rejected")
            now = utcnow()
            changes = {"status": "voided", "voided_at": now, "void_reason": reason}
            events = self._voided_events(doc, reason, now) if doc["status"] == self.accepted_status else []
            entry = self._audit(
                principal, "voided", doc, before={"status": doc["status"]}, after={"status": "voided"}, reason=reason
            )
            update = audit_update(outbox_update({"$set": changes}, events), [entry])
            if await self.records.update_if(record_id, {"status": doc["status"], "rev": doc["rev"]}, update):
                if events:
                    self.notify([record_id], [])
                return {**doc, **changes}
        raise Conflict(f"{self.noun} {record_id} kept changing; retry", slug="concurrent-change")


# --- visits ------------------------------------------------------------------------------------------


def visit_figures(doc: Document) -> ev.VisitFigures:
    return ev.VisitFigures(
        unit_code=doc["unit_code"],
        unit_path=doc["unit_path"],
        visited_on=date.fromisoformat(doc["visited_on"]),
        households=doc["households"],
        people=ev.People(**doc["people"]),
        services=ev.Services(**doc["services"]),
        area=doc["area"],
        team_code=doc["team_code"],
    )


def visit_fields(item: VisitFields) -> Document:
    return {
        "team_code": item.team_code,
        "unit_code": item.unit_code,
        "visited_on": item.visited_on.isoformat(),
        "setting": item.setting.value,
        "area": item.area.value,
        "household_ref": item.household_ref,
        "households": item.households,
        "people": item.people.model_dump(),
        "services": item.services.model_dump(),
        "volunteer_ids": list(item.volunteer_ids),
        "notes": item.notes,
    }


class VisitService(Intake[VisitIn]):
    accepted_status = "recorded"
    noun = "visit"
    kind = "visit"
    item_model = VisitIn
    entity = "visit"

    def _refs(self, item: VisitIn, submitter: Principal) -> Refs:
        return Refs(item.team_code, item.unit_code, tuple(item.volunteer_ids), submitter)

    def _fields(self, item: VisitIn) -> Document:
        return visit_fields(item)

    def _accepted_events(self, doc: Document) -> list[Envelope]:
        payload = ev.VisitRecorded(
            visit_id=doc["_id"],
            client_ref=doc["client_ref"],
            team_code=doc["team_code"],
            setting=doc["setting"],
            area=doc["area"],
            household_ref=doc["household_ref"],
            volunteer_ids=doc["volunteer_ids"],
            recorded_at=doc["recorded_at"],
            figures=visit_figures(doc),
        )
        return [make_event(ev.VISIT_RECORDED, payload, source=SOURCE, key=doc["_id"])]

    def _voided_events(self, doc: Document, reason: str, now: datetime) -> list[Envelope]:
        payload = ev.VisitVoided(visit_id=doc["_id"], reason=reason, voided_at=now, figures=visit_figures(doc))
        return [make_event(ev.VISIT_VOIDED, payload, source=SOURCE, key=doc["_id"])]

    async def list_visits(
        self,
        principal: Principal,
        *,
        unit: str | None,
        team: str | None,
        date_from: date | None,
        date_to: date | None,
        setting: str | None,
        status: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Document], str | None]:
        query = list_filter(
            "visited_on", date_from, date_to, unit_path=unit, team_code=team, setting=setting, status=status
        )
        return await self._list(principal, query, limit, cursor)

    async def correct(self, principal: Principal, visit_id: str, body: VisitCorrectionIn) -> Document:
        for _ in range(MAX_CAS_ATTEMPTS):
            doc = await self.get(principal, visit_id)
            await self._check_may_change(principal, doc)
            if doc["status"] == "voided":
                raise Conflict(f"visit {visit_id} is voided and cannot be corrected", slug="visit-voided")
            if doc["status"] != "recorded":
                raise Conflict(f"visit {visit_id} is {doc['status']}; only recorded visits can be corrected")
            if body.client_ref is not None and str(body.client_ref) != doc["client_ref"]:
                raise InvalidInput("client_ref cannot change in a correction", slug="client-ref-changed")
            refs = Refs(body.team_code, body.unit_code, tuple(body.volunteer_ids), principal)
            verdict = judge(refs, await load_facts(self.reader, [refs]))
            if verdict.outcome == "rejected":
                assert verdict.problem is not None
                raise verdict.problem
            if verdict.outcome == "pending":
                raise InvalidInput(
                    "not known to this service yet: " + ", ".join(verdict.waiting_for) + "; retry later",
                    slug="reference-not-known",
                )
            fields = {**visit_fields(body), "unit_code": verdict.unit_code, "unit_path": verdict.unit_path}
            if all(doc.get(k) == v for k, v in fields.items()):
                # A retried correction changes nothing; the answer still says how its unit was resolved.
                return {**doc, "resolved_from": verdict.resolved_from}
            now = utcnow()
            fields["resolved_from"] = verdict.resolved_from
            new = {**doc, **fields, "corrected_at": now}
            payload = ev.VisitCorrected(
                visit_id=visit_id,
                team_code=new["team_code"],
                setting=new["setting"],
                area=new["area"],
                household_ref=new["household_ref"],
                volunteer_ids=new["volunteer_ids"],
                corrected_at=now,
                figures=visit_figures(new),
                previous=visit_figures(doc),
            )
            event = make_event(ev.VISIT_CORRECTED, payload, source=SOURCE, key=visit_id)
            before, after = changed_values(doc, new, ("resolved_from", *VISIT_AUDITED))
            entry = self._audit(principal, "corrected", new, before=before, after=after, moved_from=doc)
            update = audit_update(outbox_update({"$set": {**fields, "corrected_at": now}}, [event]), [entry])
            if await self.records.update_if(visit_id, {"status": "recorded", "rev": doc["rev"]}, update):
                self.notify([visit_id], [])
                return new
        raise Conflict(f"visit {visit_id} kept changing; retry", slug="concurrent-change")


# --- outreach ----------------------------------------------------------------------------------------


class OutreachService(Intake[OutreachIn]):
    accepted_status = "published"
    noun = "outreach post"
    kind = "outreach"
    item_model = OutreachIn
    entity = "outreach_post"

    def _refs(self, item: OutreachIn, submitter: Principal) -> Refs:
        return Refs(item.team_code, item.unit_code, (), submitter)

    def _fields(self, item: OutreachIn) -> Document:
        return {
            "unit_code": item.unit_code,
            "team_code": item.team_code,
            "channel": item.channel.value,
            "published_on": item.published_on.isoformat(),
            "title": item.title,
            "url": item.url,
        }

    def _accepted_events(self, doc: Document) -> list[Envelope]:
        payload = ev.OutreachPublished(
            post_id=doc["_id"],
            client_ref=doc["client_ref"],
            unit_code=doc["unit_code"],
            unit_path=doc["unit_path"],
            team_code=doc["team_code"],
            channel=doc["channel"],
            published_on=date.fromisoformat(doc["published_on"]),
            title=doc["title"],
            url=doc["url"],
        )
        return [make_event(ev.OUTREACH_PUBLISHED, payload, source=SOURCE, key=doc["_id"])]

    def _voided_events(self, doc: Document, reason: str, now: datetime) -> list[Envelope]:
        payload = ev.OutreachVoided(
            post_id=doc["_id"],
            reason=reason,
            unit_code=doc["unit_code"],
            unit_path=doc["unit_path"],
            team_code=doc["team_code"],
            channel=doc["channel"],
            published_on=date.fromisoformat(doc["published_on"]),
        )
        return [make_event(ev.OUTREACH_VOIDED, payload, source=SOURCE, key=doc["_id"])]

    async def list_posts(
        self,
        principal: Principal,
        *,
        unit: str | None,
        team: str | None,
        channel: str | None,
        date_from: date | None,
        date_to: date | None,
        status: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Document], str | None]:
        query = list_filter(
            "published_on", date_from, date_to, unit_path=unit, team_code=team, channel=channel, status=status
        )
        return await self._list(principal, query, limit, cursor)
