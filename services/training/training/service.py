"""Training domain rules: courses, sessions, participants and the counting rule of DOMAIN.md.

Counting (``participants_counted`` / ``completions_counted`` on the course document):
- A course is a *roster* course as soon as anyone is enrolled; it then counts enrolments. Until then
  it is a *head-count* course and counts the largest session head count so far. The first enrolment
  therefore switches the figure from the head count to 1 (the event's Change says so).
- Completion replaces the figures: head-count courses take ``final_participants`` (default: the
  largest head count) and ``final_completions`` (default 0). Roster courses keep their enrolment
  (``final_participants``, if sent, must equal it) and count ``final_completions`` when sent: it
  must be at least the participants marked complete (nobody is un-completed) and at most the
  enrolment; it covers people who finished without being marked one by one.
- Cancelling sets both figures to 0.

Crash safety without transactions (enrolments, sessions, participant completions):
1. the child documents (participants, or sessions) are inserted, idempotent by ``client_ref``, not
   yet applied (``counted: false``): a request's participants or sessions in one insert;
2. the course document is updated with one compare-and-set on its ``rev``: counters, one event per
   child and ``last_applied = {kind, ids}`` naming every child it counted, in one single-document
   write however many children a request brings;
3. those children are flagged as applied, in one write.
Before any course write moves ``last_applied`` on, every child it names is flagged (roll-forward), so
an unflagged child is either not yet counted or is one of ``last_applied.ids``. A retry reads the
course *before* the children: a flagged child, or one ``last_applied`` names, is already counted
(finish step 3, answer as a duplicate); the rest are counted by a compare-and-set that only succeeds
if the course did not change since that read, so a count can never be applied twice. Children the
course refuses (past its capacity, closed, a session outside its dates) are deleted while unflagged
and unnamed. The course document stays small however many participants it has: the marker names one
request's children.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

from shared.audit import Actor, audit_entry, system_actor
from shared.auth import READ_ROLES, Principal, Role, require_role, require_scope
from shared.batch import BatchStatus
from shared.concurrency import run_in_chunks
from shared.contracts import training as ev
from shared.contracts.common import Change, ParticipantGroup, TeamKind
from shared.envelope import Envelope, make_event
from shared.errors import Conflict, Forbidden, InvalidInput, NotFound, ProblemError, validation_problem
from shared.logging import get_logger
from shared.mongo import Document
from shared.registry_view import MERGED, KnownUnit, RegistryView, why_closed
from training.repository import COURSES, TrainingRepository
from training.schemas import (
    BatchItemResult,
    CancelIn,
    CompleteIn,
    CourseIn,
    HeadCount,
    ParticipantIn,
    SessionIn,
)

log = get_logger(__name__)

LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")
SOURCE = "/training"
WRITE_ROLES = (Role.admin, Role.manager, Role.field)
OPEN = ("scheduled", "running")
CAS_ATTEMPTS = 100
CHILD_NAMESPACE = uuid.UUID("6b0f8f3e-2f7a-4d1e-9a39-0e5c1d2b7a10")


FLAGGED_MEMORY = 10_000
SYSTEM = system_actor("training")
# What a course's audit entries show, and its figures (before and after a cancel or completion).
COURSE_AUDITED = (
    "title",
    "team_code",
    "unit_code",
    "unit_path",
    "audience",
    "mode",
    "topics",
    "starts_on",
    "ends_on",
    "capacity",
    "status",
)
FIGURES = ("status", "participants_counted", "completions_counted")
SESSION_AUDITED = ("course_code", "held_on", "duration_minutes", "attendance_kind", "attendance")

Body = TypeVar("Body", bound=BaseModel)


def local_today() -> date:
    return datetime.now(LOCAL_TZ).date()


def _now() -> datetime:
    """Now, at the millisecond precision BSON keeps, so a stored record reads back unchanged."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def child_id(kind: str, client_ref: str) -> str:
    """Participant and session ids derive from the client_ref: FerretDB v1 only looks up ``_id`` without
    scanning, so a retry finds its earlier copy by primary key."""
    return uuid.uuid5(CHILD_NAMESPACE, f"{kind}:{client_ref}").hex


def participants_figure(enrolled: int, largest_head_count: int) -> int:
    """course_participants before completion: enrolments, or the largest head count if nobody enrolled."""
    return enrolled if enrolled > 0 else largest_head_count


@dataclass(frozen=True)
class Verdict:
    """Outcome of checking a course's team and unit against the registry read model."""

    outcome: str  # ok | pending | no_teacher | invalid | out_of_scope | closed
    detail: str = ""
    slug: str = ""
    unit_path: list[str] | None = None
    # The unit the course is scheduled in: the named one, or the successor it was merged into (then
    # ``resolved_from`` is the named code).
    unit_code: str | None = None
    resolved_from: str | None = None


def _course_ref(c: Document) -> ev.CourseRef:
    return ev.CourseRef(
        course_code=c["_id"],
        unit_code=c["unit_code"],
        unit_path=c["unit_path"],
        audience=c["audience"],
        starts_on=date.fromisoformat(c["starts_on"]),
        ends_on=date.fromisoformat(c["ends_on"]),
        mode=c["mode"],
        team_code=c["team_code"],
    )


def _event(event_type: str, payload: BaseModel, code: str) -> Envelope:
    return make_event(event_type, payload, source=SOURCE, key=code)


def _scheduled_event(c: Document) -> Envelope:
    return _event(
        ev.COURSE_SCHEDULED,
        ev.CourseScheduled(
            course=_course_ref(c),
            client_ref=c["client_ref"],
            title=c["title"],
            team_code=c["team_code"],
            mode=c["mode"],
            topics=c["topics"],
            capacity=c.get("capacity"),
        ),
        c["_id"],
    )


