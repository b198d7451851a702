"""The indicator catalogue and the pure rules that turn events into counter increments.

Nothing here touches Mongo or Kafka: :func:`fold` maps one event to the increments it causes and
:func:`plan_updates` decides, from per-document watermarks, which of a batch's increments a
document still lacks. Both are unit-tested without infrastructure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydantic import BaseModel

from shared.contracts import registry as reg
from shared.contracts import training as trn
from shared.contracts import visits as vis
from shared.contracts.common import Audience, Channel, TeamKind
from shared.contracts.common import Change as Transition

# One counter document per unit: ``days.<ISO date>.<field>`` for dated indicators, ``state.<field>``
# for current-state ones, and ``all.<field>`` repeating every dated increment so all-time figures
# need no day walk. A batch then touches one document per unit it concerns, however many days it
# spans, and the collection stays as small as the organisation tree; both matter on FerretDB, where
# each write costs a document read and rewrite. A year of days is ~365 x 25 fields, a few hundred KB.
STATE_DAY = "state"
ALL_DAY = "all"
DAYS = "days"


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


def counter_path(day: str, field: str) -> str:
    """Where a counter of ``day`` (an ISO date, ``STATE_DAY`` or ``ALL_DAY``) lives in its unit's document."""
    return f"{day}.{field}" if day in (STATE_DAY, ALL_DAY) else f"{DAYS}.{day}.{field}"


@dataclass(frozen=True)
class Increment:
    """Add ``delta`` to counter ``field`` of ``unit`` on ``day``."""

    unit: str
    depth: int  # 1 for the province root, 2 for its communes, ...
    day: str
    field: str
    delta: int

    @property
    def doc_id(self) -> str:
        return self.unit

    @property
    def path(self) -> str:
        return counter_path(self.day, self.field)


Change = tuple[str, int]
"""``(counter field, delta)``: split indicators name their key's field and their total's."""

# ``emit(unit_path, day, changes)``: what one event does to the counters of one unit path and
# day (None for current-state indicators). The exact path expands each call into
# :class:`Increment`s; the fast path only sums calls (see :class:`BatchSums`).
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


def _days(when: date | None) -> tuple[str, ...]:
    return (STATE_DAY,) if when is None else (when.isoformat(), ALL_DAY)


def fold(payload: BaseModel) -> list[Increment]:
    """The counter increments one event causes (empty for events that move no indicator)."""
    out: list[Increment] = []

    def emit(path: Sequence[str], when: date | None, changes: Sequence[Change]) -> None:
        days = _days(when)
        for f, delta in changes:
            if delta == 0:
                continue
            for depth, unit in enumerate(path, start=1):
                for day in days:
                    out.append(Increment(unit, depth, day, f, delta))

    fold_into(payload, emit)
    return out


Sections = dict[str, dict[str, int]]
"""``{day: {field: delta}}`` of one counter document, ``day`` an ISO date, ``STATE_DAY`` or ``ALL_DAY``."""


class BatchSums:
    """The fast path: a batch's indicator changes summed before they are spread over units and days.

    Used when no counter document has seen any of the batch's offsets (the normal case; a
    redelivery takes the exact, per-event path). Summing first keeps the per-event cost to a
    few dict additions: a batch of visits to ~60 units over ~50 days repeats the same
    (path, day, indicator) keys thousands of times.
    """

    def __init__(self) -> None:
        self.sums: dict[tuple[tuple[str, ...], date | None], dict[str, int]] = {}

    def emit(self, path: Sequence[str], when: date | None, changes: Sequence[Change]) -> None:
        where = (tuple(path), when)
        fields = self.sums.get(where)
        if fields is None:
            fields = self.sums[where] = {}
        for f, delta in changes:
            if delta:
                fields[f] = fields.get(f, 0) + delta

    def add_into(self, counters_of: Callable[[str, int], dict[str, Any]]) -> None:
        """Add the sums into the ``{state, all, days}`` content ``counters_of(unit, depth)`` gives.

        One pass straight into the documents (no intermediate deltas): this is the projector's
        per-fetch cost, about (unit paths x days in the fetch x depth x fields) additions.
        Counters that net to zero stay, as zeros.
        """
        for (path, when), fields in self.sums.items():
            days = _days(when)
            for depth, unit in enumerate(path, start=1):
                counters = counters_of(unit, depth)
                for day in days:
                    target = section(counters, day)
                    for f, v in fields.items():
                        target[f] = target.get(f, 0) + v


def prune(docs: Mapping[str, Sections]) -> dict[str, Sections]:
    """Drop fields, days and documents whose changes net to zero."""
    out: dict[str, Sections] = {}
    for doc, days in docs.items():
        kept = {day: {f: v for f, v in fields.items() if v} for day, fields in days.items()}
        kept = {day: fields for day, fields in kept.items() if fields}
        if kept:
            out[doc] = kept
    return out


def as_sections(paths: Mapping[str, int]) -> Sections:
    """``{counter path: delta}`` (as :func:`net` gives) regrouped as ``{day: {field: delta}}``."""
    out: Sections = {}
    for path, delta in paths.items():
        head, _, field = path.rpartition(".")
        day = head.removeprefix(f"{DAYS}.")
        out.setdefault(day, {})[field] = delta
    return out


def section(counters: dict[str, Any], day: str) -> dict[str, int]:
    """The fields of ``day`` (an ISO date, ``STATE_DAY`` or ``ALL_DAY``) in a counter document's
    ``{state, all, days}`` content, created if missing."""
    if day in (STATE_DAY, ALL_DAY):
        target: dict[str, int] = counters.setdefault(day, {})
    else:
        target = counters.setdefault(DAYS, {}).setdefault(day, {})
    return target


def add_sections(counters: dict[str, Any], deltas: Sections) -> None:
    """Add ``deltas`` into a counter document's ``{state, all, days}`` content, in place."""
    for day, fields in deltas.items():
        target = section(counters, day)
        for f, v in fields.items():
            total = target.get(f, 0) + v
            if total:
                target[f] = total
            else:
                target.pop(f, None)


def net(increments: Iterable[Increment]) -> dict[str, dict[str, int]]:
    """Sum increments per document and counter path, dropping paths that net to zero."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for inc in increments:
        totals[inc.doc_id][inc.path] += inc.delta
    return {d: {f: v for f, v in fs.items() if v} for d, fs in totals.items() if any(fs.values())}


def plan_updates(
    increments: Sequence[tuple[int, Increment]], watermarks: Mapping[str, int | None], batch_max: int
) -> dict[str, dict[str, int]]:
    """Per document, the net deltas of the increments it has not absorbed yet.

    ``increments`` pairs each increment with the offset of its event; ``watermarks`` holds, per
    document, the highest offset of this partition already applied to it (None: never). A document
    already at ``batch_max`` or beyond needs nothing; otherwise it takes exactly the increments of
    events after its watermark. That is what makes a redelivered batch harmless, however it is cut.
    """
    pending: list[Increment] = []
    for offset, inc in increments:
        wm = watermarks.get(inc.doc_id)
        if wm is not None and (wm >= batch_max or offset <= wm):
            continue
        pending.append(inc)
    return net(pending)


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
