"""The operator dashboards: generated from code, and every PromQL expression in them works.

The expressions are evaluated by a real Prometheus (Debian's ``/usr/bin/prometheus``) through its HTTP
query API. Grafana variables are replaced first, as Grafana would (see ``SUBSTITUTIONS``):
``$campaign`` -> the scenario's campaign code, ``$__rate_interval`` -> ``1m``, ``$__range`` -> ``5m``.
``label_values(metric, label)`` (a Grafana function, not PromQL) becomes a label-values API call.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shared.contracts import registry, training, visits
from shared.contracts.common import (
    Area,
    Audience,
    Change,
    Channel,
    Indicator,
    Mode,
    ParticipantGroup,
    Role,
    Setting,
    Skill,
    TeamKind,
    Topic,
    UnitKind,
)
from shared.envelope import Envelope, make_event
from shared.infra import free_port
from shared.kafka import EventProducer
from shared.testing import token, wait_until
from shared.topics import COUNTED_TOPICS, EVENT_TOPICS, ensure_topics_sync

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__range": "5m"}
LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[^,]+),\s*(?P<label>\w+)\)$")
# What the services export (shared library + metrics service); a typo in a dashboard would otherwise
# only show up as an empty panel.
EXPORTED_METRICS = {
    *(f"bridge_indicator_{indicator.value}" for indicator in Indicator),
    # The family prefix, as a regex over several indicator families writes it (``indicators()``).
    "bridge_indicator_",
    "bridge_campaign_target",
    "bridge_campaign_actual",
    "bridge_campaign_progress_ratio",
    "bridge_campaign_target_status",
    "bridge_campaign_projected_ratio",
    "bridge_projector_events_applied_total",
    "bridge_projector_mongo_writes_total",
    "bridge_projection_last_event_timestamp_seconds",
    "bridge_consumer_lag_messages",
    "bridge_consumer_events_processed_total",
    "bridge_consumer_events_failed_total",
    "bridge_consumer_events_dead_lettered_total",
    "bridge_consumer_events_duplicate_total",
    "bridge_http_requests_total",
    "bridge_http_request_duration_seconds_bucket",
    "bridge_outbox_published_total",
    "bridge_outbox_pending_documents",
    "bridge_backpressure_behind_events",
    "bridge_backpressure_holding",
}
OUR_METRIC = re.compile(r"\b(?:bridge|consumer|http|outbox)_[a-z0-9_]+")


def load_generator() -> ModuleType:
    # scripts/ is not an installed package; load the generator from its file.
    spec = importlib.util.spec_from_file_location("dashboards_generator", ROOT / "scripts" / "dashboards.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()


def committed_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def all_expressions() -> list[tuple[str, str]]:
    """(dashboard file, PromQL as written) for every panel query of the committed dashboards."""
    return [(name, expr) for name, doc in committed_dashboards().items() for expr in GENERATOR.expressions(doc)]


def substitute(expr: str, campaign: str) -> str:
    for variable, value in {**SUBSTITUTIONS, "$campaign": campaign}.items():
        expr = expr.replace(variable, value)
    # ``$1`` is label_replace's regex group, not a Grafana variable.
    assert not re.search(r"\$(?!\d)", expr), f"unsubstituted Grafana variable in {expr!r}: add it to SUBSTITUTIONS"
    return expr


# --- static checks ------------------------------------------------------------------------------------
def test_committed_dashboards_match_generator() -> None:
    rendered = GENERATOR.render_all()
    committed = {path.name: path.read_text() for path in DASHBOARD_DIR.glob("*.json")}
    assert sorted(committed) == sorted(rendered), "dashboard files differ: run python -m scripts.dashboards"
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} is stale: run python -m scripts.dashboards"
    # Deterministic: a second run renders the same bytes.
    assert GENERATOR.render_all() == rendered


def test_four_dashboards_cover_campaigns_field_work_training_and_health() -> None:
    docs = committed_dashboards()
    assert {doc["uid"] for doc in docs.values()} == {
        "bridge-campaign-overview",
        "bridge-field-work",
        "bridge-training",
        "bridge-system-health",
    }
    text = {doc["uid"]: " ".join(GENERATOR.expressions(doc)) for doc in docs.values()}
    assert "bridge_campaign_progress_ratio" in text["bridge-campaign-overview"]
    assert "bridge_campaign_target_status" in text["bridge-campaign-overview"]
    assert 'level="commune"' in text["bridge-campaign-overview"]
    for name in ("households_visited", "people_supported", "vneid_installs", "online_applications"):
        assert name in text["bridge-field-work"]
    for name in ("courses", "course_participants", "course_completions"):
        assert name in text["bridge-training"]
    for name in (
        "bridge_consumer_lag_messages",
        "bridge_consumer_events_dead_lettered_total",
        "bridge_outbox_pending_documents",
    ):
        assert name in text["bridge-system-health"]
    assert "histogram_quantile(0.99" in text["bridge-system-health"]
    campaign_vars = GENERATOR.variable_queries(docs["campaign_overview.json"])
    assert campaign_vars == ["label_values(bridge_campaign_target, campaign)"]


def test_dashboards_use_only_metrics_the_services_export() -> None:
    for name, expr in all_expressions():
        used = set(OUR_METRIC.findall(expr))
        # `up` is Prometheus's own scrape health, the one metric no service exports.
        assert used or expr == "up", f"{name}: {expr!r} queries none of our metrics"
        assert used <= EXPORTED_METRICS, f"{name}: unknown metric {used - EXPORTED_METRICS} in {expr!r}"


def test_every_panel_queries_the_provisioned_prometheus_datasource() -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert [(d["uid"], d["type"], d["url"]) for d in datasources] == [
        ("prometheus", "prometheus", "http://prometheus:9090")
    ]
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())["providers"]
    assert [(p["type"], p["options"]["path"]) for p in providers] == [("file", "/var/lib/grafana/dashboards")]
    for name, doc in committed_dashboards().items():
        panels = [p for p in doc["panels"] if p["type"] != "row"]
        assert panels, name
        for panel in panels:
            refs = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
            assert all(ref == {"type": "prometheus", "uid": "prometheus"} for ref in refs), (name, panel["title"])
        ids = [p["id"] for p in doc["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"


def test_prometheus_config_scrapes_the_four_services_every_5s() -> None:
    path = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    check = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    config = yaml.safe_load(path.read_text())
    assert config["global"]["scrape_interval"] == "5s"
    # Every replica is found by DNS on the compose service name (tests/test_compose.py checks the details).
    targets = {
        job["job_name"]: [f"{name}:{sd['port']}" for sd in job["dns_sd_configs"] for name in sd["names"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        "registry": ["registry:8001"],
        "visits": ["visits:8002"],
        "training": ["training:8003"],
        "metrics": ["metrics:8004"],
    }


# --- a real Prometheus --------------------------------------------------------------------------------
@contextmanager
def running_prometheus(workdir: Path, targets: list[str]) -> Iterator[str]:
    """Start Prometheus on a free port, scraping ``targets`` (job ``metrics``) every second."""
    workdir.mkdir(parents=True, exist_ok=True)
    scrape = [{"job_name": "metrics", "static_configs": [{"targets": targets}]}] if targets else []
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": scrape}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (workdir / "prometheus.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def evaluate(client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    """Run an instant query; fail with Prometheus's own error message if it is rejected."""
    match = LABEL_VALUES.match(expr)
    if match:
        resp = await client.get(f"/api/v1/label/{match['label']}/values", params={"match[]": match["metric"]})
    else:
        resp = await client.post("/api/v1/query", data={"query": expr})
    body = resp.json()
    assert body["status"] == "success", f"{expr!r}: {body.get('errorType')}: {body.get('error')}"
    if match:
        return [{"metric": {match["label"]: value}, "value": [0, "1"]} for value in body["data"]]
    result = body["data"]["result"]
    # Scalars come back as [time, value]; wrap them like a one-series vector.
    return [{"metric": {}, "value": result}] if body["data"]["resultType"] == "scalar" else result


