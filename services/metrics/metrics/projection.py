"""The indicator catalogue and the pure rules that turn events into counter increments.

Nothing here touches Mongo or Kafka: :func:`fold_into` reports what one event changes and
:class:`CounterSums` adds such changes up per counter document. Unit-tested without infrastructure.

Counters are kept per **unit where the thing happened** (the last code of the event's unit path)
and per day: one plain document ``{_id: "<unit>|<day>", unit, day, <field>: n, ..., wm: {...}}``,
``day`` an ISO date or ``state`` for current-state indicators. A unit's figure is the sum over the
units *now* in its subtree, taken when read, so a unit moved or merged elsewhere takes its whole
history with it, and a replay gives the same documents whatever path the events carried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from pydantic import BaseModel

from shared.contracts import registry as reg
from shared.contracts import training as trn
from shared.contracts import visits as vis
from shared.contracts.common import Audience, Channel, TeamKind
from shared.contracts.common import Change as Transition

STATE_DAY = "state"


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
    )
}


Change = tuple[str, int]
"""``(counter field, delta)``: split indicators name their key's field and their total's."""

# ``emit(unit_path, day, changes)``: what one event does to the counters of one unit path and
# day (None for current-state indicators).
Emit = Callable[[Sequence[str], date | None, Sequence[Change]], None]


def _of(indicator: str, key: str, delta: int) -> tuple[Change, ...]:
    return tuple((f, delta) for f in FIELDS[(indicator, key)])


def _visit(emit: Emit, figures: vis.VisitFigures, sign: int) -> None:
    services = figures.services
    l3, l4 = services.online_applications_l3, services.online_applications_l4
    # Spelled out rather than through _of: visits are most of the events.
    emit(
        figures.unit_path,
        figures.visited_on,
        (
            ("households_visited", sign * figures.households),
            ("people_supported", sign * figures.people.total),
            ("vneid_installs", sign * services.vneid_installed),
            ("online_applications_l3", sign * l3),
            ("online_applications_l4", sign * l4),
            ("online_applications_total", sign * (l3 + l4)),
        ),
    )


def _change(c: Transition) -> int:
    return c.after - c.before


def _participants(emit: Emit, course: trn.CourseRef, change: Transition) -> None:
    emit(course.unit_path, course.starts_on, _of("course_participants", course.audience.value, _change(change)))


def _completions(emit: Emit, course: trn.CourseRef, change: Transition) -> None:
    emit(course.unit_path, course.ends_on, _of("course_completions", "total", _change(change)))


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
            emit(payload.unit_path, payload.published_on, _of("outreach_posts", payload.channel.value, 1))
        case vis.OutreachVoided():
            emit(payload.unit_path, payload.published_on, _of("outreach_posts", payload.channel.value, -1))
        # --- training: courses and participants by starts_on, completions by ends_on ---------------
        case trn.CourseScheduled():
            c = payload.course
            emit(c.unit_path, c.starts_on, _of("courses", c.audience.value, 1))
        case trn.CourseCancelled():
            c = payload.course
            emit(c.unit_path, c.starts_on, _of("courses", c.audience.value, -1))
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
        case reg.TeamCreated():
            emit(payload.unit_path, None, _of("teams", payload.kind.value, 1))
        case reg.TeamUpdated():
            # An inactive team was already taken out by its deactivation; an active one moves from
            # its previous kind and unit to the current ones (a no-op when neither changed).
            if payload.active:
                emit(payload.previous_unit_path, None, _of("teams", payload.previous_kind.value, -1))
                emit(payload.unit_path, None, _of("teams", payload.kind.value, 1))
        case reg.TeamDeactivated():
            emit(payload.unit_path, None, _of("teams", payload.kind.value, -1))
        case reg.VolunteerRegistered():
            emit(payload.unit_path, None, _of("volunteers", "total", 1))
        case reg.VolunteerUpdated():
            if payload.active:
                emit(payload.previous_unit_path, None, _of("volunteers", "total", -1))
                emit(payload.unit_path, None, _of("volunteers", "total", 1))
        case reg.VolunteerLeft():
            emit(payload.unit_path, None, _of("volunteers", "total", -1))
        case _:
            pass


def _fields(indicator: str, key: str) -> tuple[str, ...]:
    spec = CATALOGUE[indicator]
    return (spec.field(key),) if not spec.keys else (spec.field(key), spec.field("total"))


# Every (indicator, key) pair an event can name, resolved once: the fold runs per event.
FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    (name, key): _fields(name, key) for name, spec in CATALOGUE.items() for key in (*spec.keys, "total")
}


def counter_id(unit: str, day: str) -> str:
    """The ``_id`` of the counter document of ``unit`` on ``day`` (ISO date or ``STATE_DAY``)."""
    return f"{unit}|{day}"


Sums = dict[str, dict[str, int]]
"""``{counter document id: {field: delta}}``."""


class CounterSums:
    """Indicator changes added up per counter document (an ``Emit`` target).

    A fetch of visits to ~60 units over ~50 days repeats the same (unit, day, field) keys thousands
    of times, so the per-event cost is a few dict additions.
    """

    def __init__(self) -> None:
        self.docs: Sums = {}

    def emit(self, path: Sequence[str], when: date | None, changes: Sequence[Change]) -> None:
        if not path:
            return
        doc_id = counter_id(path[-1], STATE_DAY if when is None else when.isoformat())
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
