"""The indicator catalogue and the pure rules that turn events into counter increments.

Nothing here touches Mongo or Kafka: :func:`fold_into` reports what one event changes and
:class:`CounterSums` adds such changes up per counter document. Unit-tested without infrastructure.

Counters are kept per **unit where the thing happened** (the last code of the event's unit path)
and per day: one plain document ``{_id: "<unit>|<day>", unit, day, <field>: n, ..., wm: {...}}``,
``day`` an ISO date or ``state`` for current-state indicators. A unit's figure is the sum over the
units *now* in its subtree, taken when read, so a unit moved or merged elsewhere takes its whole
history with it, and a replay gives the same documents whatever path the events carried.

The breakdowns the reports quote (DOMAIN.md, last paragraph) are indicators of their own, counted
from fields the producers fill since contract d9e0980 (``VisitFigures.area``, ``CourseRef.mode``,
the roles and skills of volunteer updates and departures, the team facts of membership events and
the member counts of team updates and deactivations). An event of an older producer, whose field
is None, adds to no key of that breakdown (nor to its total): a visit without ``area`` still counts
in ``people_supported`` but in no ``people_supported_by_area`` key, a course without ``mode`` in
``courses`` but not in ``courses_by_mode``, a membership event without ``team_active`` in no
``team_members`` key. Breakdowns whose keys may overlap (groups, roles, skills) have a ``total``
that is the sum of their keys, not a head count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from pydantic import BaseModel

from shared.contracts import registry as reg
from shared.contracts import training as trn
from shared.contracts import visits as vis
from shared.contracts.common import Area, Audience, Channel, Mode, Role, Skill, TeamKind
from shared.contracts.common import Change as Transition

STATE_DAY = "state"
# Team counter documents: ``{_id: "team:<code>|<day>", team, day, ...}``, kept in a collection of their
# own (``ProjectionRepository.team_counts``).
TEAM_PREFIX = "team:"
# Sorts after every ISO date, so date-range filters never select it.
ALL_DAY = "all"


@dataclass(frozen=True)
class IndicatorSpec:
    """One indicator of DOMAIN.md: its split keys (empty when single-valued) and whether it is dated."""

    name: str
    keys: tuple[str, ...]
    dated: bool

    def field(self, key: str = "total") -> str:
        """The counter field that holds ``key`` (``total`` for single-valued indicators)."""
        if not self.keys:
            return self.name
        return f"{self.name}_{key}"

    def values(self, counters: Mapping[str, int]) -> dict[str, int]:
        """``{key: value}`` read from a flat counter dict; always includes ``total``."""
        if not self.keys:
            return {"total": int(counters.get(self.name, 0))}
        out = {k: int(counters.get(self.field(k), 0)) for k in self.keys}
        out["total"] = int(counters.get(self.field("total"), 0))
        return out


CATALOGUE: dict[str, IndicatorSpec] = {
    s.name: s
    for s in (
        IndicatorSpec("teams", tuple(k.value for k in TeamKind), dated=False),
        IndicatorSpec("volunteers", (), dated=False),
        IndicatorSpec("households_visited", (), dated=True),
        IndicatorSpec("people_supported", (), dated=True),
        IndicatorSpec("vneid_installs", (), dated=True),
        IndicatorSpec("online_applications", ("l3", "l4"), dated=True),
        IndicatorSpec("courses", tuple(a.value for a in Audience), dated=True),
        IndicatorSpec("course_participants", tuple(a.value for a in Audience), dated=True),
        IndicatorSpec("course_completions", (), dated=True),
        IndicatorSpec("outreach_posts", tuple(c.value for c in Channel), dated=True),
        # The breakdowns (see the module docstring and the README's indicator table).
        IndicatorSpec("people_supported_by_area", tuple(a.value for a in Area), dated=True),
        IndicatorSpec("households_by_area", tuple(a.value for a in Area), dated=True),
        IndicatorSpec("people_supported_by_group", ("elderly", "women", "veterans"), dated=True),
        IndicatorSpec("vneid_activations", (), dated=True),
        IndicatorSpec("courses_by_mode", tuple(m.value for m in Mode), dated=True),
        IndicatorSpec("course_participants_by_mode", tuple(m.value for m in Mode), dated=True),
        IndicatorSpec("volunteers_by_role", tuple(r.value for r in Role), dated=False),
        IndicatorSpec("volunteers_by_skill", tuple(s.value for s in Skill), dated=False),
        IndicatorSpec("team_members", tuple(k.value for k in TeamKind), dated=False),
    )
}


Change = tuple[str, int]
"""``(counter field, delta)``: split indicators name their key's field and their total's."""

# ``emit(unit_path, day, changes, team)``: what one event does to the counters of one unit path and
# day (None for current-state indicators), and of the team it is attributed to (None: no team).
Emit = Callable[[Sequence[str], date | None, Sequence[Change], str | None], None]


def _of(indicator: str, key: str, delta: int) -> tuple[Change, ...]:
    return tuple((f, delta) for f in FIELDS[(indicator, key)])


def _visit(emit: Emit, figures: vis.VisitFigures, sign: int) -> None:
    services, people = figures.services, figures.people
    l3, l4 = services.online_applications_l3, services.online_applications_l4
    households, total = sign * figures.households, sign * people.total
    elderly, women, veterans = sign * people.elderly, sign * people.women, sign * people.veterans
    # Spelled out rather than through _of: visits are most of the events.
    changes: tuple[Change, ...] = (
        ("households_visited", households),
        ("people_supported", total),
        ("vneid_installs", sign * services.vneid_installed),
        ("vneid_activations", sign * services.vneid_activated),
        ("online_applications_l3", sign * l3),
        ("online_applications_l4", sign * l4),
        ("online_applications_total", sign * (l3 + l4)),
        ("people_supported_by_group_elderly", elderly),
        ("people_supported_by_group_women", women),
        ("people_supported_by_group_veterans", veterans),
        ("people_supported_by_group_total", elderly + women + veterans),
    )
    if figures.area is not None:
        people_field, households_field = BY_AREA[figures.area]
        changes += (
            (people_field, total),
            ("people_supported_by_area_total", total),
            (households_field, households),
            ("households_by_area_total", households),
        )
    emit(figures.unit_path, figures.visited_on, changes, figures.team_code)


def _change(c: Transition) -> int:
    return c.after - c.before


def _by_mode(indicator: str, course: trn.CourseRef, delta: int) -> tuple[Change, ...]:
    # Courses of older producers carry no mode: they count in no key of the mode breakdowns.
    return () if course.mode is None else _of(indicator, course.mode.value, delta)


def _participants(emit: Emit, course: trn.CourseRef, change: Transition) -> None:
    delta = _change(change)
    changes = _of("course_participants", course.audience.value, delta)
    emit(
        course.unit_path,
        course.starts_on,
        changes + _by_mode("course_participants_by_mode", course, delta),
        course.team_code,
    )


def _completions(emit: Emit, course: trn.CourseRef, change: Transition) -> None:
    emit(course.unit_path, course.ends_on, _of("course_completions", "total", _change(change)), course.team_code)


def _having(indicator: str, keys: Iterable[Role | Skill], delta: int) -> tuple[Change, ...]:
    """One change per distinct role (or skill) held; the total adds them up."""
    return tuple(change for key in set(keys) for change in _of(indicator, key.value, delta))


def _volunteer(roles: Iterable[Role], skills: Iterable[Skill], delta: int) -> tuple[Change, ...]:
    return (
        ("volunteers", delta),
        *_having("volunteers_by_role", roles, delta),
        *_having("volunteers_by_skill", skills, delta),
    )


def _members(kind: TeamKind, members: int | None, delta: int) -> tuple[Change, ...]:
    # Team events of older producers carry no member count: they move no team_members key.
    return () if not members else _of("team_members", kind.value, delta * members)


def fold_into(payload: BaseModel, emit: Emit) -> None:
    """Report, through ``emit``, every indicator change one event causes (nothing for the others)."""
    match payload:  # most frequent first: each case is an isinstance check
        # --- visits: dated by visited_on / published_on -------------------------------------------
        case vis.VisitRecorded():
            _visit(emit, payload.figures, 1)
        case vis.VisitCorrected():
            _visit(emit, payload.previous, -1)
            _visit(emit, payload.figures, 1)
        case vis.VisitVoided():
            _visit(emit, payload.figures, -1)
        case vis.OutreachPublished():
            emit(
                payload.unit_path,
                payload.published_on,
                _of("outreach_posts", payload.channel.value, 1),
                payload.team_code,
            )
        case vis.OutreachVoided():
            emit(
                payload.unit_path,
                payload.published_on,
                _of("outreach_posts", payload.channel.value, -1),
                payload.team_code,
            )
        # --- training: courses and participants by starts_on, completions by ends_on ---------------
        case trn.CourseScheduled():
            c = payload.course
            changes = _of("courses", c.audience.value, 1) + _by_mode("courses_by_mode", c, 1)
            emit(c.unit_path, c.starts_on, changes, c.team_code)
        case trn.CourseCancelled():
            c = payload.course
            changes = _of("courses", c.audience.value, -1) + _by_mode("courses_by_mode", c, -1)
            emit(c.unit_path, c.starts_on, changes, c.team_code)
            _participants(emit, c, payload.participants)
            _completions(emit, c, payload.completions)
        case trn.SessionHeld() | trn.ParticipantEnrolled():
            _participants(emit, payload.course, payload.participants)
        case trn.ParticipantCompleted():
            _completions(emit, payload.course, payload.completions)
        case trn.CourseCompleted():
            _participants(emit, payload.course, payload.participants)
            _completions(emit, payload.course, payload.completions)
        # --- registry: current state -------------------------------------------------------------
        case reg.MembershipStarted() | reg.MembershipEnded():
            # Members of active teams only: a deactivated team's members left the count with it.
            if payload.team_active and payload.team_kind is not None and payload.team_unit_path is not None:
                delta = 1 if isinstance(payload, reg.MembershipStarted) else -1
                changes = _of("team_members", payload.team_kind.value, delta)
                emit(payload.team_unit_path, None, changes, payload.team_code)
        case reg.TeamCreated():
            emit(payload.unit_path, None, _of("teams", payload.kind.value, 1), payload.code)
        case reg.TeamUpdated():
            # An inactive team was already taken out by its deactivation; an active one moves from
            # its previous kind and unit to the current ones (a no-op when neither changed), with
            # its members, unless it was inactive until now: then it comes back with them.
            if payload.active:
                kind, members = payload.kind, payload.members
                if payload.previous_active is False:
                    emit(
                        payload.unit_path, None, _of("teams", kind.value, 1) + _members(kind, members, 1), payload.code
                    )
                else:
                    before = payload.previous_kind
                    emit(
                        payload.previous_unit_path,
                        None,
                        _of("teams", before.value, -1) + _members(before, members, -1),
                        payload.code,
                    )
                    emit(
                        payload.unit_path, None, _of("teams", kind.value, 1) + _members(kind, members, 1), payload.code
                    )
        case reg.TeamDeactivated():
            kind = payload.kind
            emit(
                payload.unit_path,
                None,
                _of("teams", kind.value, -1) + _members(kind, payload.members, -1),
                payload.code,
            )
        case reg.VolunteerRegistered() | reg.VolunteerRegisteredV2():
            emit(payload.unit_path, None, _volunteer(payload.roles, payload.skills, 1), None)
        case reg.VolunteerUpdated() | reg.VolunteerUpdatedV2():
            if payload.active:
                # Without previous_* (older producers) the roles and skills are taken as unchanged.
                roles = payload.roles if payload.previous_roles is None else payload.previous_roles
                skills = payload.skills if payload.previous_skills is None else payload.previous_skills
                emit(payload.previous_unit_path, None, _volunteer(roles, skills, -1), None)
                emit(payload.unit_path, None, _volunteer(payload.roles, payload.skills, 1), None)
        case reg.VolunteerLeft():
            emit(payload.unit_path, None, _volunteer(payload.roles, payload.skills, -1), None)
        case _:
            pass


def _fields(indicator: str, key: str) -> tuple[str, ...]:
    spec = CATALOGUE[indicator]
    return (spec.field(key),) if not spec.keys else (spec.field(key), spec.field("total"))


# Every (indicator, key) pair an event can name, resolved once: the fold runs per event.
FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    (name, key): _fields(name, key) for name, spec in CATALOGUE.items() for key in (*spec.keys, "total")
}
# Per area, the fields of a visit's people and households in the area breakdowns.
BY_AREA: dict[Area, tuple[str, str]] = {
    a: (CATALOGUE["people_supported_by_area"].field(a.value), CATALOGUE["households_by_area"].field(a.value))
    for a in Area
}


def counter_id(unit: str, day: str) -> str:
    """The ``_id`` of the counter document of ``unit`` on ``day`` (ISO date or ``STATE_DAY``)."""
    return f"{unit}|{day}"


def team_counter_id(team: str, day: str) -> str:
    """The ``_id`` of a team's counter document; the prefix keeps it apart from any unit code."""
    return f"{TEAM_PREFIX}{team}|{day}"


