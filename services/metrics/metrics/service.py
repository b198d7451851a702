"""Reading the projection: summaries, campaign progress, time series and freshness.

Every read resolves the active generation first (kept for a second, see ``MetricsStore``), reads
the unit's one counter document by ``_id`` and sums its days here (FerretDB's aggregation is too
limited to do it server-side).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from metrics.projection import CATALOGUE, STATE_DAY, IndicatorSpec
from metrics.repository import MetricsStore, ProjectionRepository
from metrics.schemas import (
    CampaignProgress,
    Freshness,
    Interval,
    Point,
    Summary,
    TargetProgress,
    Timeseries,
    TopicFreshness,
)
from shared.auth import Principal, Role, require_scope
from shared.errors import Forbidden, InvalidInput, NotFound

FIRST_DAY = "0000-01-01"
LAST_DAY = "9999-12-31"
MAX_SERIES_DAYS = 800


@dataclass
class Totals:
    """Counter fields summed over a unit's dated documents, and its current-state counters."""

    dated: dict[str, int]
    state: dict[str, int]

    def of(self, spec: IndicatorSpec) -> dict[str, int]:
        return spec.values(self.dated if spec.dated else self.state)


def add_up(docs: Iterable[Mapping[str, Any]]) -> Totals:
    dated: dict[str, int] = defaultdict(int)
    state: dict[str, int] = defaultdict(int)
    for doc in docs:
        target = state if doc["day"] == STATE_DAY else dated
        for field, value in (doc.get("c") or {}).items():
            target[field] += int(value)
    return Totals(dict(dated), dict(state))


def figures(totals: Totals) -> dict[str, Any]:
    """The indicator part of a summary: split indicators as dicts, single-valued ones as ints."""
    out: dict[str, Any] = {}
    for name, spec in CATALOGUE.items():
        values = totals.of(spec)
        out[name] = values if spec.keys else values["total"]
    return out


def window_days(starts_on: date, ends_on: date, today: date) -> tuple[int, int]:
    """``(days elapsed, days in window)``, with elapsed counting today and capped to the window."""
    total = (ends_on - starts_on).days + 1
    elapsed = min(max((today - starts_on).days + 1, 0), total)
    return elapsed, total


def projected(actual: int, spec: IndicatorSpec, elapsed: int, total: int) -> float:
    if not spec.dated:
        return float(actual)  # current state does not accumulate over the window
    if elapsed <= 0:
        return 0.0
    return round(actual / elapsed * total, 1)


def bucket_start(day: date, interval: Interval) -> date:
    return day - timedelta(days=day.weekday()) if interval is Interval.week else day


def series(
    docs: Iterable[Mapping[str, Any]], spec: IndicatorSpec, interval: Interval, first: date, last: date
) -> list[Point]:
    """Contiguous buckets from ``first`` to ``last`` (weeks start on Monday), empty ones as zero."""
    per_bucket: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for doc in docs:
        if doc["day"] == STATE_DAY:
            continue
        start = bucket_start(date.fromisoformat(doc["day"]), interval)
        for field, value in (doc.get("c") or {}).items():
            per_bucket[start][field] += int(value)
    step = timedelta(days=7 if interval is Interval.week else 1)
    points = []
    start = bucket_start(first, interval)
    while start <= last:
        values = spec.values(per_bucket.get(start, {}))
        total = values.pop("total")
        points.append(Point(start=start, value=total, by=values))
        start += step
    return points


