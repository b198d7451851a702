"""The operator's view of ``make run``: Prometheus, the campaign page in a real Chromium, and /docs offline.

One system is started as ``make run`` starts it (:class:`scripts.run.System`, with Prometheus; one
replica each: several replicas are tests/test_replicas_e2e.py's subject, and the scrape config of
several is checked below without a system) and ``make demo`` replays a small campaign into it.
The browser is Debian's ``/usr/bin/chromium`` (``make setup`` installs it), driven by Playwright;
no browser is downloaded. The screenshot of the page is kept in ``.artifacts/campaign-page.png``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from playwright.sync_api import BrowserContext, Page, Route, sync_playwright

from metrics.page import PATH, number
from scripts.demo import DemoResult, run_demo
from scripts.run import PROMETHEUS_DIR, SERVICES, RunConfig, System, prometheus_config
from shared.infra import free_port
from shared.testing import token

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / ".artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# Headless, and nothing that phones home: no QUIC, sync, component updates or background fetches.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
SCALE = 0.02
SEED = 23


# --- the alert rules on their own (no system) --------------------------------------------------------


def test_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    rules = PROMETHEUS_DIR / "alerts.yml"
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "SUCCESS" in tests.stdout
    names = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    assert {"BridgeConsumerLagHigh", "BridgeEventsDeadLettered", "BridgeCampaignTargetAtRisk"} <= names


def test_scrape_config_keeps_the_projects_jobs_and_lists_every_local_replica() -> None:
    targets = {
        "visits": [("visits", "127.0.0.1:8002"), ("visits-2", "127.0.0.1:8102")],
        "metrics": [("metrics", "127.0.0.1:8004")],
    }
    config = prometheus_config(targets)
    committed = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["global"] == committed["global"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"visits", "metrics"}  # only the services this run starts
    assert jobs["visits"]["static_configs"] == [
        {"targets": ["127.0.0.1:8002"], "labels": {"replica": "visits"}},
        {"targets": ["127.0.0.1:8102"], "labels": {"replica": "visits-2"}},
    ]
    assert all(not any(k.endswith("_sd_configs") for k in job) for job in jobs.values())
    assert [Path(f) for f in config["rule_files"]] == [PROMETHEUS_DIR / "alerts.yml"]


# --- the running system --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    cfg = RunConfig(
        data_dir=Path(tmp_path_factory.mktemp("operator")),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        mongo_port=free_port(),
        ports={s.name: free_port() for s in SERVICES},
        topic_prefix="operator.",
        echo_logs=False,
        prometheus_port=free_port(),
        extra_env={f"{s.env_prefix}RELAY_POLL_SECONDS": "0.1" for s in SERVICES},
    )
    with System(cfg) as running:
        yield running


@pytest.fixture(scope="module")
def demo(system: System) -> DemoResult:
    """``make demo`` at a small scale: the page then shows what an operator sees after a replay."""
    auth = token("admin")["Authorization"].removeprefix("Bearer ")
    result = asyncio.run(
        run_demo(system.replica_urls(), auth, seed=SEED, scale=SCALE, show_progress=False, metrics_timeout=90)
    )
    assert result.differences == {}
    return result


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Call ``probe`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: still {last!r} after {timeout:.0f}s")


@pytest.mark.e2e
@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.timeout(600)
def test_make_run_starts_prometheus_scraping_every_replica_with_the_alert_rules(
    system: System, demo: DemoResult
) -> None:
    assert system.prometheus is not None
    prom = httpx.Client(base_url=system.prometheus.url, timeout=10)
    assert prom.get("/-/ready").status_code == 200
    banner = system.banner()
    assert f"Prometheus: {system.prometheus.url}" in banner
    for page in ("targets", "alerts"):
        assert system.prometheus.page(page) in banner
        assert prom.get(system.prometheus.page(page)).status_code == 200

    expected = {(svc.spec.name, svc.url.removeprefix("http://")) for svc in system.services.values()}
    assert {job for job, _ in expected} == {s.name for s in SERVICES}

    def scraped() -> set[tuple[str, str]] | None:
        active = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
        up = {(t["labels"]["job"], t["labels"]["instance"]) for t in active if t["health"] == "up"}
        return up if up == expected and len(active) == len(expected) else None

    wait_for("every replica scraped and up", scraped)
    ones = prom.get("/api/v1/query", params={"query": "sum(up)"}).json()["data"]["result"]
    assert float(ones[0]["value"][1]) == len(expected)

    # The rules loaded, and each evaluated without error.
    def rules() -> dict[str, str] | None:
        groups = prom.get("/api/v1/rules").json()["data"]["groups"]
        health = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        return health if health and all(h == "ok" for h in health.values()) else None

    health = wait_for("alert rules evaluated", rules)
    committed = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    assert set(health) == {r["alert"] for g in committed for r in g["rules"]}

    # The series the rules watch are really exported by the services under those names.
    def series(name: str) -> int:
        result = prom.get("/api/v1/query", params={"query": f"count({name})"}).json()["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0

    for name in ("bridge_consumer_lag_messages", "bridge_campaign_target_status", "bridge_campaign_projected_ratio"):
        wait_for(f"{name} scraped", lambda name=name: series(name))


@pytest.fixture(scope="module")
def browser() -> Iterator[Callable[[], BrowserContext]]:
    """New browser contexts of one headless Chromium with a fresh profile."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, locale="vi-VN", viewport=None
        )
        try:
            yield lambda: context
        finally:
            context.close()


def watch_requests(page: Page) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    return seen