def values_by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {series["metric"].get(label, ""): float(series["value"][1]) for series in result}


@pytest.mark.e2e
async def test_every_dashboard_expression_parses_and_evaluates_in_prometheus(tmp_path: Path) -> None:
    expressions = all_expressions()
    queries = [q for doc in committed_dashboards().values() for q in GENERATOR.variable_queries(doc)]
    assert len(expressions) > 40
    with running_prometheus(tmp_path / "prometheus", targets=[]) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            # The check can fail: Prometheus rejects a malformed expression.
            with pytest.raises(AssertionError, match="bad_data"):
                await evaluate(client, "sum by (unit) (bridge_indicator_households_visited{level=")
            for _, expr in expressions:
                await evaluate(client, substitute(expr, campaign="CD90"))
            for expr in queries:
                await evaluate(client, expr)


# --- end to end: scenario -> metrics service -> Prometheus -> dashboard expressions -------------------
PROVINCE, DAM_HA, QUANG_HA = "QN", "QN-DAMHA", "QN-QUANGHA"
PATHS = {PROVINCE: [PROVINCE], DAM_HA: [PROVINCE, DAM_HA], QUANG_HA: [PROVINCE, QUANG_HA]}
CAMPAIGN = "CD90"
# (visit id, team, unit, setting, area, households, people, vneid installs, l3, l4, visited_on)
VISITS = [
    ("visit-1", "DH-LUUDONG-1", DAM_HA, Setting.household, Area.remote, 1, 3, 2, 1, 0, date(2025, 7, 15)),
    ("visit-2", "DH-LUUDONG-1", DAM_HA, Setting.household, Area.island, 1, 2, 1, 0, 1, date(2025, 7, 16)),
    ("visit-3", "QH-THUONGTRUC-1", QUANG_HA, Setting.service_centre, Area.rural, 0, 5, 0, 2, 1, date(2025, 7, 16)),
]
HOUSEHOLDS = sum(v[5] for v in VISITS)
PEOPLE = sum(v[6] for v in VISITS)
P99_BY_SERVICE = (
    "histogram_quantile(0.99, sum by (service, le) "
    '(rate(bridge_http_request_duration_seconds_bucket{route!~"/metrics|/healthz|/readyz"}[$__rate_interval])))'
)
TARGETS = {Indicator.households_visited: 4, Indicator.people_supported: PEOPLE}


