"""Prometheus gauges of the indicators, refreshed from the projection in the background.

A scrape only reads the last snapshot; the Mongo reads happen every ``gauge_refresh_seconds`` in
:class:`GaugeRefresher`. Only the province and its direct children are exported, which bounds the
number of series however large the organisation tree grows; campaigns add a few series per target
(its status is one series labelled with the current status, see :func:`metrics.service.assess`).

Each indicator is a metric family of its own, ``bridge_indicator_<name>{unit, key, level}``:
households, courses and posts are different quantities, and one family for all of them made
``sum()`` over it meaningless.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date

from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from metrics.projection import ALL_DAY, CATALOGUE, STATE_DAY
from metrics.repository import path_of, subtree_of
from metrics.service import MetricsService, add_up, assess, local_today
from shared.logging import get_logger

log = get_logger(__name__)

LEVELS = {1: "province", 2: "commune"}
INDICATOR_PREFIX = "bridge_indicator_"
INDICATOR_LABELS = ["unit", "key", "level"]


def indicator_metric(name: str) -> str:
    """The metric family of an indicator: ``bridge_indicator_households_visited``."""
    return INDICATOR_PREFIX + name


@dataclass
class Snapshot:
    # Per indicator name: ((unit, key, level), value).
    indicators: dict[str, list[tuple[tuple[str, str, str], float]]] = field(default_factory=dict)
    targets: list[tuple[tuple[str, str, str], float]] = field(default_factory=list)
    actuals: list[tuple[tuple[str, str, str], float]] = field(default_factory=list)
    ratios: list[tuple[tuple[str, str, str], float]] = field(default_factory=list)
    statuses: list[tuple[tuple[str, str, str, str], float]] = field(default_factory=list)
    projected_ratios: list[tuple[tuple[str, str, str], float]] = field(default_factory=list)


class IndicatorCollector(Collector):
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot
        for name in CATALOGUE:
            family = GaugeMetricFamily(
                indicator_metric(name),
                f"All-time {name} of a province or commune subtree, per breakdown key (total: all of it)",
                labels=INDICATOR_LABELS,
            )
            for series, value in snap.indicators.get(name, ()):
                family.add_metric(list(series), value)
            yield family
        families = (
            ("bridge_campaign_target", "Campaign target value", ["campaign", "indicator", "unit"], snap.targets),
            (
                "bridge_campaign_actual",
                "Indicator total over the campaign window for the target unit",
                ["campaign", "indicator", "unit"],
                snap.actuals,
            ),
            (
                "bridge_campaign_progress_ratio",
                "Campaign actual divided by target",
                ["campaign", "indicator", "unit"],
                snap.ratios,
            ),
            (
                "bridge_campaign_target_status",
                "1 for the target's current status (done, on_track, at_risk, behind, not_started)",
                ["campaign", "indicator", "unit", "status"],
                snap.statuses,
            ),
            (
                "bridge_campaign_projected_ratio",
                "Campaign figure projected at ends_on at the last 7 days' pace, divided by target",
                ["campaign", "indicator", "unit"],
                snap.projected_ratios,
            ),
        )
        for name, doc, labels, samples in families:
            family = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in samples:
                family.add_metric(list(values), value)
            yield family


COLLECTOR = IndicatorCollector()
REGISTRY.register(COLLECTOR)


async def take_snapshot(service: MetricsService) -> Snapshot:
    # One read of the tree and of all counter rows per refresh, rolled up along today's tree.
    repo = await service.projection()
    tree = await repo.tree()
    rows = await repo.all_counters()
    snap = Snapshot()
    depth = {code: len(path_of(tree, code)) for code in tree}
    for unit in sorted(tree):
        level = LEVELS.get(depth[unit])
        if level is None:
            continue
        below = set(subtree_of(tree, unit))
        totals = add_up(r for r in rows if r["unit"] in below and r["day"] in (ALL_DAY, STATE_DAY))
        for name, spec in CATALOGUE.items():
            for key, value in totals.of(spec).items():
                snap.indicators.setdefault(name, []).append(((unit, key, level), float(value)))
    today = local_today()
    for campaign in await repo.all_campaigns():
        starts, ends = campaign["starts_on"], campaign["ends_on"]
        for t in campaign.get("targets", []):
            labels = (str(campaign["_id"]), t["indicator"], t["unit_code"])
            below = set(subtree_of(tree, t["unit_code"]))
            in_window = [
                r for r in rows if r["unit"] in below and (r["day"] == STATE_DAY or starts <= r["day"] <= ends)
            ]
            spec = CATALOGUE[t["indicator"]]
            actual = add_up(in_window).of(spec)["total"]
            snap.targets.append((labels, float(t["value"])))
            snap.actuals.append((labels, float(actual)))
            if t["value"]:
                snap.ratios.append((labels, actual / t["value"]))
            risk = assess(spec, int(t["value"]), in_window, date.fromisoformat(starts), date.fromisoformat(ends), today)
            # One series per target: a status that changes replaces its series at the next refresh.
            snap.statuses.append(((*labels, risk.status.value), 1.0))
            if risk.projected_ratio is not None:
                snap.projected_ratios.append((labels, risk.projected_ratio))
    return snap


class GaugeRefresher:
    def __init__(self, service: MetricsService, interval: float) -> None:
        self._service = service
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        COLLECTOR.snapshot = await take_snapshot(self._service)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="metrics-gauges")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("gauge_refresh_failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(self._interval)