def counter_owner(doc_id: str) -> tuple[str, str, str]:
    """``(owner field, code, day)`` of a counter document id: ``unit`` or ``team``."""
    owner, _, day = doc_id.rpartition("|")
    if owner.startswith(TEAM_PREFIX):
        return ("team", owner.removeprefix(TEAM_PREFIX), day)
    return ("unit", owner, day)


Sums = dict[str, dict[str, int]]
"""``{counter document id: {field: delta}}``."""


class CounterSums:
    """Indicator changes added up per counter document (an ``Emit`` target).

    A fetch of visits to ~60 units over ~50 days repeats the same (unit, day, field) keys thousands
    of times, so the per-event cost is a few dict additions.
    """

    def __init__(self) -> None:
        self.docs: Sums = {}

    def emit(self, path: Sequence[str], when: date | None, changes: Sequence[Change], team: str | None) -> None:
        if not path:
            return
        unit = path[-1]
        if team is not None:
            # Team rows of a report are always for a period, so a team has no all-time document.
            self._add(team_counter_id(team, STATE_DAY if when is None else when.isoformat()), changes)
        if when is None:
            self._add(counter_id(unit, STATE_DAY), changes)
        else:
            self._add(counter_id(unit, when.isoformat()), changes)
            # The unit's all-time document repeats every dated change, so an all-time figure is one
            # read per unit by _id instead of a read of every day (FerretDB scans for anything else).
            self._add(counter_id(unit, ALL_DAY), changes)

    def _add(self, doc_id: str, changes: Sequence[Change]) -> None:
        fields = self.docs.get(doc_id)
        if fields is None:
            fields = self.docs[doc_id] = {}
        for f, delta in changes:
            if delta:
                fields[f] = fields.get(f, 0) + delta

    def add(self, other: Sums, only: Iterable[str] | None = None) -> None:
        """Add ``other``'s sums in (of the documents in ``only``, when given)."""
        for doc_id, fields in other.items():
            if only is not None and doc_id not in only:
                continue
            target = self.docs.setdefault(doc_id, {})
            for f, v in fields.items():
                target[f] = target.get(f, 0) + v