def scenario() -> list[Envelope]:
    """A province with two communes, three teams, one volunteer, three visits, a post, two courses."""
    reg, vis, tra = "/registry", "/visits", "/training"
    events = [
        make_event(
            registry.UNIT_CREATED,
            registry.UnitCreated(
                code=PROVINCE, name="Tỉnh Quảng Ninh", kind=UnitKind.province, parent_code=None, path=PATHS[PROVINCE]
            ),
            source=reg,
            key=PROVINCE,
        ),
        *(
            make_event(
                registry.UNIT_CREATED,
                registry.UnitCreated(
                    code=code, name=name, kind=UnitKind.commune, parent_code=PROVINCE, path=PATHS[code]
                ),
                source=reg,
                key=code,
            )
            for code, name in ((DAM_HA, "Xã Đầm Hà"), (QUANG_HA, "Xã Quảng Hà"))
        ),
        *(
            make_event(
                registry.TEAM_CREATED,
                registry.TeamCreated(code=code, name=name, kind=kind, unit_code=unit, unit_path=PATHS[unit], base=base),
                source=reg,
                key=code,
            )
            for code, name, kind, unit, base in (
                ("DH-LUUDONG-1", "Đội hình lưu động Đầm Hà", TeamKind.mobile, DAM_HA, None),
                (
                    "QH-THUONGTRUC-1",
                    "Tổ thường trực Quảng Hà",
                    TeamKind.permanent,
                    QUANG_HA,
                    "Trung tâm phục vụ hành chính công xã Quảng Hà",
                ),
                ("DH-CONGNGHESO-1", "Tổ công nghệ số cộng đồng Đầm Hà", TeamKind.literacy, DAM_HA, None),
            )
        ),
        make_event(
            registry.VOLUNTEER_REGISTERED,
            registry.VolunteerRegistered(
                volunteer_id="vol-1",
                unit_code=DAM_HA,
                unit_path=PATHS[DAM_HA],
                roles=[Role.youth, Role.union_member],
                skills=[Skill.it, Skill.vneid],
                birth_year=2002,
            ),
            source=reg,
            key="vol-1",
        ),
        make_event(
            registry.MEMBERSHIP_STARTED,
            registry.MembershipStarted(
                team_code="DH-LUUDONG-1",
                volunteer_id="vol-1",
                since=date(2025, 7, 1),
                team_kind=TeamKind.mobile,
                team_unit_path=PATHS[DAM_HA],
                team_active=True,
            ),
            source=reg,
            key="DH-LUUDONG-1/vol-1",
        ),
        make_event(
            registry.CAMPAIGN_CREATED,
            registry.CampaignCreated(
                code=CAMPAIGN,
                name="Cao điểm 90 ngày chuyển đổi số",
                starts_on=date(2025, 7, 1),
                ends_on=date(2025, 9, 28),
                targets=[registry.Target(indicator=i, unit_code=PROVINCE, value=v) for i, v in TARGETS.items()],
            ),
            source=reg,
            key=CAMPAIGN,
        ),
    ]
    for visit_id, team, unit, setting, area, households, people, vneid, l3, l4, visited_on in VISITS:
        figures = visits.VisitFigures(
            unit_code=unit,
            unit_path=PATHS[unit],
            visited_on=visited_on,
            households=households,
            people=visits.People(total=people, elderly=1),
            services=visits.Services(vneid_installed=vneid, online_applications_l3=l3, online_applications_l4=l4),
            area=area,
        )
        payload = visits.VisitRecorded(
            visit_id=visit_id,
            client_ref=f"ref-{visit_id}",
            team_code=team,
            setting=setting,
            area=area,
            household_ref=f"hh-{visit_id}" if setting is Setting.household else None,
            volunteer_ids=["vol-1"],
            recorded_at=datetime.now(UTC),
            figures=figures,
        )
        events.append(make_event(visits.VISIT_RECORDED, payload, source=vis, key=visit_id))
    events.append(
        make_event(
            visits.OUTREACH_PUBLISHED,
            visits.OutreachPublished(
                post_id="post-1",
                client_ref="ref-post-1",
                unit_code=DAM_HA,
                unit_path=PATHS[DAM_HA],
                channel=Channel.fanpage,
                published_on=date(2025, 7, 17),
                title="Tuổi trẻ Đầm Hà giúp người dân cài đặt VNeID",
            ),
            source=vis,
            key="post-1",
        )
    )
    courses = {
        "DH-K1": (DAM_HA, Audience.youth_children, "Kỹ năng số cho thiếu nhi", Mode.in_person, [Topic.digital_skills]),
        "QH-K1": (
            QUANG_HA,
            Audience.elderly_middle_aged,
            "Hướng dẫn VNeID cho người cao tuổi",
            Mode.online,
            [Topic.vneid, Topic.online_public_services],
        ),
    }
    refs: dict[str, training.CourseRef] = {}
    for code, (unit, audience, title, mode, topics) in courses.items():
        refs[code] = training.CourseRef(
            course_code=code,
            unit_code=unit,
            unit_path=PATHS[unit],
            audience=audience,
            starts_on=date(2025, 7, 20),
            ends_on=date(2025, 7, 27),
            mode=mode,
        )
        scheduled = training.CourseScheduled(
            course=refs[code],
            client_ref=f"ref-{code}",
            title=title,
            team_code="DH-CONGNGHESO-1",
            mode=mode,
            topics=topics,
        )
        events.append(make_event(training.COURSE_SCHEDULED, scheduled, source=tra, key=code))
    for n, group in enumerate((ParticipantGroup.child, ParticipantGroup.youth)):
        enrolled = training.ParticipantEnrolled(
            course=refs["DH-K1"],
            participant_id=f"p-{n}",
            group=group,
            participants=Change(before=n, after=n + 1),
        )
        events.append(make_event(training.PARTICIPANT_ENROLLED, enrolled, source=tra, key="DH-K1"))
    return events