class MetricsService:
    def __init__(self, store: MetricsStore) -> None:
        self._store = store
        self.meta = store.meta

    async def projection(self) -> ProjectionRepository:
        """The active generation's collections, resolved at most a second ago."""
        return await self._store.projection()

    async def _unit(
        self, repo: ProjectionRepository, principal: Principal, code: str | None, *, prefer_root: bool = False
    ) -> str:
        if code is None:
            root = await repo.root_unit()
            if principal.role is Role.admin or (prefer_root and root is not None and principal.in_scope(root["path"])):
                if root is None:
                    raise NotFound("no units are known yet", slug="unit-not-found")
                code = str(root["_id"])
            elif principal.unit is None:
                raise Forbidden("your token names no unit; pass ?unit=", slug="out-of-scope")
            else:
                code = principal.unit
        unit = await repo.unit(code)
        if unit is None:
            raise NotFound(f"unit {code} is not known", slug="unit-not-found")
        require_scope(principal, unit["path"], "unit")
        return code

    async def summary(
        self,
        principal: Principal,
        *,
        unit: str | None,
        campaign: str | None,
        first: date | None,
        last: date | None,
    ) -> Summary:
        repo = await self.projection()
        if campaign is not None:
            doc = await repo.campaign(campaign)
            if doc is None:
                raise NotFound(f"campaign {campaign} is not known", slug="campaign-not-found")
            first = first or date.fromisoformat(doc["starts_on"])
            last = last or date.fromisoformat(doc["ends_on"])
        if first and last and first > last:
            raise InvalidInput("from must not be after to")
        code = await self._unit(repo, principal, unit, prefer_root=campaign is not None)
        if first is None and last is None:
            docs = await repo.counters_all_time(code)
        else:
            lo = first.isoformat() if first else FIRST_DAY
            hi = last.isoformat() if last else LAST_DAY
            docs = await repo.counters_in_range(code, lo, hi)
        unit_doc = await repo.unit(code) or {}
        body = {
            "as_of": datetime.now(UTC),
            "scope": {
                "unit": code,
                "from_": first,
                "to": last,
                "campaign": campaign,
                "unit_status": unit_doc.get("status", "active"),
                "merged_into": unit_doc.get("merged_into"),
                "successors": unit_doc.get("successors", []),
            },
            **figures(add_up(docs)),
        }
        return Summary.model_validate(body)

    async def campaign_actuals(
        self, repo: ProjectionRepository, campaign: Mapping[str, Any], units: Iterable[str]
    ) -> dict[str, Totals]:
        """Per unit, its totals over the campaign window."""
        out: dict[str, Totals] = {}
        for code in units:
            if code not in out:
                out[code] = add_up(await repo.counters_in_range(code, campaign["starts_on"], campaign["ends_on"]))
        return out

    async def progress(self, principal: Principal, code: str, today: date) -> CampaignProgress:
        repo = await self.projection()
        campaign = await repo.campaign(code)
        if campaign is None:
            raise NotFound(f"campaign {code} is not known", slug="campaign-not-found")
        starts_on, ends_on = date.fromisoformat(campaign["starts_on"]), date.fromisoformat(campaign["ends_on"])
        elapsed, total = window_days(starts_on, ends_on, today)
        visible = []
        for target in campaign.get("targets", []):
            unit = await repo.unit(target["unit_code"])
            if principal.role is Role.admin or (unit is not None and principal.in_scope(unit["path"])):
                visible.append(target)
        if campaign.get("targets") and not visible:
            raise Forbidden(f"no target of campaign {code} lies in your unit scope", slug="out-of-scope")
        actuals = await self.campaign_actuals(repo, campaign, [t["unit_code"] for t in visible])
        rows = []
        for target in visible:
            spec = CATALOGUE[target["indicator"]]
            actual = actuals[target["unit_code"]].of(spec)["total"]
            value = int(target["value"])
            rows.append(
                TargetProgress(
                    indicator=target["indicator"],
                    unit_code=target["unit_code"],
                    target=value,
                    actual=actual,
                    percent=round(actual / value * 100, 1) if value else None,
                    projected=projected(actual, spec, elapsed, total),
                    merged_from=target.get("merged_from", []),
                )
            )
        return CampaignProgress(
            campaign=code,
            name=campaign.get("name", code),
            starts_on=starts_on,
            ends_on=ends_on,
            as_of=today,
            days_elapsed=elapsed,
            days_total=total,
            targets=rows,
        )

    async def timeseries(
        self,
        principal: Principal,
        *,
        indicator: str,
        unit: str | None,
        interval: Interval,
        first: date | None,
        last: date | None,
        today: date,
    ) -> Timeseries:
        spec = CATALOGUE[indicator]
        if not spec.dated:
            raise InvalidInput(f"{indicator} counts current state; it has no time series", slug="not-dated")
        last = last or today
        first = first or last - timedelta(days=29)
        if first > last:
            raise InvalidInput("from must not be after to")
        if (last - first).days > MAX_SERIES_DAYS:
            raise InvalidInput(f"a time series spans at most {MAX_SERIES_DAYS} days")
        repo = await self.projection()
        code = await self._unit(repo, principal, unit)
        docs = await repo.counters_in_range(code, first.isoformat(), last.isoformat())
        return Timeseries.model_validate(
            {
                "indicator": indicator,
                "unit": code,
                "interval": interval,
                "from_": first,
                "to": last,
                "points": series(docs, spec, interval, first, last),
            }
        )

    @staticmethod
    def freshness(
        generation: int, topics: Mapping[str, str], last_event_time: Mapping[str, float], lag: Mapping[str, int]
    ) -> Freshness:
        """Per catalogue topic: newest projected event time and lag (``topics``: real -> base name)."""
        rows = []
        for real, base in topics.items():
            ts = last_event_time.get(real)
            lags = [v for k, v in lag.items() if k.rpartition(":")[0] == real]
            rows.append(
                TopicFreshness(
                    topic=base,
                    last_event_time=datetime.fromtimestamp(ts, UTC) if ts is not None else None,
                    lag=sum(lags) if lags else None,
                )
            )
        return Freshness(generation=generation, topics=rows)