def increments(payload: BaseModel) -> Sums:
    """Per counter document, what one event adds (empty for events that move no indicator)."""
    sums = CounterSums()
    fold_into(payload, sums.emit)
    return sums.docs


def nonzero(fields: Mapping[str, int]) -> dict[str, int]:
    return {f: v for f, v in fields.items() if v}


def state_changes(payload: BaseModel) -> tuple[str, str, dict[str, object]] | None:
    """``(collection kind, key, fields to set)`` for registry events the API keeps as state."""
    match payload:
        case reg.UnitCreated() | reg.UnitUpdated():
            fields: dict[str, object] = {
                "name": payload.name,
                "kind": payload.kind.value,
                "parent_code": payload.parent_code,
                "path": list(payload.path),
            }
            return ("units", payload.code, fields)
        case reg.UnitMerged():
            # Below its successor from now on, so the successor's subtree counts its whole history.
            merged: dict[str, object] = {
                "status": "merged",
                "merged_into": payload.successor_code,
                "parent_code": payload.successor_code,
                "path": [*payload.successor_path, payload.code],
            }
            return ("units", payload.code, merged)
        case reg.UnitSplit():
            return ("units", payload.code, {"status": "closed", "successors": list(payload.successors)})
        case reg.UnitClosed():
            return ("units", payload.code, {"status": "closed"})
        case reg.TeamCreated() | reg.TeamUpdated():
            active = payload.active if isinstance(payload, reg.TeamUpdated) else True
            team: dict[str, object] = {
                "name": payload.name,
                "kind": payload.kind.value,
                "unit_code": payload.unit_code,
                "active": active,
            }
            return ("teams", payload.code, team)
        case reg.TeamDeactivated():
            return (
                "teams",
                payload.code,
                {"kind": payload.kind.value, "unit_code": payload.unit_code, "active": False},
            )
        case reg.CampaignCreated():
            return (
                "campaigns",
                payload.code,
                {
                    "name": payload.name,
                    "starts_on": payload.starts_on.isoformat(),
                    "ends_on": payload.ends_on.isoformat(),
                    "targets": [t.model_dump(mode="json") for t in payload.targets],
                },
            )
        case reg.CampaignTargetsSet():
            return ("campaigns", payload.code, {"targets": [t.model_dump(mode="json") for t in payload.targets]})
        case _:
            return None