def _scope_path(c: Document) -> list[str]:
    return list(c.get("unit_path") or [c["unit_code"]])


def _audit(
    actor: Principal | Actor,
    action: str,
    entity_id: str,
    c: Document,
    *,
    before: Document | None = None,
    after: Document | None = None,
    reason: str | None = None,
) -> Document:
    """An audit entry about course ``c`` or one of its participants or sessions (``action`` names which)."""
    entity = action.split(".", 1)[0]
    return audit_entry(actor, action, entity, entity_id, _scope_path(c), before=before, after=after, reason=reason)


def _why_not_open(c: Document, action: str) -> ProblemError | None:
    status = c["status"]
    if status in OPEN:
        return None
    if status == "pending":
        return Conflict(
            f"course {c['_id']} is waiting for the registry to confirm its team and unit; {action} later",
            slug="course-pending",
        )
    return Conflict(f"course {c['_id']} is {status}; cannot {action}", slug="course-closed")


def _require_open(c: Document, action: str) -> None:
    problem = _why_not_open(c, action)
    if problem is not None:
        raise problem


def _session_doc(code: str, body: SessionIn) -> Document:
    """The session document of ``body``, not counted yet."""
    attendance = body.attendance
    roster = None if isinstance(attendance, HeadCount) else attendance.participant_ids
    return {
        "_id": child_id("session", body.client_ref),
        "client_ref": body.client_ref,
        "course_code": code,
        "held_on": body.held_on.isoformat(),
        "duration_minutes": body.duration_minutes,
        "attendance_kind": "head_count" if roster is None else "roster",
        "attendance": attendance.count if isinstance(attendance, HeadCount) else len(attendance.participant_ids),
        "participant_ids": roster,
        "counted": False,
        "recorded_at": _now(),
    }


def _roster_ids(sessions: Iterable[Document]) -> set[str]:
    return {i for s in sessions for i in s.get("participant_ids") or ()}


def _session_refusal(c: Document, s: Document, attending: set[str]) -> ProblemError | None:
    """Why course ``c`` does not take session ``s``, if it does not. ``attending``: the participants
    counted in ``c`` among those ``s`` names (others may be in it too)."""
    closed = _why_not_open(c, "record sessions")
    if closed is not None:
        return closed
    code = c["_id"]
    held_on = date.fromisoformat(s["held_on"])
    if not (date.fromisoformat(c["starts_on"]) <= held_on <= date.fromisoformat(c["ends_on"])):
        return InvalidInput(
            f"held_on {held_on} is outside the course dates {c['starts_on']}..{c['ends_on']}",
            slug="session-outside-course",
        )
    if held_on > local_today():
        return InvalidInput(f"held_on {held_on} is in the future", slug="session-in-future")
    if s["attendance_kind"] == "head_count":
        count = s["attendance"]
        if c["enrolled"] > 0 and count > c["enrolled"]:
            return InvalidInput(
                f"attendance {count} is larger than the {c['enrolled']} enrolled in course {code}",
                slug="attendance-over-enrolment",
            )
        return None
    unknown = [i for i in s["participant_ids"] if i not in attending]
    if unknown:
        return InvalidInput(
            f"not enrolled in course {code}: {', '.join(unknown[:10])}",
            slug="participant-not-enrolled",
            participant_ids=unknown[:100],
        )
    return None


@dataclass(frozen=True)
class Planned:
    """One compare-and-set of a course: its update and events, the pending children it counts (in
    order) and those the course refuses, with why."""

    update: dict[str, Any]
    events: list[Envelope]
    counted: list[str]
    refused: dict[str, ProblemError]


@dataclass(frozen=True)
class Applied:
    """Children counted into their course by this call, and those refused; any other was counted before."""

    counted: list[str]
    refused: dict[str, ProblemError]


# What a course write makes of the children not counted yet (as of the course document given).
Plan = Callable[[Document, list[str]], Awaitable[Planned]]
# One participant or session of a request: the stored document and whether this request counted it,
# or why not.
Outcome = tuple[Document, bool] | ProblemError


def _stored_outcome(found: Document | None, code: str, client_ref: str, reused: str) -> Outcome | None:
    """The answer for a child stored by an earlier request, if it has one: refused (``client_ref``
    ``reused`` its course) when it belongs to another course, a duplicate when counted; None when it
    is still to count."""
    if found is None:
        return None
    if found["course_code"] != code:
        return Conflict(f"client_ref {client_ref} {reused} {found['course_code']}", slug="client-ref-reused")
    if found["counted"]:
        return (found, False)
    return None