@contextmanager
def running_metrics_service(workdir: Path, *, bootstrap: str, mongo_url: str, run_id: str) -> Iterator[str]:
    """``python -m metrics`` as its own process, isolated by the run's topic prefix and database."""
    port = free_port()
    prefix = f"t{run_id}."
    env = {
        **os.environ,
        "METRICS_KAFKA_BOOTSTRAP": bootstrap,
        "METRICS_MONGO_URL": mongo_url,
        "METRICS_MONGO_DB": f"metrics_{run_id}",
        "METRICS_TOPIC_PREFIX": prefix,
        "METRICS_CONSUMER_GROUP_PREFIX": prefix,
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(port),
        "METRICS_GAUGE_REFRESH_SECONDS": "0.5",
        "METRICS_LOG_JSON": "false",
    }
    log_path = workdir / "metrics.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "metrics"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the metrics service did not answer /healthz:\n" + log_path.read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def exposed(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.e2e
@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.skipif(importlib.util.find_spec("metrics.app") is None, reason="services/metrics is not written yet")
async def test_dashboards_show_the_scenario_figures_scraped_from_the_metrics_service(
    kafka: Any, ferretdb: Any, run_id: str, tmp_path: Path
) -> None:
    prefix = f"t{run_id}."
    ensure_topics_sync(kafka.bootstrap, prefix)
    producer = EventProducer(kafka.bootstrap, client_id="dashboard-scenario")
    try:
        await producer.send_all({base: prefix + base for base in EVENT_TOPICS}, scenario())
    finally:
        await producer.stop()

    households = ("bridge_indicator_households_visited", {"key": "total", "level": "province"})
    progress = ("bridge_campaign_progress_ratio", {"campaign": CAMPAIGN, "indicator": "people_supported"})
    async with AsyncExitStack() as stack:
        base = stack.enter_context(
            running_metrics_service(tmp_path, bootstrap=kafka.bootstrap, mongo_url=ferretdb.url, run_id=run_id)
        )
        metrics = await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=10))

        async def figures_projected() -> bool:
            resp = await metrics.get("/v1/summary", params={"unit": PROVINCE}, headers=token())
            if resp.status_code != 200:
                return False
            summary = resp.json()
            if (summary["households_visited"], summary["course_participants"]["total"]) != (HOUSEHOLDS, 2):
                return False
            samples = exposed((await metrics.get("/metrics")).text)

            def value(name: str, labels: dict[str, str]) -> float | None:
                matches = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
                return matches[0] if matches else None

            return value(*households) == HOUSEHOLDS and value(*progress) == 1.0

        await wait_until(figures_projected, timeout=90, interval=0.5)
        prom_url = stack.enter_context(running_prometheus(tmp_path / "prometheus", [base.removeprefix("http://")]))
        prom = await stack.enter_async_context(httpx.AsyncClient(base_url=prom_url, timeout=10))

        async def scraped() -> bool:
            return bool(await evaluate(prom, "bridge_indicator_households_visited"))

        await wait_until(scraped, timeout=30, interval=0.5)
        # API traffic after the first scrape gives the latency panels a non-zero rate.
        for _ in range(5):
            assert (await metrics.get("/v1/summary", params={"unit": PROVINCE}, headers=token())).status_code == 200

        async def latency_rated() -> bool:
            p99 = values_by(await evaluate(prom, substitute(P99_BY_SERVICE, CAMPAIGN)), "service")
            return math.isfinite(p99.get("metrics", math.nan))

        await wait_until(latency_rated, timeout=30, interval=0.5)
        await _assert_dashboard_figures(prom)


