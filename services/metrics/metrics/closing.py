"""Closing the week: reporting periods, approval upward, late data as adjustments, as-of figures,
completeness and the weekly narrative.

A manager closes a period (a Monday-Sunday week, or a campaign's window) for their unit; the
parent's manager approves it, up to the province, whose close an admin approves; an admin may
reopen with a reason. Closing freezes the unit's *reported* figures. They are read from the event
log up to a :class:`metrics.ledger.Cut` taken at the close, not from the counters, so that every
event is on exactly one side: in the reported figures (below the cut) or an adjustment (at or
after it). The *revised* figures are the reported ones plus the adjustments, and equal the live
counters once the projector has caught up. Nothing here changes the live figures.

Close documents are correctness state, not projection: they live outside the generations, so a
rebuild keeps them. Each carries its own audit trail (who, when, what before and after, why), read
with every other service's through ``GET /v1/audit``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from metrics.ledger import Cut, Entry
from metrics.projection import CATALOGUE
from metrics.repository import PeriodRepository, ProjectionRepository, path_of, row_owners, subtree_of
from metrics.schemas import (
    Adjustment,
    CampaignRisk,
    Completeness,
    PeriodFigures,
    PeriodOut,
    PeriodUnit,
    ReportRow,
    ReportRows,
    ReportTable,
    Summary,
    TeamReporting,
)
from metrics.service import (
    FLAT_KEYS,
    LOCAL_TZ,
    MetricsService,
    RowSums,
    StreamedReport,
    Totals,
    flat_figures,
    resolve_unit,
    unattributed_row,
)
from shared.audit import AUDIT, audit_entry
from shared.auth import Principal, Role, require_role
from shared.contracts import reporting as rpt
from shared.envelope import Envelope, make_event
from shared.errors import Conflict, Forbidden, InvalidInput, NotFound

SOURCE = "/metrics"
WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
CAMPAIGN_PREFIX = "campaign-"
# The log is read from a day before the period: a copy of an event is only recognised when its
# first copy is read too, and no record is dated before it reaches the log.
READ_MARGIN = timedelta(days=1)
# Counter field -> flattened summary key (``online_applications_l3`` -> ``online_applications.l3``).
KEY_OF_FIELD: dict[str, str] = {spec.field(split): key for key, spec, split in FLAT_KEYS}
DATED_KEYS = tuple(key for key, spec, _ in FLAT_KEYS if spec.dated)


class EventLogReader(Protocol):
    async def end(self) -> Cut: ...

    async def at(self, moment: datetime) -> Cut: ...

    def entries(
        self, since: datetime, until: Cut | None, days: tuple[str, str], units: Sequence[str]
    ) -> Any: ...  # AsyncIterator[Entry]


@dataclass(frozen=True)
class Period:
    id: str
    kind: Literal["week", "campaign"]
    first: date
    last: date
    campaign: str | None = None

    @property
    def days(self) -> tuple[str, str]:
        return (self.first.isoformat(), self.last.isoformat())

    @property
    def starts_at(self) -> datetime:
        """Local midnight of its first day, as UTC."""
        return datetime.combine(self.first, time(), LOCAL_TZ).astimezone(UTC)


def week_of(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def parse_week(text: str) -> Period | None:
    match = WEEK.match(text)
    if match is None:
        return None
    try:
        monday = date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except ValueError:
        raise InvalidInput(f"{text} is not an ISO week (YYYY-Www)", slug="bad-period") from None
    return Period(id=text, kind="week", first=monday, last=monday + timedelta(days=6))


def dated_figures(entries: Iterable[Entry]) -> dict[str, int]:
    """The dated flattened keys, summed over the entries' changes."""
    dated: dict[str, int] = defaultdict(int)
    for entry in entries:
        for change in entry.changes:
            for f, delta in change.fields:
                dated[f] += delta
    flat = flat_figures(Totals(dict(dated), {}))
    return {k: flat[k] for k in DATED_KEYS}


def adjustment_of(entry: Entry) -> Adjustment:
    changes: dict[str, int] = defaultdict(int)
    units, days, teams = set(), set(), set()
    for change in entry.changes:
        units.add(change.unit)
        days.add(change.day)
        if change.team:
            teams.add(change.team)
        for f, delta in change.fields:
            if f in KEY_OF_FIELD:
                changes[KEY_OF_FIELD[f]] += delta
    return Adjustment(
        event_id=entry.event_id,
        event_type=entry.event_type,
        subject=entry.subject,
        arrived_at=entry.appended_at,
        units=sorted(units),
        days=sorted(date.fromisoformat(d) for d in days),
        teams=sorted(teams),
        changes={k: v for k, v in changes.items() if v},
    )