class TrainingService:
    def __init__(self, repo: TrainingRepository, view: RegistryView, notify: Callable[[str, list[str]], None]) -> None:
        self._repo = repo
        self._view = view
        self._notify = notify
        # Children this process flagged as applied (step 3). Flags are never cleared, so the
        # roll-forward of ``last_applied`` can skip a write it knows is done; bounded, oldest out.
        self._flagged: dict[tuple[str, str], None] = {}

    # --- authorization -----------------------------------------------------------------------------

    async def _merged(self, p: Principal) -> list[str]:
        """Units merged into the principal's subtree: their courses keep the old path, and the
        successor's office now answers for them."""
        if p.role is Role.admin or not p.unit:
            return []
        return await self._view.merged_into(p.unit)

    async def _require_scope(self, p: Principal, c: Document) -> None:
        path = _scope_path(c)
        if p.in_scope(path) or not set(path).isdisjoint(await self._merged(p)):
            return
        require_scope(p, path, what=f"course {c['_id']}")  # raises, with the usual problem

    async def _authorize_read(self, p: Principal, c: Document) -> None:
        require_role(p, *READ_ROLES)
        if p.role is Role.field and c["team_code"] in p.teams:
            return
        await self._require_scope(p, c)

    async def _authorize_write(self, p: Principal, c: Document) -> None:
        require_role(p, *WRITE_ROLES)
        if p.role is Role.field:
            if c["team_code"] not in p.teams:
                raise Forbidden(
                    f"course {c['_id']} belongs to team {c['team_code']}, not one of yours", slug="not-your-team"
                )
            return
        await self._require_scope(p, c)

    async def known_unit(self, code: str) -> KnownUnit:
        """How a course naming ``code`` is judged here now."""
        known = await self._view.known_unit(code)
        if known is None:
            raise NotFound(f"unit {code} is not known to this service (yet)", slug="unit-not-found")
        return known

    async def _course_for(self, p: Principal, code: str, *, write: bool) -> Document:
        c = await self._repo.get_course(code)
        if c is None:
            raise NotFound(f"course {code} does not exist")
        await (self._authorize_write if write else self._authorize_read)(p, c)
        return c

    # --- registry checks ---------------------------------------------------------------------------

    async def _team_covers(self, team: Document, path: list[str]) -> bool:
        """Is ``path`` in the team's unit subtree? A merged team unit counts as its successor, because
        the team's move to the successor may not have reached this read model yet."""
        if team["unit_code"] in path:
            return True
        successor, _ = await self._view.resolve_unit(team["unit_code"])
        return successor is not None and successor["code"] in path

    async def _check_refs(self, team_code: str, unit_code: str, creator: Document) -> Verdict:
        unit, resolved_from = await self._view.resolve_unit(unit_code)
        why = why_closed(unit) if unit is not None else None
        if unit is not None and why is not None:
            if resolved_from:
                why = f"unit {resolved_from} was merged into {unit['code']}; {why}"
            return Verdict("closed", why, "unit-closed")
        team = await self._view.team(team_code)
        if team is None or "kind" not in team:  # a membership event alone only tells us the team's members
            return Verdict("pending", f"team {team_code} is not known to the registry yet")
        if unit is None:
            return Verdict("pending", f"unit {unit_code} is not known to the registry yet")
        if unit.get("status") == MERGED:
            return Verdict(
                "pending",
                f"unit {unit['successor_code']}, which unit {unit['code']} was merged into, "
                "is not known to the registry yet",
            )
        path = list(unit["path"])
        named = f"unit {unit_code}" + (f" (merged into {unit['code']})" if resolved_from else "")
        if not team.get("active", False):
            return Verdict("invalid", f"team {team_code} is not active", "team-inactive")
        if not await self._team_covers(team, path):
            return Verdict(
                "invalid",
                f"{named} is outside team {team_code}'s unit subtree ({team['unit_code']})",
                "unit-outside-team",
            )
        if creator.get("role") == Role.manager.value and creator.get("unit") not in path:
            return Verdict("out_of_scope", f"{named} is outside the creator's scope", "out-of-scope")
        if team["kind"] != TeamKind.literacy.value and not await self._view.team_has_skill(team_code, "teaching"):
            return Verdict(
                "no_teacher",
                f"team {team_code} is not a literacy team and no current member has the teaching skill",
                "team-cannot-teach",
            )
        return Verdict("ok", unit_path=path, unit_code=unit["code"], resolved_from=resolved_from)

    async def revalidate(self, c: Document) -> None:
        """Re-check a pending course; promote it (with CourseScheduled) or reject it."""
        v = await self._check_refs(c["team_code"], c["unit_code"], c.get("created_by", {}))
        code = c["_id"]
        if v.outcome in ("pending", "no_teacher"):
            if c.get("problem") != v.detail:
                await self._repo.update_course(code, {"status": "pending"}, {"$set": {"problem": v.detail}}, [])
            await self._repo.hold(code)  # its entry again, should a listener have taken it before the insert
            return
        if v.outcome in ("invalid", "out_of_scope", "closed"):
            entry = _audit(
                SYSTEM,
                "course.rejected",
                code,
                c,
                before={"status": "pending"},
                after={"status": "rejected"},
                reason=v.detail,
            )
            await self._repo.update_course(
                code, {"status": "pending"}, {"$set": {"status": "rejected", "problem": v.detail}}, [], [entry]
            )
            await self._repo.release(code)
            log.info("course_rejected", course=code, reason=v.detail)
            return
        changes = {
            "status": "scheduled",
            "unit_code": v.unit_code or c["unit_code"],
            "resolved_from": v.resolved_from,
            "unit_path": v.unit_path,
            "problem": None,
        }
        before = {k: c.get(k) for k in ("status", "unit_code", "unit_path")}
        after = {k: changes[k] for k in ("status", "unit_code", "unit_path")}
        entry = _audit(SYSTEM, "course.scheduled", code, {**c, **changes}, before=before, after=after)
        if await self._repo.update_course(
            code, {"status": "pending"}, {"$set": changes}, [_scheduled_event({**c, **changes})], [entry]
        ):
            self._notify(COURSES, [code])
        await self._repo.release(code)  # scheduled now, by this call or another replica's

    async def on_registry_change(self, changes: Sequence[tuple[str, str]]) -> None:
        """RegistryView listener: re-check the pending courses a batch of changes may unblock."""
        teams = {key.split("/", 1)[0] for kind, key in changes if kind in ("team", "membership")}
        # Any unit: a course naming a merged unit waits on its successor, which is another key.
        units = any(kind == "unit" for kind, _ in changes)
        volunteers = {key for kind, key in changes if kind == "volunteer"}  # a member may have learnt to teach
        if not (teams or units or volunteers):
            return
        courses = await self._repo.pending_courses()
        if not units:
            # A volunteer's change matters to the teams it is a member of (a membership that arrives
            # later is a change of its own); re-checking every pending course for every roster batch
            # held training's read model minutes behind at 10x.
            others = {c["team_code"] for c in courses} - teams
            teams |= await self._view.teams_with_members(others, volunteers) if volunteers and others else set()
            courses = [c for c in courses if c["team_code"] in teams]
        # Concurrently: one at a time, hundreds of courses held the read model's consumer at 10x.
        await run_in_chunks([partial(self.revalidate, c) for c in courses])

    # --- courses -----------------------------------------------------------------------------------

    async def create_course(self, p: Principal, body: CourseIn) -> tuple[Document, bool]:
        require_role(p, *WRITE_ROLES)
        if p.role is Role.field and body.team_code not in p.teams:
            raise Forbidden(f"team {body.team_code} is not one of your teams", slug="not-your-team")
        # A retried upload carries the same code and client_ref: look it up by _id (the code). A
        # retry that changed the code still lands on the client_ref unique index at insert.
        existing = await self._repo.get_course(body.code)
        if existing is not None and existing.get("client_ref") == body.client_ref:
            await self._authorize_read(p, existing)
            return existing, False
        creator = {"sub": p.sub, "role": p.role.value, "unit": p.unit}
        v = await self._check_refs(body.team_code, body.unit_code, creator)
        if v.outcome == "out_of_scope":
            raise Forbidden(v.detail, slug=v.slug)
        if v.outcome == "closed":
            raise Conflict(v.detail, slug=v.slug, title="The unit takes no new records")
        if v.outcome in ("invalid", "no_teacher"):
            raise InvalidInput(v.detail, slug=v.slug)
        doc: Document = {
            "_id": body.code,
            "client_ref": body.client_ref,
            "title": body.title,
            "team_code": body.team_code,
            # A pending course keeps the code it named until the registry decides it.
            "unit_code": v.unit_code or body.unit_code,
            "resolved_from": v.resolved_from,
            "unit_path": v.unit_path,
            "audience": body.audience.value,
            "mode": body.mode.value,
            "topics": [t.value for t in body.topics],
            "starts_on": body.starts_on.isoformat(),
            "ends_on": body.ends_on.isoformat(),
            "capacity": body.capacity,
            "status": "scheduled" if v.outcome == "ok" else "pending",
            "problem": v.detail or None,
            "created_by": creator,
            "created_at": _now(),
            "enrolled": 0,
            "completed": 0,
            "largest_head_count": 0,
            "sessions_held": 0,
            "participants_counted": 0,
            "completions_counted": 0,
            "started_on": None,
            "final_participants": None,
            "final_completions": None,
            "cancel_reason": None,
            "last_applied": None,
        }
        events = [_scheduled_event(doc)] if v.outcome == "ok" else []
        action = "course.scheduled" if v.outcome == "ok" else "course.held_pending"
        entry = _audit(p, action, body.code, doc, after={k: doc[k] for k in COURSE_AUDITED})
        if not events:
            await self._repo.hold(body.code)
        stored, created = await self._repo.insert_course(doc, events, [entry])
        if not created:
            await self._authorize_read(p, stored)
            return stored, False
        if events:
            self._notify(COURSES, [stored["_id"]])
        else:
            # The registry event may have been applied between our check and our insert, in which
            # case its listener found nothing pending: look again now that the course is stored.
            await self.revalidate(stored)
            stored = await self._repo.get_course(body.code) or stored
        return stored, True

    async def get_course(self, p: Principal, code: str) -> Document:
        return await self._course_for(p, code, write=False)

    async def list_courses(
        self, p: Principal, filters: dict[str, Any], cursor: str | None, limit: int
    ) -> list[Document]:
        require_role(p, *READ_ROLES)
        query: dict[str, Any] = {}
        for field in ("team_code", "audience", "mode", "status"):
            if filters.get(field) is not None:
                query[field] = filters[field]
        if filters.get("unit_code"):
            query["unit_path"] = filters["unit_code"]
        dates: dict[str, str] = {}
        if filters.get("starts_from") is not None:
            dates["$gte"] = filters["starts_from"].isoformat()
        if filters.get("starts_to") is not None:
            dates["$lte"] = filters["starts_to"].isoformat()
        if dates:
            query["starts_on"] = dates
        scope: dict[str, Any] = {}
        if p.role is Role.field:
            team = filters.get("team_code")
            if team is not None and team not in p.teams:
                raise Forbidden(f"team {team} is not one of your teams", slug="not-your-team")
            if team is None:
                query["team_code"] = {"$in": list(p.teams)}
        elif p.role is not Role.admin:
            if p.unit is None:
                raise Forbidden("your token has no unit scope", slug="out-of-scope")
            merged = await self._merged(p)
            scope = {"unit_path": {"$in": [p.unit, *merged]}} if merged else {"unit_path": p.unit}
        if scope and query:
            query = {"$and": [scope, query]}
        else:
            query = scope or query
        return await self._repo.list_courses(query, cursor, limit)

    async def cancel_course(self, p: Principal, code: str, body: CancelIn) -> Document:
        for _ in range(CAS_ATTEMPTS):
            c = await self._course_for(p, code, write=True)
            if c["status"] == "cancelled":
                return c
            if c["status"] in ("completed", "rejected"):
                raise Conflict(f"course {code} is {c['status']}; it cannot be cancelled", slug="course-closed")
            events: list[Envelope] = []
            if c["status"] != "pending":  # a pending course was never announced, so nothing to retract
                events.append(
                    _event(
                        ev.COURSE_CANCELLED,
                        ev.CourseCancelled(
                            course=_course_ref(c),
                            reason=body.reason,
                            participants=Change(before=c["participants_counted"], after=0),
                            completions=Change(before=c["completions_counted"], after=0),
                        ),
                        code,
                    )
                )
            update = {
                "$set": {
                    "status": "cancelled",
                    "cancel_reason": body.reason,
                    "participants_counted": 0,
                    "completions_counted": 0,
                }
            }
            entry = _audit(
                p,
                "course.cancelled",
                code,
                c,
                before={k: c[k] for k in FIGURES},
                after={k: update["$set"][k] for k in FIGURES},
                reason=body.reason,
            )
            if await self._repo.update_course(code, {"rev": c["rev"]}, update, events, [entry]):
                self._notify(COURSES, [code])
                return await self._course_for(p, code, write=False)
        raise Conflict(f"course {code} is busy; retry", slug="course-busy")

    async def complete_course(self, p: Principal, code: str, body: CompleteIn) -> Document:
        for _ in range(CAS_ATTEMPTS):
            c = await self._course_for(p, code, write=True)
            if c["status"] == "completed":
                return c  # idempotent: same answer, no second event
            _require_open(c, "complete it")
            enrolled, marked = c["enrolled"], c["completed"]
            if enrolled > 0:
                if body.final_participants is not None and body.final_participants != enrolled:
                    raise InvalidInput(
                        f"course {code} counts its roster: final_participants must equal the {enrolled} enrolled",
                        slug="final-participants-mismatch",
                    )
                final_p = enrolled
                final_c = marked if body.final_completions is None else body.final_completions
                if final_c < marked:
                    raise InvalidInput(
                        f"final_completions ({final_c}) is below the {marked} participants marked complete",
                        slug="final-completions-too-low",
                    )
            else:
                final_p = c["largest_head_count"] if body.final_participants is None else body.final_participants
                final_c = 0 if body.final_completions is None else body.final_completions
            if final_c > final_p:
                raise InvalidInput(
                    f"final_completions ({final_c}) exceeds the participants ({final_p})",
                    slug="final-completions-too-high",
                )
            event = _event(
                ev.COURSE_COMPLETED,
                ev.CourseCompleted(
                    course=_course_ref(c),
                    final_participants=final_p,
                    final_completions=final_c,
                    participants=Change(before=c["participants_counted"], after=final_p),
                    completions=Change(before=c["completions_counted"], after=final_c),
                ),
                code,
            )
            update = {
                "$set": {
                    "status": "completed",
                    "final_participants": final_p,
                    "final_completions": final_c,
                    "participants_counted": final_p,
                    "completions_counted": final_c,
                    "completed_at": _now(),
                }
            }
            entry = _audit(
                p,
                "course.completed",
                code,
                c,
                before={k: c[k] for k in FIGURES},
                after={k: update["$set"][k] for k in (*FIGURES, "final_participants", "final_completions")},
            )
            if await self._repo.update_course(code, {"rev": c["rev"]}, update, [event], [entry]):
                self._notify(COURSES, [code])
                return await self._course_for(p, code, write=False)
        raise Conflict(f"course {code} is busy; retry", slug="course-busy")

    # --- the three-step apply (see the module docstring) -------------------------------------------

    @staticmethod
    def _child_applied(kind: str, child: Document) -> bool:
        return child.get("status") == "completed" if kind == "complete" else bool(child.get("counted"))

    @staticmethod
    def _named(c: Document, kind: str) -> set[str]:
        """The children course ``c`` counted last: counted, even while they are not flagged."""
        last = c.get("last_applied")
        return set(last["ids"]) if last and last["kind"] == kind else set()

    async def _apply_to_course(
        self, c: Document, kind: str, ids: Sequence[str], plan: Plan, by: Principal | None = None
    ) -> Applied:
        """Count stored children into course ``c`` exactly once, all in one compare-and-set.

        ``c`` must have been read before any of the children (the first attempt compares with it).
        ``by`` (who marked a participant complete) rides in the marker, for the audit entry that step 3
        writes with the participant's flag, whichever request finishes step 3.
        """
        code = c["_id"]
        marker: Document = {"kind": kind}
        if by is not None:
            marker["by"] = {"sub": by.sub, "role": by.role.value}
        for attempt in range(CAS_ATTEMPTS):
            if attempt:  # the course first, then the children: the order matters
                found = await self._repo.get_course(code)
                if found is None:
                    raise NotFound(f"course {code} does not exist")
                c = found
            children = await self._repo.get_children(kind, ids)
            named = self._named(c, kind)
            # Gone: a concurrent request for the same client_ref was refused by the course and discarded it.
            refused: dict[str, ProblemError] = {
                i: Conflict(f"course {code} is busy; retry", slug="course-busy") for i in ids if i not in children
            }
            pending = [
                i for i in ids if i in children and i not in named and not self._child_applied(kind, children[i])
            ]
            await self._settle_last_applied(c)  # finishes step 3 of the children ``named`` too
            if not pending:
                return Applied([], refused)
            try:
                planned = await plan(c, pending)
            except ProblemError as exc:
                return Applied([], refused | dict.fromkeys(pending, exc))
            refused |= planned.refused
            if not planned.counted:
                return Applied([], refused)
            update = planned.update
            update.setdefault("$set", {})["last_applied"] = {**marker, "ids": planned.counted}
            if await self._repo.update_course(code, {"rev": c["rev"]}, update, planned.events):
                self._notify(COURSES, [code])  # first: the events go out even if step 3 fails
                await self._mark_applied(kind, planned.counted, c, marker.get("by"))
                return Applied(planned.counted, refused)
        raise Conflict(f"course {code} is busy; retry", slug="course-busy")

    async def _mark_applied(self, kind: str, ids: Sequence[str], c: Document, by: Document | None = None) -> None:
        if kind == "complete":
            # Audited with the participant's own flag: one write, and only the write that sets it.
            # Completions are marked one participant at a time, so this is one write too.
            actor = Actor(**by) if by else SYSTEM
            for participant_id in ids:
                entry = _audit(
                    actor,
                    "participant.completed",
                    participant_id,
                    c,
                    before={"status": "enrolled"},
                    after={"status": "completed"},
                )
                await self._repo.mark_child_applied(kind, participant_id, entry)
        else:
            await self._repo.mark_children_applied(kind, ids)
        for i in ids:
            self._flagged[(kind, i)] = None
        while len(self._flagged) > FLAGGED_MEMORY:
            del self._flagged[next(iter(self._flagged))]

    async def _settle_last_applied(self, c: Document) -> None:
        """Finish step 3 of the last apply (roll-forward), unless this process already did."""
        last = c.get("last_applied")
        if not last:
            return
        unflagged = [i for i in last["ids"] if (last["kind"], i) not in self._flagged]
        if unflagged:
            await self._mark_applied(last["kind"], unflagged, c, last.get("by"))

    # --- participants ------------------------------------------------------------------------------

    @staticmethod
    def _plan_enrolments(groups: dict[str, str]) -> Plan:
        """Enrol the pending participants in order, as many as the course has places for."""

        async def plan(c: Document, pending: list[str]) -> Planned:
            _require_open(c, "enrol participants")
            capacity = c.get("capacity")
            places = len(pending) if capacity is None else max(0, capacity - c["enrolled"])
            counted, full = pending[:places], pending[places:]
            ref = _course_ref(c)
            enrolled, figure = c["enrolled"], c["participants_counted"]
            events: list[Envelope] = []
            for participant_id in counted:
                enrolled += 1
                before, figure = figure, participants_figure(enrolled, c["largest_head_count"])
                payload = ev.ParticipantEnrolled(
                    course=ref,
                    participant_id=participant_id,
                    group=ParticipantGroup(groups[participant_id]),
                    participants=Change(before=before, after=figure),
                )
                events.append(_event(ev.PARTICIPANT_ENROLLED, payload, c["_id"]))
            refused: dict[str, ProblemError] = {}
            if full:
                refused = dict.fromkeys(
                    full, Conflict(f"course {c['_id']} is full ({capacity} places)", slug="course-full")
                )
            update = {"$inc": {"enrolled": len(counted)}, "$set": {"participants_counted": figure}}
            return Planned(update, events, counted, refused)

        return plan

    async def _enrol(self, p: Principal, c: Document, bodies: Sequence[ParticipantIn]) -> list[Outcome]:
        """Enrol ``bodies`` in course ``c`` with one insert, one compare-and-set and one flag write.

        One outcome per body, in order. A client_ref seen earlier in ``bodies`` shares that one's
        outcome, as a duplicate if it was enrolled.
        """
        code = c["_id"]
        pids = [child_id("participant", b.client_ref) for b in bodies]
        stored = await self._repo.get_children("enrol", pids)
        outcome: dict[str, Outcome] = {}
        to_count: dict[str, Document] = {}  # the participants this request may count, in request order
        for body, pid in zip(bodies, pids, strict=True):
            if pid in outcome or pid in to_count:
                continue
            found = stored.get(pid)
            if (
                earlier := _stored_outcome(
                    found,
                    code,
                    body.client_ref,
                    "already enrolled someone in course",
                )
            ) is not None:
                outcome[pid] = earlier
            else:
                to_count[pid] = found or {
                    "_id": pid,
                    "client_ref": body.client_ref,
                    "course_code": code,
                    "display_name": body.display_name,
                    "birth_year": body.birth_year,
                    "group": body.group.value,
                    "status": "enrolled",
                    "counted": False,
                    "enrolled_at": _now(),
                }
        if not to_count:
            return self._in_request_order(pids, outcome)
        # Refuse what the course refuses now before writing anything; the compare-and-set checks again.
        named = self._named(c, "enrol")
        try:
            groups = {pid: d["group"] for pid, d in to_count.items()}
            refused_now = (await self._plan_enrolments(groups)(c, [i for i in to_count if i not in named])).refused
        except ProblemError as exc:
            refused_now = dict.fromkeys(to_count, exc)
        new = [d for pid, d in to_count.items() if pid not in stored]
        for d in new:
            if d["_id"] in refused_now:
                outcome[d["_id"]] = refused_now[d["_id"]]
                del to_count[d["_id"]]
        if not to_count:
            return self._in_request_order(pids, outcome)
        # Who was enrolled stays in the participant record; the log names the group only.
        entries = [
            (d, _audit(p, "participant.enrolled", d["_id"], c, after={"course_code": code, "group": d["group"]}))
            for d in new
            if d["_id"] in to_count
        ]
        existed = await self._repo.insert_participants(entries)
        await self._take_concurrent_copies("enrol", existed, code, to_count, outcome)
        groups = {pid: d["group"] for pid, d in to_count.items()}
        await self._count(c, "enrol", to_count, self._plan_enrolments(groups), outcome)
        return self._in_request_order(pids, outcome)

    async def _count(
        self, c: Document, kind: str, to_count: dict[str, Document], plan: Plan, outcome: dict[str, Outcome]
    ) -> None:
        """Count ``to_count`` (stored children) into course ``c``; each one's outcome into ``outcome``.

        Children the course refuses are deleted; when the compare-and-set stays busy they are kept
        for a retry.
        """
        try:
            applied = await self._apply_to_course(c, kind, list(to_count), plan)
        except ProblemError as exc:  # nothing counted; the stored children wait for a retry
            applied = Applied([], dict.fromkeys(to_count, exc))
        else:
            await self._repo.discard_unapplied_children(kind, list(applied.refused))
        counted = set(applied.counted)
        for child, d in to_count.items():
            problem = applied.refused.get(child)
            outcome[child] = problem if problem is not None else ({**d, "counted": True}, child in counted)

    async def _take_concurrent_copies(
        self, kind: str, existed: set[str], code: str, to_count: dict[str, Document], outcome: dict[str, Outcome]
    ) -> None:
        """Children whose insert found one stored meanwhile by a concurrent request with the same
        client_ref: that copy is counted, unless it belongs to another course."""
        for child, found in (await self._repo.get_children(kind, sorted(existed))).items():
            if found["course_code"] != code:
                outcome[child] = Conflict(
                    f"client_ref {found['client_ref']} is used in another course", slug="client-ref-reused"
                )
                del to_count[child]
            else:
                to_count[child] = found

    @staticmethod
    def _in_request_order(
        ids: list[str], outcome: dict[str, Outcome], alone: Mapping[int, ProblemError] | None = None
    ) -> list[Outcome]:
        """One outcome per item of a request, whose children have ``ids``: the items refused on their
        own (``alone``, by position) keep their problem; any other shares the outcome of its id, as a
        duplicate after the first item of that id."""
        ordered: list[Outcome] = []
        seen: set[str] = set()
        for index, one_id in enumerate(ids):
            if alone and index in alone:
                ordered.append(alone[index])
                continue
            one = outcome[one_id]
            ordered.append((one[0], False) if one_id in seen and isinstance(one, tuple) else one)
            seen.add(one_id)
        return ordered

    async def enrol(self, p: Principal, code: str, body: ParticipantIn) -> tuple[Document, bool]:
        c = await self._course_for(p, code, write=True)
        (outcome,) = await self._enrol(p, c, [body])
        if isinstance(outcome, ProblemError):
            raise outcome
        return outcome

    async def enrol_batch(self, p: Principal, code: str, items: list[dict[str, Any]]) -> list[BatchItemResult]:
        c = await self._course_for(p, code, write=True)
        return await _answer_items(items, ParticipantIn, lambda bodies: self._enrol(p, c, bodies))

    async def complete_participant(self, p: Principal, code: str, participant_id: str) -> tuple[Document, bool]:
        c = await self._course_for(p, code, write=True)
        await self._settle_last_applied(c)
        participant = await self._repo.get_participant(participant_id)
        if participant is None or participant["course_code"] != code or not participant["counted"]:
            raise NotFound(f"participant {participant_id} is not enrolled in course {code}", slug="not-enrolled")
        if participant["status"] == "completed":
            return participant, False

        async def plan(c: Document, pending: list[str]) -> Planned:
            _require_open(c, "mark participants complete")
            before = c["completions_counted"]
            event = _event(
                ev.PARTICIPANT_COMPLETED,
                ev.ParticipantCompleted(
                    course=_course_ref(c),
                    participant_id=participant_id,
                    completions=Change(before=before, after=before + 1),
                ),
                c["_id"],
            )
            return Planned({"$inc": {"completed": 1, "completions_counted": 1}}, [event], pending, {})

        applied = await self._apply_to_course(c, "complete", [participant_id], plan, by=p)
        if participant_id in applied.refused:
            raise applied.refused[participant_id]
        return {**participant, "status": "completed"}, participant_id in applied.counted

    async def list_participants(self, p: Principal, code: str, cursor: str | None, limit: int) -> list[Document]:
        c = await self._course_for(p, code, write=False)
        await self._settle_last_applied(c)
        return await self._repo.list_participants(code, cursor, limit)

    # --- sessions ----------------------------------------------------------------------------------

    @staticmethod
    def _plan_sessions(sessions: Mapping[str, Document], attending: set[str]) -> Plan:
        """Hold the pending sessions in order, each counted as if recorded alone after those before it.

        ``attending``: the counted participants among those the sessions' rosters name. A participant
        once counted stays counted, so it holds for every compare-and-set of the request.
        """

        async def plan(c: Document, pending: list[str]) -> Planned:
            code, ref = c["_id"], _course_ref(c)
            status, largest, figure = c["status"], c["largest_head_count"], c["participants_counted"]
            fields: dict[str, Any] = {}
            events: list[Envelope] = []
            counted: list[str] = []
            refused: dict[str, ProblemError] = {}
            for session_id in pending:
                s = sessions[session_id]
                problem = _session_refusal(c, s, attending)
                if problem is not None:
                    refused[session_id] = problem
                    continue
                held_on = date.fromisoformat(s["held_on"])
                if status == "scheduled":
                    status = "running"
                    fields.update(status=status, started_on=s["held_on"])
                    events.append(_event(ev.COURSE_STARTED, ev.CourseStarted(course=ref, started_on=held_on), code))
                before, largest = figure, max(largest, s["attendance"])
                figure = participants_figure(c["enrolled"], largest)
                held = ev.SessionHeld(
                    course=ref,
                    session_id=session_id,
                    held_on=held_on,
                    duration_minutes=s["duration_minutes"],
                    attendance_kind=s["attendance_kind"],
                    attendance=s["attendance"],
                    participants=Change(before=before, after=figure),
                )
                events.append(_event(ev.SESSION_HELD, held, code))
                counted.append(session_id)
            fields.update(largest_head_count=largest, participants_counted=figure)
            return Planned({"$set": fields, "$inc": {"sessions_held": len(counted)}}, events, counted, refused)

        return plan

    async def _attending(self, c: Document, ids: set[str]) -> set[str]:
        """Those of ``ids`` counted in course ``c``, including the ones its last enrolment counted."""
        if not ids:
            return set()
        await self._settle_last_applied(c)
        return await self._repo.counted_participant_ids(c["_id"], sorted(ids))

    async def _record_sessions(self, p: Principal, c: Document, bodies: Sequence[SessionIn]) -> list[Outcome]:
        """Record ``bodies`` in course ``c`` with one insert, one compare-and-set and one flag write.

        One outcome per body, in order, as recording them one at a time would give: a new session the
        course does not take is refused on its own, with nothing written; a client_ref seen earlier in
        ``bodies`` shares the outcome of the first one not refused so, as a duplicate if it was recorded.
        """
        code = c["_id"]
        sids = [child_id("session", b.client_ref) for b in bodies]
        stored = await self._repo.get_children("session", sids)
        # Each body's session: its stored copy, or as it would be stored.
        sessions = [
            s if (s := stored.get(sid)) is not None else _session_doc(code, body)
            for body, sid in zip(bodies, sids, strict=True)
        ]
        # Counted sessions and those of other courses need no check: the others' rosters in one read.
        asked = _roster_ids(s for s in sessions if s["course_code"] == code and not s["counted"])
        attending = await self._attending(c, asked)
        outcome: dict[str, Outcome] = {}
        alone: dict[int, ProblemError] = {}
        to_count: dict[str, Document] = {}  # the sessions this request may count, in request order
        new: list[Document] = []
        for index, (body, s) in enumerate(zip(bodies, sessions, strict=True)):
            sid = s["_id"]
            if sid in outcome or sid in to_count:
                continue
            found = stored.get(sid)
            earlier = _stored_outcome(
                found,
                code,
                body.client_ref,
                "already recorded a session of course",
            )
            if earlier is not None:
                outcome[sid] = earlier
            elif found is not None:
                to_count[sid] = found  # stored by an earlier attempt: the compare-and-set decides
            elif (problem := _session_refusal(c, s, attending)) is not None:
                alone[index] = problem  # refused before writing anything; a later item may record it
            else:
                to_count[sid] = s
                new.append(s)
        if not to_count:
            return self._in_request_order(sids, outcome, alone)
        entries = [
            (s, _audit(p, "session.recorded", s["_id"], c, after={k: s[k] for k in SESSION_AUDITED})) for s in new
        ]
        existed = await self._repo.insert_sessions(entries)
        await self._take_concurrent_copies("session", existed, code, to_count, outcome)
        # That copy may name other participants.
        if more := _roster_ids(to_count.values()) - asked:
            attending |= await self._attending(c, more)
        await self._count(c, "session", to_count, self._plan_sessions(to_count, attending), outcome)
        return self._in_request_order(sids, outcome, alone)

    async def record_session(self, p: Principal, code: str, body: SessionIn) -> tuple[Document, bool]:
        c = await self._course_for(p, code, write=True)
        (outcome,) = await self._record_sessions(p, c, [body])
        if isinstance(outcome, ProblemError):
            raise outcome
        return outcome

    async def record_sessions_batch(
        self, p: Principal, code: str, items: list[dict[str, Any]]
    ) -> list[BatchItemResult]:
        c = await self._course_for(p, code, write=True)
        return await _answer_items(items, SessionIn, lambda bodies: self._record_sessions(p, c, bodies))

    async def list_sessions(self, p: Principal, code: str, cursor: str | None, limit: int) -> list[Document]:
        c = await self._course_for(p, code, write=False)
        await self._settle_last_applied(c)
        return await self._repo.list_sessions(code, cursor, limit)