@dataclass(frozen=True)
class Delta:
    """What the fresh events of one partition, at offsets ``start`` to ``end - 1``, add to each counter
    document: written by the projector in one insert per fetch, folded into the counters later
    (:mod:`metrics.folding`), and added by readers meanwhile."""

    key: str  # the partition's watermark key
    start: int
    end: int
    rows: Sums

    @property
    def id(self) -> str:
        return delta_id(self.key, self.start)


def delta_id(key: str, start: int) -> str:
    return f"{key}|{start}"


def unfolded(delta: Delta, marks: Mapping[str, int] | None) -> bool:
    """Whether ``delta`` is still missing from a counter document with these watermarks.

    A document's watermark of a partition is only ever raised to the last offset of a delta of that
    partition's chain, so it is either past the whole delta or before all of it.
    """
    return marks is None or marks.get(delta.key, -1) < delta.end - 1


def chain_sums(deltas: Iterable[Delta], doc_id: str, marks: Mapping[str, int] | None) -> dict[str, int]:
    """The sums of ``doc_id`` in those ``deltas`` a document with ``marks`` does not include yet."""
    out: dict[str, int] = {}
    for delta in deltas:
        fields = delta.rows.get(doc_id)
        if fields is None or not unfolded(delta, marks):
            continue
        for f, v in fields.items():
            out[f] = out.get(f, 0) + v
    return out