def _actor(principal: Principal) -> dict[str, Any]:
    return {"sub": principal.sub, "role": principal.role.value, "unit": principal.unit}


def _status(doc: Mapping[str, Any] | None) -> str:
    return str(doc["status"]) if doc is not None else "open"


class ClosingService:
    def __init__(
        self,
        metrics: MetricsService,
        periods: PeriodRepository,
        log: EventLogReader,
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        self._metrics = metrics
        self._periods = periods
        self._log = log
        self._notify = notify  # wakes the outbox relay after a write that carries events

    async def period(self, repo: ProjectionRepository, text: str) -> Period:
        week = parse_week(text)
        if week is not None:
            return week
        if text.startswith(CAMPAIGN_PREFIX):
            code = text.removeprefix(CAMPAIGN_PREFIX)
            doc = await repo.campaign(code)
            if doc is None:
                raise NotFound(f"campaign {code} is not known", slug="campaign-not-found")
            first, last = date.fromisoformat(doc["starts_on"]), date.fromisoformat(doc["ends_on"])
            return Period(id=text, kind="campaign", first=first, last=last, campaign=code)
        raise InvalidInput(
            f"{text!r} is not a period: use an ISO week (2025-W28) or campaign-<code>", slug="bad-period"
        )

    async def _context(
        self, principal: Principal, period_id: str, unit: str | None
    ) -> tuple[ProjectionRepository, dict[str, Any], Period, str]:
        repo = await self._metrics.projection()
        period = await self.period(repo, period_id)
        tree = await repo.tree()
        return repo, tree, period, resolve_unit(tree, principal, unit)

    # --- close, approve, reopen -----------------------------------------------------------------------

    async def close(self, principal: Principal, period_id: str, unit: str, note: str | None) -> PeriodUnit:
        require_role(principal, Role.admin, Role.manager)
        _repo, tree, period, code = await self._context(principal, period_id, unit)
        if tree[code].get("status", "active") != "active":
            raise Conflict(f"unit {code} is {tree[code]['status']}: it reports no more", slug="unit-not-active")
        if period.last >= datetime.now(LOCAL_TZ).date() + timedelta(days=1) and period.kind == "week":
            pass  # closing a running week is allowed: what arrives later is an adjustment
        current = await self._periods.get(period.id, code)
        if _status(current) != "open":
            raise Conflict(f"{period.id} is already {_status(current)} for {code}", slug="period-not-open")
        children = [
            c for c, u in tree.items() if u.get("parent_code") == code and u.get("status", "active") == "active"
        ]
        docs = {d["unit"]: d for d in await self._periods.of_units(period.id, children)}
        waiting = sorted(c for c in children if _status(docs.get(c)) != "approved")
        if waiting:
            raise Conflict(
                f"child units not approved yet for {period.id}: {', '.join(waiting)}",
                slug="children-not-approved",
                units=waiting,
            )
        cut = await self._log.end()
        units = subtree_of(tree, code)
        entries = [e async for e in self._log.entries(period.starts_at - READ_MARGIN, cut, period.days, units)]
        summary = await self._metrics.summary(principal, unit=code, campaign=None, first=period.first, last=period.last)
        state = {k: v for k, v in _flat(summary.model_dump()).items() if k not in DATED_KEYS}
        now = datetime.now(UTC)
        reported = {**dated_figures(entries), **state}
        doc = {
            "period": period.id,
            "unit": code,
            "unit_path": path_of(tree, code),
            "first": period.first.isoformat(),
            "last": period.last.isoformat(),
            "status": "closed",
            "closed_at": now,
            "closed_by": _actor(principal),
            "note": note,
            "cut": cut,
            "units": units,
            # Stored nested like a summary (field names may not contain dots): readable as it is.
            "reported": nest(reported),
            "reported_teams": sorted({c.team for e in entries for c in e.changes if c.team}),
        }

        def closed_event(version: int) -> list[Envelope]:
            payload = rpt.PeriodClosed(
                period=_ref(period, code, tree),
                closed_at=now,
                closed_by=principal.sub,
                reported=nest(reported),
                version=version,
            )
            return [_event(rpt.PERIOD_CLOSED, payload, period, code)]

        entry = _history(principal, "close", "open", note, period, code, path_of(tree, code))
        saved = await self._periods.close(period.id, code, current, doc, entry, closed_event)
        self._notify()
        if saved is None:
            raise Conflict(f"{period.id} of {code} changed meanwhile; retry", slug="concurrent-change")
        return _unit_out(saved)

    async def approve(self, principal: Principal, period_id: str, unit: str) -> PeriodUnit:
        require_role(principal, Role.admin, Role.manager)
        _repo, tree, period, code = await self._context(principal, period_id, unit)
        parent = tree[code].get("parent_code")
        if principal.role is not Role.admin:
            # The parent's manager approves: a manager of the unit itself may not.
            if parent is None or not principal.in_scope(path_of(tree, parent)):
                raise Forbidden(f"only a manager of {code}'s parent unit approves its period", slug="not-parent")
        current = await self._periods.get(period.id, code)
        if _status(current) != "closed":
            raise Conflict(
                f"{period.id} is {_status(current)} for {code}; only a closed period is approved",
                slug="period-not-closed",
            )
        assert current is not None
        now = datetime.now(UTC)
        approved = rpt.PeriodApproved(
            period=_ref(period, code, tree), approved_at=now, approved_by=principal.sub, version=current["version"]
        )
        saved = await self._periods.transition(
            current,
            {"status": "approved", "approved_at": now, "approved_by": _actor(principal)},
            _history(principal, "approve", "closed", None, period, code, path_of(tree, code)),
            [_event(rpt.PERIOD_APPROVED, approved, period, code)],
        )
        self._notify()
        if saved is None:
            raise Conflict(f"{period.id} of {code} changed meanwhile; retry", slug="concurrent-change")
        return _unit_out(saved)

    async def reopen(self, principal: Principal, period_id: str, unit: str, reason: str) -> PeriodUnit:
        require_role(principal, Role.admin)
        _repo, tree, period, code = await self._context(principal, period_id, unit)
        current = await self._periods.get(period.id, code)
        status = _status(current)
        if status == "open":
            raise Conflict(f"{period.id} is open for {code}", slug="period-not-closed")
        parent = tree[code].get("parent_code")
        if parent is not None and _status(await self._periods.get(period.id, parent)) != "open":
            raise Conflict(f"reopen {parent} first: its close includes {code}", slug="parent-closed")
        assert current is not None
        now = datetime.now(UTC)
        reopened = rpt.PeriodReopened(
            period=_ref(period, code, tree),
            reopened_at=now,
            reopened_by=principal.sub,
            reason=reason,
            version=current["version"],
        )
        saved = await self._periods.transition(
            current,
            {"status": "open", "reopened_at": now, "reopened_by": _actor(principal), "reopen_reason": reason},
            _history(principal, "reopen", status, reason, period, code, path_of(tree, code)),
            [_event(rpt.PERIOD_REOPENED, reopened, period, code)],
        )
        self._notify()
        if saved is None:
            raise Conflict(f"{period.id} of {code} changed meanwhile; retry", slug="concurrent-change")
        return _unit_out(saved)

    # --- reading --------------------------------------------------------------------------------------

    async def status(self, principal: Principal, period_id: str, unit: str | None) -> PeriodOut:
        _repo, tree, period, code = await self._context(principal, period_id, unit)
        units = subtree_of(tree, code)
        docs = {d["unit"]: d for d in await self._periods.of_units(period.id, units)}
        rows = []
        for c in sorted(units, key=lambda c: (len(path_of(tree, c)), c)):
            if tree[c].get("status", "active") != "active" and c not in docs:
                continue
            rows.append(_unit_out(docs.get(c), period.id, c, tree))
        return PeriodOut(
            period=period.id,
            kind=period.kind,
            first=period.first,
            last=period.last,
            unit=code,
            units=rows,
            not_closed=[r.unit for r in rows if r.status == "open"],
        )

    async def _period_log(self, period: Period, units: Sequence[str]) -> list[Entry]:
        """The events of ``period``'s days for ``units``, read from the log once per request."""
        return [e async for e in self._log.entries(period.starts_at - READ_MARGIN, None, period.days, units)]

    async def figures(
        self, principal: Principal, period_id: str, unit: str, *, log: Sequence[Entry] | None = None
    ) -> PeriodFigures:
        """``log``: :meth:`_period_log` for at least the units closed with the period and those now below."""
        _repo, tree, period, code = await self._context(principal, period_id, unit)
        doc = await self._periods.get(period.id, code)
        if doc is None or doc.get("cut") is None:
            raise Conflict(f"{period.id} has never been closed for {code}", slug="period-not-closed")
        units = sorted(set(doc["units"]) | set(subtree_of(tree, code)))
        cut: Cut = doc["cut"]
        if log is None:
            log = await self._period_log(period, units)
        late = [e for e in log if e.offset >= cut.get(e.key, 0)]
        reported = _flat(doc["reported"])
        late.sort(key=lambda e: (e.appended_at, e.key, e.offset))
        adjustments = [adjustment_of(e) for e in late]
        delta = dated_figures(late)
        summary = await self._metrics.summary(principal, unit=code, campaign=None, first=period.first, last=period.last)
        live = _flat(summary.model_dump())
        revised = {k: (reported.get(k, 0) + delta[k]) if k in delta else live[k] for k in live}
        return PeriodFigures(
            period=period.id,
            unit=code,
            status=doc["status"],
            closed_at=doc["closed_at"],
            reported=reported,
            revised=revised,
            difference={k: revised[k] - reported.get(k, 0) for k in revised},
            adjustments=adjustments,
        )

    async def known_at(
        self, principal: Principal, unit: str | None, first: date, last: date, moment: datetime
    ) -> dict[str, int]:
        """The dated figures of the unit's subtree over ``first..last`` as the log held them at ``moment``."""
        repo = await self._metrics.projection()
        tree = await repo.tree()
        code = resolve_unit(tree, principal, unit)
        cut = await self._log.at(moment)
        since = datetime.combine(first, time(), LOCAL_TZ).astimezone(UTC) - READ_MARGIN
        entries = [
            e
            async for e in self._log.entries(since, cut, (first.isoformat(), last.isoformat()), subtree_of(tree, code))
        ]
        return dated_figures(entries)

    async def table_known_at(self, principal: Principal, report: StreamedReport, moment: datetime) -> StreamedReport:
        """``report`` (as the live service made it) with its dated figures as the log held them at ``moment``."""
        table = report.head
        repo = await self._metrics.projection()
        tree = await repo.tree()
        owners = row_owners(tree, table.unit)
        cut = await self._log.at(moment)
        first, last = table.previous_from, table.to
        since = datetime.combine(first, time(), LOCAL_TZ).astimezone(UTC) - READ_MARGIN
        lo = table.from_.isoformat()
        by_teams = table.rows_by is ReportRows.teams
        now: dict[str | None, list[Entry]] = defaultdict(list)
        before: dict[str | None, list[Entry]] = defaultdict(list)
        everything_now: list[Entry] = []
        everything_before: list[Entry] = []
        async for e in self._log.entries(since, cut, (first.isoformat(), last.isoformat()), list(owners)):
            for change in e.changes:
                part = Entry(e.key, e.offset, e.appended_at, e.event_id, e.event_type, e.subject, [change])
                owner = change.team if by_teams else owners.get(change.unit)
                current = change.day >= lo
                (now if current else before)[owner].append(part)
                (everything_now if current else everything_before).append(part)

        def known(row: ReportRow, current: list[Entry], previous: list[Entry]) -> ReportRow:
            figures = {**row.figures, **dated_figures(current)}
            earlier = {**row.previous, **dated_figures(previous)}
            change = {k: None if earlier[k] is None else figures[k] - int(earlier[k] or 0) for k in figures}
            return row.model_copy(update={"figures": figures, "previous": earlier, "change": change})

        totals = known(table.totals, everything_now, everything_before)

        def rows() -> Iterator[ReportRow]:
            sums = RowSums()
            for row in report.rows:
                if row.row == "unattributed":
                    continue
                key = row.team if by_teams else row.unit
                row = known(row, now[key], before[key])
                sums.add(row)
                yield row
            if by_teams:
                yield unattributed_row(table.unit, totals, sums)

        return StreamedReport(table.model_copy(update={"totals": totals, "known_at": moment}), rows())

    async def reported(
        self, principal: Principal, unit: str | None, first: date, last: date
    ) -> tuple[str, dict[str, int]]:
        """The period and the figures frozen when ``first..last`` (a week or a campaign) was closed for the unit."""
        repo = await self._metrics.projection()
        tree = await repo.tree()
        code = resolve_unit(tree, principal, unit)
        candidates = [week_of(first)] + [f"{CAMPAIGN_PREFIX}{c['_id']}" for c in await repo.all_campaigns()]
        for candidate in candidates:
            doc = await self._periods.get(candidate, code)
            if doc is not None and doc["first"] == first.isoformat() and doc["last"] == last.isoformat():
                if doc.get("cut") is not None and doc["status"] != "open":
                    return candidate, _flat(doc["reported"])
        raise Conflict(f"no closed period {first}..{last} for {code}", slug="period-not-closed")

    async def completeness(
        self, principal: Principal, period_id: str, unit: str, *, log: Sequence[Entry] | None = None
    ) -> Completeness:
        """``log``: :meth:`_period_log` for at least the units now below ``unit``."""
        repo, tree, period, code = await self._context(principal, period_id, unit)
        units = subtree_of(tree, code)
        below = set(units)
        doc = await self._periods.get(period.id, code)
        cut: Cut | None = doc.get("cut") if doc is not None and doc["status"] != "open" else None
        on_time: set[str] = set()
        late: set[str] = set()
        for e in await self._period_log(period, units) if log is None else log:
            teams = {c.team for c in e.changes if c.team and c.unit in below}
            if cut is None or e.offset < cut.get(e.key, 0):
                on_time |= teams
            else:
                late |= teams
        known = [t for t in await repo.teams_of(units) if t.get("active", True) or t["_id"] in on_time | late]
        rows = []
        for t in sorted(known, key=lambda t: (t.get("unit_code", ""), t["_id"])):
            status: Literal["on_time", "late", "silent"] = (
                "on_time" if t["_id"] in on_time else "late" if t["_id"] in late else "silent"
            )
            rows.append(
                TeamReporting(
                    team=t["_id"],
                    name=str(t.get("name") or t["_id"]),
                    unit=str(t.get("unit_code") or ""),
                    kind=t.get("kind"),
                    active=bool(t.get("active", True)),
                    status=status,
                )
            )
        expected = [r for r in rows if r.active]
        docs = {d["unit"]: d for d in await self._periods.of_units(period.id, units)}
        active_units = [c for c in units if tree[c].get("status", "active") == "active"]
        return Completeness(
            period=period.id,
            unit=code,
            closed=cut is not None,
            teams_expected=len(expected),
            teams_reported=sum(1 for r in expected if r.status != "silent"),
            teams_on_time=sum(1 for r in expected if r.status == "on_time"),
            teams_late=sum(1 for r in expected if r.status == "late"),
            reporting_rate=round(sum(1 for r in expected if r.status != "silent") / len(expected) * 100, 1)
            if expected
            else None,
            teams=rows,
            silent_teams=[r.team for r in expected if r.status == "silent"],
            units_not_closed=sorted(c for c in active_units if _status(docs.get(c)) == "open"),
        )

    async def narrative_inputs(self, principal: Principal, period_id: str, unit: str) -> NarrativeInputs:
        repo, tree, period, code = await self._context(principal, period_id, unit)
        report = await self._metrics.report_stream(
            principal, unit=code, campaign=None, first=period.first, last=period.last, today=period.last
        )
        table = report.collected()
        risks = []
        for c in await repo.all_campaigns():
            if c["starts_on"] <= period.last.isoformat() and c["ends_on"] >= period.first.isoformat():
                try:
                    risks.append(await self._metrics.campaign_risk(principal, c["_id"], period.last))
                except Forbidden:
                    continue
        closed = await self._periods.get(period.id, code)
        closed_units = set(closed["units"]) if closed else set()
        log = await self._period_log(period, sorted(closed_units | set(subtree_of(tree, code))))
        try:
            figures = await self.figures(principal, period_id, code, log=log)
        except Conflict:
            figures = None
        return NarrativeInputs(
            period=period,
            table=table,
            risks=risks,
            figures=figures,
            completeness=await self.completeness(principal, period_id, code, log=log),
            earlier=await self._late_for_earlier_weeks(tree, code, period),
        )

    async def _late_for_earlier_weeks(self, tree: Mapping[str, Any], code: str, period: Period) -> list[LateWeek]:
        """Per earlier closed week of the unit, the records that reached the log after its close."""
        closes = [
            d
            for d in await self._periods.of_unit(code)
            if d["status"] != "open"
            and d.get("cut")
            and WEEK.match(d["period"])
            and d["last"] < period.first.isoformat()
        ]
        if not closes:
            return []
        first = min(d["first"] for d in closes)
        last = max(d["last"] for d in closes)
        units = sorted({u for d in closes for u in d["units"]} | set(subtree_of(tree, code)))
        since = datetime.combine(date.fromisoformat(first), time(), LOCAL_TZ).astimezone(UTC) - READ_MARGIN
        late: dict[str, list[Entry]] = defaultdict(list)
        async for e in self._log.entries(since, None, (first, last), units):
            for change in e.changes:
                close = next((d for d in closes if d["first"] <= change.day <= d["last"]), None)
                if close is not None and e.offset >= close["cut"].get(e.key, 0):
                    part = Entry(e.key, e.offset, e.appended_at, e.event_id, e.event_type, e.subject, [change])
                    late[close["period"]].append(part)
        return [
            LateWeek(
                period=p,
                records=len({e.event_id for e in entries}),
                difference={k: v for k, v in dated_figures(entries).items() if v},
            )
            for p, entries in sorted(late.items())
        ]


@dataclass(frozen=True)
class LateWeek:
    period: str
    records: int
    difference: dict[str, int]


@dataclass(frozen=True)
class NarrativeInputs:
    period: Period
    table: ReportTable
    risks: list[CampaignRisk]
    figures: PeriodFigures | None
    completeness: Completeness
    earlier: list[LateWeek]


def with_figures(summary: Summary, flat: Mapping[str, int], **scope: Any) -> Summary:
    """``summary`` with the flattened keys of ``flat`` put in place, and ``scope`` noted."""
    body = summary.model_dump()
    for key, value in flat.items():
        name, _, split = key.partition(".")
        if split:
            body[name][split] = value
        else:
            body[name] = value
    body["scope"] = {**body["scope"], **scope}
    return Summary.model_validate(body)


def nest(flat: Mapping[str, int]) -> dict[str, Any]:
    """Flattened keys back into a summary's shape: ``{"online_applications": {"l3": 1, ...}, ...}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        name, _, split = key.partition(".")
        if split:
            out.setdefault(name, {})[split] = value
        else:
            out[name] = value
    return out


def _flat(summary: Mapping[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in summary.items():
        if key in ("as_of", "scope"):
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{split}": int(n) for split, n in value.items()})
        else:
            out[key] = int(value)
    return out


def _ref(period: Period, code: str, tree: Mapping[str, Any]) -> rpt.PeriodRef:
    return rpt.PeriodRef(
        period=period.id, first=period.first, last=period.last, unit_code=code, unit_path=path_of(tree, code)
    )


def _event(event_type: str, payload: BaseModel, period: Period, code: str) -> Envelope:
    return make_event(event_type, payload, source=SOURCE, key=f"{period.id}/{code}")


def _history(
    principal: Principal, action: str, before: str, reason: str | None, period: Period, code: str, path: list[str]
) -> dict[str, Any]:
    """The audit entry of one step of a unit's period (the shared audit trail's shape)."""
    after = {"close": "closed", "approve": "approved", "reopen": "open"}[action]
    return audit_entry(
        principal,
        f"period.{after if action != 'reopen' else 'reopened'}",
        "period",
        f"{period.id}/{code}",
        path,
        before={"status": before},
        after={"status": after},
        reason=reason,
    )


def _unit_out(
    doc: Mapping[str, Any] | None, period: str = "", code: str = "", tree: Mapping[str, Any] | None = None
) -> PeriodUnit:
    if doc is None:
        name = str((tree or {}).get(code, {}).get("name", code))
        return PeriodUnit(period=period, unit=code, name=name, status="open")
    return PeriodUnit.model_validate(
        {
            **{
                k: doc.get(k)
                for k in (
                    "period",
                    "unit",
                    "status",
                    "closed_at",
                    "closed_by",
                    "approved_at",
                    "approved_by",
                    "reopened_at",
                    "reopen_reason",
                    "note",
                )
            },
            "name": str((tree or {}).get(doc["unit"], {}).get("name", doc["unit"])),
            "reported": _flat(doc["reported"]) if doc["status"] != "open" and doc.get("reported") else None,
            "history": doc.get(AUDIT, []),
        }
    )


def indicator_names() -> list[str]:
    return list(CATALOGUE)
