"""Generate the Grafana dashboards in ``deploy/grafana/dashboards/`` from code.

Run ``python -m scripts.dashboards`` after editing this file (``--check`` only compares). The JSON is
committed and provisioned by Grafana from ``/var/lib/grafana/dashboards``; the test
``tests/test_dashboards.py`` fails when the committed files differ from what this module generates,
and evaluates every PromQL expression below against a real Prometheus.

Grafana variables used in expressions, and what the test substitutes for them:
``$campaign`` -> a campaign code of the scenario, ``$__rate_interval`` -> ``1m``, ``$__range`` -> ``5m``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, TableSortByFieldState, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueColorMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "deploy" / "grafana" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
TIMEZONE = "Asia/Ho_Chi_Minh"
# Health probes and scrapes would drown the API's own latency and error figures.
API_ROUTES = 'route!~"/metrics|/healthz|/readyz"'


# --- small builders ---------------------------------------------------------------------------------
def query(expr: str, legend: str = "", ref: str = "A", *, table_format: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    if table_format:
        q = q.format(PromQueryFormat.TABLE).instant()
    else:
        q = q.range()
    return q


def steps(*pairs: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in pairs])
    )


NEUTRAL = steps((None, "blue"))
PROGRESS = steps((None, "red"), (0.5, "orange"), (1.0, "green"))
BAD_WHEN_ABOVE_ZERO = steps((None, "green"), (1, "red"))


def legend_table() -> VizLegendOptions:
    return (
        VizLegendOptions()
        .display_mode(LegendDisplayMode.TABLE)
        .placement(LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
    )


def series(
    title: str, queries: Sequence[prometheus.Dataquery], *, unit: str = "short", width: int = 12, description: str = ""
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .targets(list(queries))
        .unit(unit)
        .min(0)
        .line_width(2)
        .fill_opacity(10)
        .legend(legend_table())
        .height(8)
        .span(width)
    )
    return panel.description(description) if description else panel


def stat_panel(
    title: str,
    queries: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    width: int = 6,
    thresholds: dashboard.ThresholdsConfig = NEUTRAL,
    description: str = "",
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .targets(list(queries))
        .unit(unit)
        .thresholds(thresholds)
        .graph_mode(BigValueGraphMode.AREA)
        .color_mode(BigValueColorMode.VALUE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(5)
        .span(width)
    )
    return panel.description(description) if description else panel


def bars(
    title: str, queries: Sequence[prometheus.Dataquery], *, unit: str = "short", width: int = 12
) -> bargauge.Panel:
    return (
        bargauge.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .targets(list(queries))
        .unit(unit)
        .min(0)
        .thresholds(NEUTRAL)
        .display_mode(BarGaugeDisplayMode.GRADIENT)
        .orientation(VizOrientation.HORIZONTAL)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(8)
        .span(width)
    )


def matrix_table(
    title: str, expr: str, *, rows: str, columns: str, width: int = 24, description: str = ""
) -> table.Panel:
    """An instant query pivoted to one row per ``rows`` label and one column per ``columns`` label."""
    panel = (
        table.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .targets([query(expr, table_format=True)])
        .with_transformation(
            DataTransformerConfig(
                id_val="groupingToMatrix",
                options={"columnField": columns, "rowField": rows, "valueField": "Value", "emptyValue": "zero"},
            )
        )
        .height(9)
        .span(width)
    )
    return panel.description(description) if description else panel


def new_dashboard(uid: str, title: str, description: str, tags: list[str]) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["digital-bridge", *tags])
        .timezone(TIMEZONE)
        .time("now-7d", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
    )


def indicator(name: str, *, level: str = "province", key: str = "total") -> str:
    return f'max without (instance) (bridge_indicator_{name}{{key="{key}", level="{level}"}})'


def indicators(matchers: str, names: str = ".+") -> str:
    """Series of several indicator families at once (``names`` a regex of indicator names), each
    labelled ``indicator`` after its family, so they can be grouped without adding one to another."""
    return (
        f'label_replace({{__name__=~"bridge_indicator_({names})", {matchers}}}, '
        '"indicator", "$1", "__name__", "bridge_indicator_(.+)")'
    )


# The breakdowns the reports quote, split by a key (their totals are left out: for groups, roles and
# skills a total adds overlapping keys up and is no head count).
BREAKDOWNS = (
    "people_supported_by_area",
    "households_by_area",
    "people_supported_by_group",
    "courses_by_mode",
    "course_participants_by_mode",
    "volunteers_by_role",
    "volunteers_by_skill",
    "team_members",
)


# --- 1. campaign overview ---------------------------------------------------------------------------
def campaign_overview() -> dashboard.Dashboard:
    campaign = 'campaign="$campaign"'
    progress = f"max without (instance) (bridge_campaign_progress_ratio{{{campaign}}})"
    # Replicas agree on a status except for a moment after it changes: topk keeps one per target so
    # the join never sees two and fails.
    at_risk = (
        f"sort(max without (instance) (bridge_campaign_projected_ratio{{{campaign}}}) "
        "* on (campaign, indicator, unit) group_left (status) topk by (campaign, indicator, unit) "
        f'(1, max without (instance) (bridge_campaign_target_status{{{campaign}, status=~"at_risk|behind"}})))'
    )
    team_kinds = "permanent|mobile|literacy|campaign"
    return (
        new_dashboard(
            "bridge-campaign-overview",
            "Digital Bridge · Campaign overview",
            "Progress of a campaign against its targets, province totals and every indicator per commune.",
            ["campaign"],
        )
        .with_variable(
            dashboard.QueryVariable("campaign")
            .label("Campaign")
            .datasource(DATASOURCE)
            .query("label_values(bridge_campaign_target, campaign)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
        .with_row(dashboard.Row("Progress against targets"))
        .with_panel(
            bars(
                "Progress by target (actual ÷ target)",
                [query(progress, "{{indicator}} · {{unit}}")],
                unit="percentunit",
            )
            .max(1)
            .thresholds(PROGRESS)
        )
        .with_panel(
            stat_panel(
                "Targets reached",
                [query(f"count({progress} >= 1) or vector(0)", "reached")],
                width=6,
                description="Targets whose actual figure is at or above the target value.",
            ).height(8)
        )
        .with_panel(stat_panel("Targets set", [query(f"count({progress}) or vector(0)", "targets")]).height(8))
        .with_panel(
            table.Panel()
            .title("Actual vs target")
            .datasource(DATASOURCE)
            .targets(
                [
                    query(f"max without (instance) (bridge_campaign_target{{{campaign}}})", ref="A", table_format=True),
                    query(f"max without (instance) (bridge_campaign_actual{{{campaign}}})", ref="B", table_format=True),
                    query(progress, ref="C", table_format=True),
                ]
            )
            .with_transformation(DataTransformerConfig(id_val="merge", options={}))
            .with_transformation(
                DataTransformerConfig(
                    id_val="organize",
                    options={
                        "excludeByName": {"Time": True, "__name__": True, "instance": True, "job": True},
                        "renameByName": {"Value #A": "target", "Value #B": "actual", "Value #C": "progress"},
                    },
                )
            )
            .override_by_name("progress", [DynamicConfigValue(id_val="unit", value="percentunit")])
            .height(8)
            .span(12)
        )
        .with_panel(
            series(
                "Actual vs target over time",
                [
                    query(
                        f"max without (instance) (bridge_campaign_actual{{{campaign}}})",
                        "{{indicator}} · {{unit}} actual",
                        "A",
                    ),
                    query(
                        f"max without (instance) (bridge_campaign_target{{{campaign}}})",
                        "{{indicator}} · {{unit}} target",
                        "B",
                    ),
                ],
            )
        )
        .with_panel(
            table.Panel()
            .title("Targets at risk / Chỉ tiêu có nguy cơ")
            .description(
                "Targets whose figure, projected to the campaign's last day at the pace of the last 7 days, "
                "stays under the target (at_risk: at least 80% of it), worst first."
            )
            .datasource(DATASOURCE)
            .targets([query(at_risk, table_format=True)])
            .with_transformation(
                DataTransformerConfig(
                    id_val="organize",
                    options={
                        "excludeByName": {"Time": True, "__name__": True, "campaign": True, "job": True},
                        "renameByName": {"Value": "projected ÷ target"},
                    },
                )
            )
            .override_by_name("projected ÷ target", [DynamicConfigValue(id_val="unit", value="percentunit")])
            .sort_by([TableSortByFieldState().display_name("projected ÷ target").desc(False)])
            .height(8)
            .span(24)
        )
        .with_row(dashboard.Row("Province totals"))
        .with_panel(
            stat_panel(
                "Indicators (province, whole period)",
                [
                    query(
                        "sum by (indicator) (max without (instance) "
                        "(" + indicators('key="total", level="province"') + "))",
                        "{{indicator}}",
                    )
                ],
                width=24,
            ).orientation(VizOrientation.VERTICAL)
        )
        .with_panel(
            bars(
                "Active teams by kind",
                [
                    query(
                        f"sum by (key) (max without (instance) "
                        f'(bridge_indicator_teams{{key=~"{team_kinds}", level="province"}}))',
                        "{{key}}",
                    )
                ],
            )
        )
        .with_panel(
            series(
                "Teams and volunteers",
                [
                    query(f"sum({indicator('teams')})", "teams", "A"),
                    query(f"sum({indicator('volunteers')})", "volunteers", "B"),
                ],
            )
        )
        .with_panel(
            bars(
                "Breakdowns the reports quote (province) / Số liệu chi tiết toàn tỉnh",
                [
                    query(
                        "sum by (indicator, key) (max without (instance) "
                        "(" + indicators('key!="total", level="province"', "|".join(BREAKDOWNS)) + "))",
                        "{{indicator}} · {{key}}",
                        "A",
                    ),
                    query(f"sum({indicator('vneid_activations')})", "vneid_activations", "B"),
                ],
                width=24,
            )
            .height(16)
            .description(
                "All time: people supported and households visited by area, people supported by group (one "
                "person may be in several), VNeID activations, courses and participants by mode. As they stand "
                "now: active volunteers by role and by skill (one may have several), members of active teams by "
                "kind."
            )
        )
        .with_row(dashboard.Row("Communes"))
        .with_panel(
            matrix_table(
                "Indicators by commune",
                "sum by (unit, indicator) (max without (instance) "
                "(" + indicators('key="total", level="commune"') + "))",
                rows="unit",
                columns="indicator",
                description="Each commune's figure includes its whole subtree.",
            )
        )
        .with_panel(
            table.Panel()
            .title("Split indicators by commune")
            .datasource(DATASOURCE)
            .targets(
                [
                    query(
                        "sum by (unit, indicator, key) (max without (instance) "
                        "(" + indicators('key!="total", level="commune"') + "))",
                        table_format=True,
                    )
                ]
            )
            .with_transformation(
                DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}, "renameByName": {}})
            )
            .height(9)
            .span(24)
        )
    )


# --- 2. field work ----------------------------------------------------------------------------------
def field_work() -> dashboard.Dashboard:
    def by_commune(name: str, key: str = "total") -> str:
        return f"sum by (unit) ({indicator(name, level='commune', key=key)})"

    applications = 'max without (instance) (bridge_indicator_online_applications{key=~"l3|l4", level="%s"})'
    return (
        new_dashboard(
            "bridge-field-work",
            "Digital Bridge · Field work",
            "Household visits, people supported, VNeID installs and online public-service applications over time.",
            ["visits"],
        )
        .with_row(dashboard.Row("Province"))
        .with_panel(stat_panel("Households visited", [query(f"sum({indicator('households_visited')})")]))
        .with_panel(stat_panel("People supported", [query(f"sum({indicator('people_supported')})")]))
        .with_panel(stat_panel("VNeID installs", [query(f"sum({indicator('vneid_installs')})")]))
        .with_panel(
            stat_panel(
                "Online applications (level 3 / level 4)",
                [query(f"sum by (key) ({applications % 'province'})", "{{key}}")],
            )
        )
        .with_panel(
            series(
                "Field work over time (province)",
                [
                    query(f"sum({indicator('households_visited')})", "households visited", "A"),
                    query(f"sum({indicator('people_supported')})", "people supported", "B"),
                    query(f"sum({indicator('vneid_installs')})", "VNeID installs", "C"),
                ],
            )
        )
        .with_panel(
            series(
                "Online applications by level (province)",
                [query(f"sum by (key) ({applications % 'province'})", "{{key}}")],
            )
        )
        .with_row(dashboard.Row("By commune"))
        .with_panel(series("Households visited by commune", [query(by_commune("households_visited"), "{{unit}}")]))
        .with_panel(series("People supported by commune", [query(by_commune("people_supported"), "{{unit}}")]))
        .with_panel(series("VNeID installs by commune", [query(by_commune("vneid_installs"), "{{unit}}")]))
        .with_panel(
            series(
                "Online applications by commune and level",
                [query(f"sum by (unit, key) ({applications % 'commune'})", "{{unit}} · {{key}}")],
            )
        )
        .with_row(dashboard.Row("Outreach"))
        .with_panel(
            series(
                "Outreach posts by channel (province)",
                [
                    query(
                        "sum by (key) (max without (instance) "
                        '(bridge_indicator_outreach_posts{key!="total", level="province"}))',
                        "{{key}}",
                    )
                ],
                width=24,
            )
        )
    )


# --- 3. training ------------------------------------------------------------------------------------
def training() -> dashboard.Dashboard:
    def by_audience(name: str, level: str = "province") -> str:
        return f'sum by (key) (max without (instance) (bridge_indicator_{name}{{key!="total", level="{level}"}}))'

    completion_rate = f"sum({indicator('course_completions')}) / clamp_min(sum({indicator('course_participants')}), 1)"
    return (
        new_dashboard(
            "bridge-training",
            "Digital Bridge · Training by audience",
            "Digital-literacy courses, participants and completions by audience.",
            ["training"],
        )
        .with_row(dashboard.Row("Province"))
        .with_panel(stat_panel("Courses", [query(f"sum({indicator('courses')})")]))
        .with_panel(stat_panel("Course participants", [query(f"sum({indicator('course_participants')})")]))
        .with_panel(stat_panel("Course completions", [query(f"sum({indicator('course_completions')})")]))
        .with_panel(
            stat_panel(
                "Completions per participant",
                [query(completion_rate)],
                unit="percentunit",
                description="Completions (dated by course end) over participants (dated by course start).",
            )
        )
        .with_panel(bars("Courses by audience", [query(by_audience("courses"), "{{key}}")]))
        .with_panel(bars("Participants by audience", [query(by_audience("course_participants"), "{{key}}")]))
        .with_row(dashboard.Row("Over time"))
        .with_panel(series("Courses by audience", [query(by_audience("courses"), "{{key}}")], width=8))
        .with_panel(series("Participants by audience", [query(by_audience("course_participants"), "{{key}}")], width=8))
        .with_panel(series("Completions", [query(f"sum({indicator('course_completions')})", "completions")], width=8))
        .with_row(dashboard.Row("By commune"))
        .with_panel(
            matrix_table(
                "Courses by commune and audience",
                'sum by (unit, key) (max without (instance) (bridge_indicator_courses{level="commune"}))',
                rows="unit",
                columns="key",
                width=12,
            )
        )
        .with_panel(
            matrix_table(
                "Participants by commune and audience",
                'sum by (unit, key) (max without (instance) (bridge_indicator_course_participants{level="commune"}))',
                rows="unit",
                columns="key",
                width=12,
            )
        )
    )


# --- 4. system health -------------------------------------------------------------------------------
def system_health() -> dashboard.Dashboard:
    rate = "[$__rate_interval]"
    requests = f"sum by (service) (rate(bridge_http_requests_total{{{API_ROUTES}}}{rate}))"

    def error_ratio(status: str) -> str:
        # "or ... * 0" keeps a 0 series for services without errors instead of no data.
        errors = f'sum by (service) (rate(bridge_http_requests_total{{{API_ROUTES}, status=~"{status}"}}{rate}))'
        return f"({errors} or {requests} * 0) / {requests}"

    up_mapping = ValueMap(
        options={"0": ValueMappingResult(text="DOWN", color="red"), "1": ValueMappingResult(text="UP", color="green")}
    )
    return (
        new_dashboard(
            "bridge-system-health",
            "Digital Bridge · System health",
            "Consumers, dead letters, outbox relays, the metrics projector and the HTTP APIs of every service.",
            ["operations"],
        )
        .time("now-1h", "now")
        .with_row(dashboard.Row("Services"))
        .with_panel(
            stat_panel(
                "Scrape targets up", [query("up", "{{job}}")], width=12, thresholds=steps((None, "red"), (1, "green"))
            )
            .mappings([up_mapping])
            .graph_mode(BigValueGraphMode.NONE)
        )
        .with_panel(
            stat_panel(
                "Dead-lettered events (since start)",
                [query("sum(bridge_consumer_events_dead_lettered_total) or vector(0)", "dead-lettered")],
                thresholds=BAD_WHEN_ABOVE_ZERO,
            )
        )
        .with_panel(
            stat_panel(
                "Outbox events pending",
                [query("sum(max without (instance) (bridge_outbox_pending_documents)) or vector(0)", "pending")],
                thresholds=steps((None, "green"), (100, "orange"), (1000, "red")),
            )
        )
        .with_row(dashboard.Row("Consumers"))
        .with_panel(
            series(
                "Consumer lag (messages)",
                [
                    query(
                        "sum by (job, consumer, topic) (bridge_consumer_lag_messages)",
                        "{{job}} · {{consumer}} · {{topic}}",
                    )
                ],
            )
        )
        .with_panel(
            series(
                "Throughput (events processed per second)",
                [
                    query(
                        f"sum by (job, consumer, topic) (rate(bridge_consumer_events_processed_total{rate}))",
                        "{{job}} · {{consumer}} · {{topic}}",
                    )
                ],
                unit="ops",
            )
        )
        .with_panel(
            series(
                "Dead-lettered events",
                [
                    query(
                        f"sum by (job, consumer, topic) (increase(bridge_consumer_events_dead_lettered_total{rate}))",
                        "{{job}} · {{consumer}} · {{topic}}",
                    )
                ],
                width=8,
            )
        )
        .with_panel(
            series(
                "Failed handler attempts per second",
                [
                    query(
                        f"sum by (job, consumer) (rate(bridge_consumer_events_failed_total{rate}))",
                        "{{job}} · {{consumer}}",
                    )
                ],
                unit="ops",
                width=8,
            )
        )
        .with_panel(
            series(
                "Duplicates skipped per second",
                [query(f"sum by (job) (rate(bridge_consumer_events_duplicate_total{rate}))", "{{job}}")],
                unit="ops",
                width=8,
                description="Redelivered or twice-synced events that were recognised and skipped.",
            )
        )
        .with_row(dashboard.Row("HTTP APIs"))
        .with_panel(series("Requests per second", [query(requests, "{{service}}")], unit="reqps", width=8))
        .with_panel(
            series(
                "Error ratio",
                [
                    query(error_ratio("5.."), "{{service}} 5xx", "A"),
                    query(error_ratio("4.."), "{{service}} 4xx", "B"),
                ],
                unit="percentunit",
                width=8,
            )
        )
        .with_panel(
            series(
                "p99 latency",
                [
                    query(
                        "histogram_quantile(0.99, sum by (service, le) "
                        f"(rate(bridge_http_request_duration_seconds_bucket{{{API_ROUTES}}}{rate})))",
                        "{{service}}",
                    )
                ],
                unit="s",
                width=8,
            )
        )
        .with_panel(
            series(
                "p99 latency by route",
                [
                    query(
                        "histogram_quantile(0.99, sum by (service, method, route, le) "
                        f"(rate(bridge_http_request_duration_seconds_bucket{{{API_ROUTES}}}{rate})))",
                        "{{service}} {{method}} {{route}}",
                    )
                ],
                unit="s",
                width=24,
            )
        )
        .with_row(dashboard.Row("Outbox relays"))
        .with_panel(
            series(
                "Outbox events pending, by service",
                [query("sum by (service) (max without (instance) (bridge_outbox_pending_documents))", "{{service}}")],
            )
        )
        .with_panel(
            series(
                "Events published per second",
                [query(f"sum by (service) (rate(bridge_outbox_published_total{rate}))", "{{service}}")],
                unit="ops",
            )
        )
        .with_panel(
            series(
                "Backpressure: watched read models behind, large writes held",
                [
                    query("max by (service) (bridge_backpressure_behind_events)", "{{service}}: events behind", "A"),
                    query("max by (service) (bridge_backpressure_holding)", "{{service}}: holding (1)", "B"),
                ],
                description=(
                    "The registry holds roster uploads while visits' or training's registry read model is over"
                    " backpressure_max_lag_events behind, or its outbox over backpressure_max_outbox_events."
                ),
            )
        )
        .with_row(dashboard.Row("Metrics projector"))
        .with_panel(
            series(
                "Projector throughput",
                [
                    query(
                        f"sum by (topic) (rate(bridge_projector_events_applied_total{rate}))",
                        "{{topic}} events applied",
                        "A",
                    ),
                    query(f"sum(rate(bridge_projector_mongo_writes_total{rate}))", "Mongo writes", "B"),
                ],
                unit="ops",
            )
        )
        .with_panel(
            series(
                "Age of the newest projected event",
                [query("time() - max by (topic) (bridge_projection_last_event_timestamp_seconds)", "{{topic}}")],
                unit="s",
                description="Grows while a topic is quiet; a climb during field work means the projector is stuck.",
            )
        )
    )


# --- output -----------------------------------------------------------------------------------------
DASHBOARDS = {
    "campaign_overview.json": campaign_overview,
    "field_work.json": field_work,
    "training.json": training,
    "system_health.json": system_health,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text, byte-for-byte what ``deploy/grafana/dashboards/`` must hold."""
    out: dict[str, str] = {}
    for name, build in DASHBOARDS.items():
        board = build().build()
        # Grafana keys panel state (links, repeats, edits) by id; the builders leave every id at 0.
        for number, panel in enumerate(board.panels or [], start=1):
            panel.id_val = number
        out[name] = json.dumps(board, cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    return out


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from _panels(item.get("panels") or [])


def expressions(doc: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard's panels, in panel order."""
    return [
        target["expr"]
        for panel in _panels(doc.get("panels") or [])
        for target in panel.get("targets") or []
        if target.get("expr")
    ]


def variable_queries(doc: dict[str, Any]) -> list[str]:
    """The queries of the dashboard's query variables (Grafana functions such as ``label_values``)."""
    return [v["query"] for v in (doc.get("templating") or {}).get("list", []) if v.get("type") == "query"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs; write nothing")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    rendered = render_all()
    stale = [
        name
        for name, text in rendered.items()
        if not (args.out / name).is_file() or (args.out / name).read_text() != text
    ]
    if args.check:
        for name in stale:
            print(f"stale: {args.out / name} (run python -m scripts.dashboards)", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out / name).write_text(text)
    print(f"wrote {len(rendered)} dashboards to {args.out} ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