ONE_COPY = re.compile(r"(bridge_(?:indicator|campaign)_\w+\{[^{}]*\})")


async def _assert_dashboard_figures(prom: httpx.AsyncClient) -> None:
    results = {}
    for _, expr in all_expressions():
        results[expr] = await evaluate(prom, substitute(expr, campaign=CAMPAIGN))
    campaigns = await evaluate(prom, "label_values(bridge_campaign_target, campaign)")
    assert CAMPAIGN in values_by(campaigns, "campaign")

    def result(expr: str) -> list[dict[str, Any]]:
        # Every metrics replica exports the same gauges: dashboards keep one copy of each series.
        expr = ONE_COPY.sub(r"max without (instance) (\1)", expr)
        assert expr in results, f"no dashboard uses {expr!r}"
        return results[expr]

    def single(expr: str) -> float:
        series = result(expr)
        assert len(series) == 1, (expr, series)
        return float(series[0]["value"][1])

    # Field work: province totals equal the sums over the scenario's visits.
    assert single('sum(bridge_indicator_households_visited{key="total", level="province"})') == HOUSEHOLDS
    assert single('sum(bridge_indicator_people_supported{key="total", level="province"})') == PEOPLE
    assert single('sum(bridge_indicator_vneid_installs{key="total", level="province"})') == 3
    applications = 'bridge_indicator_online_applications{key=~"l3|l4", level="%s"}'
    assert values_by(result(f"sum by (key) ({applications % 'province'})"), "key") == {"l3": 3, "l4": 2}
    by_commune = {
        (s["metric"]["unit"], s["metric"]["key"]): float(s["value"][1])
        for s in result(f"sum by (unit, key) ({applications % 'commune'})")
    }
    assert by_commune[(DAM_HA, "l3")] == 1
    assert by_commune[(QUANG_HA, "l4")] == 1

    # Campaign overview: actual / target per indicator, and the per-commune matrix.
    ratios = values_by(result('bridge_campaign_progress_ratio{campaign="$campaign"}'), "indicator")
    assert ratios == {"households_visited": HOUSEHOLDS / 4, "people_supported": 1.0}
    assert single('count(bridge_campaign_progress_ratio{campaign="$campaign"} >= 1) or vector(0)') == 1
    actual = values_by(result('bridge_campaign_actual{campaign="$campaign"}'), "indicator")
    assert actual == {"households_visited": HOUSEHOLDS, "people_supported": PEOPLE}
    # The campaign has ended: households stayed at half the target (behind); people reached theirs (done).
    at_risk = result(
        'sort(bridge_campaign_projected_ratio{campaign="$campaign"} * on (campaign, indicator, unit) '
        "group_left (status) topk by (campaign, indicator, unit) "
        '(1, bridge_campaign_target_status{campaign="$campaign", status=~"at_risk|behind"}))'
    )
    assert [(s["metric"]["indicator"], s["metric"]["status"], float(s["value"][1])) for s in at_risk] == [
        ("households_visited", "behind", HOUSEHOLDS / 4)
    ]
    matrix = {
        (s["metric"]["unit"], s["metric"]["indicator"]): float(s["value"][1])
        for s in result(
            "sum by (unit, indicator) (max without (instance) ("
            + GENERATOR.indicators('key="total", level="commune"')
            + "))"
        )
    }
    assert matrix[(DAM_HA, "households_visited")] == 2
    assert matrix[(QUANG_HA, "people_supported")] == 5
    assert matrix[(DAM_HA, "outreach_posts")] == 1
    teams = values_by(
        result('sum by (key) (bridge_indicator_teams{key=~"permanent|mobile|literacy|campaign", level="province"})'),
        "key",
    )
    assert {k: v for k, v in teams.items() if v} == {"permanent": 1, "mobile": 1, "literacy": 1}

    # Training by audience.
    courses = values_by(result('sum by (key) (bridge_indicator_courses{key!="total", level="province"})'), "key")
    assert {k: v for k, v in courses.items() if v} == {"youth_children": 1, "elderly_middle_aged": 1}
    participants = values_by(
        result('sum by (key) (bridge_indicator_course_participants{key!="total", level="province"})'),
        "key",
    )
    assert {k: v for k, v in participants.items() if v} == {"youth_children": 2}

    # The breakdowns the reports quote, in one panel.
    breakdowns = result(
        "sum by (indicator, key) (max without (instance) ("
        + GENERATOR.indicators('key!="total", level="province"', "|".join(GENERATOR.BREAKDOWNS))
        + "))"
    )
    assert {
        (s["metric"]["indicator"], s["metric"]["key"]): float(s["value"][1]) for s in breakdowns if s["value"][1] != "0"
    } == {
        ("people_supported_by_area", "remote"): 3,
        ("people_supported_by_area", "island"): 2,
        ("people_supported_by_area", "rural"): 5,
        ("households_by_area", "remote"): 1,
        ("households_by_area", "island"): 1,
        ("people_supported_by_group", "elderly"): 3,
        ("courses_by_mode", "in_person"): 1,
        ("courses_by_mode", "online"): 1,
        ("course_participants_by_mode", "in_person"): 2,
        ("volunteers_by_role", "youth"): 1,
        ("volunteers_by_role", "union_member"): 1,
        ("volunteers_by_skill", "it"): 1,
        ("volunteers_by_skill", "vneid"): 1,
        ("team_members", "mobile"): 1,
    }
    assert single('sum(bridge_indicator_vneid_activations{key="total", level="province"})') == 0

    # System health: the metrics service is up, consumed the scenario and dead-lettered nothing.
    assert values_by(result("up"), "job") == {"metrics": 1}
    assert single("sum(bridge_consumer_events_dead_lettered_total) or vector(0)") == 0
    assert result("sum by (job, consumer, topic) (rate(bridge_consumer_events_processed_total[$__rate_interval]))")
    applied = result("sum by (topic) (rate(bridge_projector_events_applied_total[$__rate_interval]))")
    assert len(applied) == len(COUNTED_TOPICS)
    ages = values_by(result("time() - max by (topic) (bridge_projection_last_event_timestamp_seconds)"), "topic")
    assert len(ages) == len(COUNTED_TOPICS)
    assert all(0 <= age < 600 for age in ages.values()), ages
    latency = values_by(result(P99_BY_SERVICE), "service")
    assert math.isfinite(latency["metrics"])
    assert 0 < latency["metrics"] <= 5