async def _answer_items(
    items: list[dict[str, Any]], model: type[Body], record: Callable[[list[Body]], Awaitable[list[Outcome]]]
) -> list[BatchItemResult]:
    """A batch's answers in request order: the valid items recorded together, the invalid ones rejected."""
    parsed: list[Body | ValidationError] = []
    for item in items:
        try:
            parsed.append(model.model_validate(item))
        except ValidationError as exc:
            parsed.append(exc)
    recorded = iter(await record([b for b in parsed if not isinstance(b, ValidationError)]))
    results = []
    for item, body in zip(items, parsed, strict=True):
        one = body if isinstance(body, ValidationError) else next(recorded)
        results.append(_item_result(item, (one[0]["_id"], one[1]) if isinstance(one, tuple) else one))
    return results


def _item_result(item: dict[str, Any], outcome: tuple[str, bool] | ValidationError | ProblemError) -> BatchItemResult:
    """A batch item's answer: its id and whether this request created it, or why it was rejected."""
    ref = item.get("client_ref")
    client_ref = ref if isinstance(ref, str) else None
    if isinstance(outcome, ValidationError):
        return BatchItemResult(client_ref=client_ref, status=BatchStatus.rejected, problem=validation_problem(outcome))
    if isinstance(outcome, ProblemError):
        return BatchItemResult(client_ref=client_ref, status=BatchStatus.rejected, problem=outcome.to_problem())
    item_id, created = outcome
    status = BatchStatus.created if created else BatchStatus.duplicate
    return BatchItemResult(client_ref=client_ref, status=status, id=item_id)