@pytest.mark.e2e
@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.timeout(600)
def test_campaign_page_in_chromium_shows_the_demo_campaign_as_the_api_does(
    system: System, demo: DemoResult, browser: Callable[[], BrowserContext]
) -> None:
    metrics = system.urls()["metrics"]
    admin = token("admin")
    campaign = next(c for c in demo.plan.campaigns if c.starts_on <= demo.plan.today <= c.ends_on)
    api = httpx.Client(base_url=metrics, headers=admin, timeout=30)
    progress = api.get(f"/v1/campaigns/{campaign.code}/progress").json()
    risk = api.get(f"/v1/campaigns/{campaign.code}/risk").json()
    summary = api.get("/v1/summary", params={"campaign": campaign.code}).json()

    page = browser().new_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    requests = watch_requests(page)
    link = f"{metrics}{PATH}?campaign={campaign.code}&token={admin['Authorization'].removeprefix('Bearer ')}"
    response = page.goto(link)
    assert response is not None
    assert response.status == 200
    # The token went into a cookie and out of the address bar.
    assert page.url == f"{metrics}{PATH}?campaign={campaign.code}"
    assert "token" not in page.url

    province = demo.plan.units[0].name
    assert page.locator("h1#unit-name").inner_text().startswith(province)
    assert province == "Tỉnh Quảng Ninh"
    assert page.locator("#campaign-name").inner_text().startswith(campaign.name)
    communes = [u.name for u in demo.plan.units[1:] if u.parent == demo.plan.units[0].code]
    units_table = page.locator("#units table").inner_text()
    assert any("Đặc khu" in name or "Phường Hạ Long" in name for name in communes)
    for name in communes:
        if name in ("Phường Hạ Long", "Đặc khu Vân Đồn", "Đặc khu Cô Tô"):
            assert name in units_table

    # Every target of the campaign, each bar at the API's percentage.
    rows = page.locator("tr.target")
    assert rows.count() == len(progress["targets"]) > 0
    by_key = {(t["indicator"], t["unit_code"]): t for t in progress["targets"]}
    status = {(t["indicator"], t["unit_code"]): t["status"] for t in risk["targets"]}
    for i in range(rows.count()):
        row = rows.nth(i)
        key = (row.get_attribute("data-indicator") or "", row.get_attribute("data-unit") or "")
        want = by_key[key]
        bar = row.locator("[role=progressbar]")
        assert float(bar.get_attribute("aria-valuenow") or "nan") == want["percent"]
        assert row.locator(".percent").inner_text() == f"{number(want['percent'], 1)}%"
        assert row.locator(".actual").inner_text() == number(want["actual"])
        assert row.get_attribute("data-status") == status[key]
        # The bar is drawn to scale: its fill is percent of its width (capped at a full bar).
        fill = row.locator(".fill").bounding_box()
        whole = bar.bounding_box()
        assert fill is not None
        assert whole is not None
        assert abs(fill["width"] / whole["width"] - min(want["percent"], 100) / 100) < 0.01
    province_row = page.locator(f'tr.target[data-unit="{demo.plan.units[0].code}"]').first
    assert (
        province_row.locator("td")
        .first.inner_text()
        .startswith(("Hộ gia đình được thăm", "Người dân được hỗ trợ", "Lượt cài đặt VNeID", "Số lớp", "Tổng số"))
    )

    # Indicators and freshness.
    households = page.locator('.card[data-key="households_visited"] .value').inner_text()
    assert households == number(summary["households_visited"])
    assert summary["households_visited"] > 0
    topics = page.locator("#freshness tr.topic")
    assert topics.count() == len(api.get("/v1/freshness").json()["topics"]) >= 3
    assert "Số liệu lúc" in page.locator("#freshness").inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "campaign-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000

    # Self-contained: the link and its redirect are the only requests the page made.
    assert [urlsplit(u).path for u in requests] == [PATH, PATH]


@pytest.mark.e2e
@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.timeout(300)
def test_swagger_ui_renders_with_every_outside_request_blocked(
    system: System, browser: Callable[[], BrowserContext]
) -> None:
    blocked: list[str] = []

    def only_local(route: Route) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if host in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("blockedbyclient")

    for name, url in system.urls().items():
        page = browser().new_page()
        page.route("**/*", only_local)
        response = page.goto(f"{url}/docs")
        assert response is not None
        assert response.status == 200
        title = page.locator(".swagger-ui .info .title")
        title.wait_for(timeout=30_000)
        assert "Digital Bridge" in title.inner_text(), name
        page.locator(".opblock").first.wait_for(timeout=30_000)
        assert page.locator(".opblock").count() > 3, name
        page.close()
    assert blocked == []


@pytest.mark.e2e
@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.timeout(300)
def test_a_crashed_prometheus_is_restarted_by_the_runner_with_its_config_and_data(system: System) -> None:
    # Last in this module: it kills the Prometheus the tests above read.
    assert system.prometheus is not None
    watched = system.infra["prometheus"]
    old_pid = watched.pid
    os.kill(old_pid, signal.SIGKILL)
    wait_for("prometheus restarted", lambda: watched.pid != old_pid and watched.down_since is None)
    assert Path(system.cfg.data_dir / "prometheus.pid").read_text() == str(watched.pid)
    assert any(n.startswith("prometheus exited (signal 9, SIGKILL)") for n in system.notices)
    prom = httpx.Client(base_url=system.prometheus.url, timeout=10)
    wait_for("ready again", lambda: prom.get("/-/ready").status_code == 200)

    def all_up() -> bool:
        active = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
        return len(active) == len(system.services) and all(t["health"] == "up" for t in active)

    wait_for("every replica scraped again", all_up)
    # Same TSDB: the samples scraped before the crash are still there.
    before = prom.get("/api/v1/query", params={"query": "count_over_time(up[1h]) > 5"}).json()["data"]["result"]
    assert before
