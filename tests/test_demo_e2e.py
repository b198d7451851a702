"""The whole system end to end: ``make run``'s start-up on free ports, then ``make demo`` at a small scale.

The services run as real processes (``python -m <name>``) against a real Kafka broker and FerretDB
started by :class:`scripts.run.System`, exactly as ``make run`` starts them. The replay goes through
the public REST APIs only; the metrics service must then agree with the replay's own ground truth
in its summary, its campaign progress and its Prometheus gauges.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import httpx
import openpyxl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scripts.demo import run_demo
from scripts.run import SERVICES, RunConfig, System, available_services, render_log_line
from scripts.simulator.plan import build_plan
from scripts.simulator.truth import KEYS, campaign_actuals, flatten, tally
from shared.infra import free_port
from shared.testing import token

SCALE = 0.05
SEED = 11


# --- the plan and its ground truth (no infrastructure) ----------------------------------------------


def test_same_seed_gives_the_same_campaign_and_another_seed_a_different_one() -> None:
    today = date(2025, 8, 20)
    a, b, c = (build_plan(s, SCALE, today=today) for s in (SEED, SEED, SEED + 1))
    assert [v.body({k: str(k) for k in range(len(a.volunteers))}) for v in a.visits][:50] == [
        v.body({k: str(k) for k in range(len(b.volunteers))}) for v in b.visits
    ][:50]
    assert flatten(tally(a).summary()) == flatten(tally(b).summary())
    assert [v.client_ref for v in a.visits] != [v.client_ref for v in c.visits]


def test_full_scale_plan_reproduces_the_article_figures() -> None:
    plan = build_plan(7, 1.0, today=date(2025, 8, 20))
    s = flatten(tally(plan).summary())
    assert (s["teams.permanent"], s["teams.mobile"], s["teams.literacy"], s["teams.campaign"]) == (55, 67, 54, 61)
    assert s["households_visited"] == 1440
    assert 12000 <= s["people_supported"] <= 12999  # "more than 12,000"
    assert (s["courses.youth_children"], s["courses.elderly_middle_aged"]) == (151, 110)
    assert s["course_participants.total"] >= 17000
    assert (s["outreach_posts.fanpage"], s["outreach_posts.newspaper"], s["outreach_posts.visual"]) == (780, 97, 2000)
    permanent_members = sum(len(t.members) for t in plan.teams if t.kind == "permanent")
    it_volunteers = {m for t in plan.teams if t.kind == "campaign" for m in t.members}
    assert permanent_members >= 2380
    assert len(it_volunteers) >= 500
    assert sum(1 for t in plan.teams if "Thắp sáng đỏ" in t.name) == 55
    assert sum(1 for t in plan.teams if "Mùa hè xanh" in t.name) == 6
    assert {"Đặc khu Vân Đồn", "Đặc khu Cô Tô", "Phường Hạ Long"} <= {u.name for u in plan.units}


def test_no_field_date_lies_in_the_future_or_outside_the_seven_weeks() -> None:
    today = date(2025, 8, 20)
    plan = build_plan(3, 0.2, today=today)
    days = [v.visited_on for v in plan.visits] + [p.published_on for p in plan.posts]
    days += [s.held_on for c in plan.courses for s in c.sessions]
    assert max(days) < today
    assert min(days) >= today - timedelta(days=49)
    typhoon = [v for v in plan.visits if v.typhoon]
    assert typhoon
    assert all(plan.week_of(v.visited_on) == 2 for v in typhoon)


def test_ground_truth_applies_corrections_voids_and_cancellations() -> None:
    plan = build_plan(5, 0.1, today=date(2025, 8, 20))
    truth = tally(plan)
    kept = [v for v in plan.visits if not v.void_reason]
    assert truth.total("people_supported") == sum(v.figures[1]["total"] for v in kept)
    corrected = next(v for v in plan.visits if v.correction and not v.void_reason)
    assert corrected.figures[1] == corrected.correction["people"]  # type: ignore[index]
    counted = [c for c in plan.courses if not c.cancel_reason]
    assert truth.total("courses") == len(counted) < len(plan.courses)
    head = next(c for c in counted if c.counting == "head_count" and not c.completes and c.sessions)
    assert head.final_participants is not None  # planned, but the course is still running: max session counts
    truth_head = tally(plan).total("course_participants", unit=head.unit, first=head.starts_on, last=head.starts_on)
    assert truth_head >= max(s.count or 0 for s in head.sessions)


def test_service_log_lines_are_rendered_readably_and_access_logs_kept_out_of_the_console() -> None:
    line = (
        '{"event": "projection_generation_live", "generation": 1, "level": "info", "timestamp": "2025-08-20T01:02:03Z"}'
    )
    assert render_log_line("metrics", line) == "01:02:03 info    projection_generation_live generation=1"
    access = '{"event": "http_request", "status": 201, "level": "info", "timestamp": "2025-08-20T01:02:03Z"}'
    assert render_log_line("visits", access) is None
    assert render_log_line("visits", access, verbose=True) is not None
    assert render_log_line("visits", access.replace("201", "500")) is not None


# --- the running system ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    missing = {s.name for s in SERVICES} - set(available_services())
    if missing:
        pytest.fail(f"services without an app.py: {sorted(missing)}")
    cfg = RunConfig(
        data_dir=Path(tmp_path_factory.mktemp("run")),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        mongo_port=free_port(),
        ports={s.name: free_port() for s in SERVICES},
        topic_prefix="e2e.",
        echo_logs=False,
        extra_env={f"{s.env_prefix}RELAY_POLL_SECONDS": "0.1" for s in SERVICES},
    )
    with System(cfg) as running:
        yield running


def _gauges(text: str) -> dict[tuple[str, str], int]:
    """``{(unit, "indicator[.key]"): value}`` from the ``bridge_indicator`` family."""
    out: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "bridge_indicator":
            continue
        for s in family.samples:
            indicator, key = s.labels["indicator"], s.labels["key"]
            name = f"{indicator}.{key}" if KEYS[indicator] else indicator
            out[(s.labels["unit"], name)] = int(s.value)
    return out


@pytest.mark.e2e
@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.timeout(1200)
async def test_demo_replay_matches_summary_campaign_progress_and_prometheus_gauges(system: System) -> None:
    urls = system.urls()
    auth = token("admin")["Authorization"].removeprefix("Bearer ")
    result = await run_demo(urls, auth, seed=SEED, scale=SCALE, show_progress=False, metrics_timeout=90)

    # 1. GET /v1/summary agrees with the ground truth, indicator by indicator.
    assert result.differences == {}
    truth = result.truth
    assert result.reported == flatten(truth.summary())
    assert result.reported["households_visited"] > 0
    assert result.reported["course_participants.total"] > 0

    # The province's report for the last full week equals the ground truth over that week, and its
    # XLSX opens with Vietnamese headers beside the English ones.
    assert result.report_week is not None
    assert result.report_differences == {}
    sheet = openpyxl.load_workbook(io.BytesIO(result.report_xlsx), read_only=True).active
    header = [c for row in sheet.iter_rows(min_row=4, max_row=4, values_only=True) for c in row]
    assert header[:2] == ["Mã đơn vị / Unit code", "Đơn vị / Unit"]
    assert "Hộ gia đình được thăm / Households visited" in header

    async with httpx.AsyncClient(base_url=urls["metrics"], headers=token("admin"), timeout=30) as metrics:
        # A commune's subtree figure, not only the province's.
        commune = next(result.plan.current_unit(t.unit) for t in result.plan.teams if t.kind == "mobile")
        resp = await metrics.get("/v1/summary", params={"unit": commune})
        assert flatten(resp.json()) == flatten(truth.summary(commune))

        # 2. Campaign progress: every target's actual is the ground truth over the campaign window.
        actuals = campaign_actuals(result.plan, truth)
        for campaign in result.plan.campaigns:
            resp = await metrics.get(f"/v1/campaigns/{campaign.code}/progress")
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert (body["starts_on"], body["ends_on"]) == (
                campaign.starts_on.isoformat(),
                campaign.ends_on.isoformat(),
            )
            got = {(t["indicator"], t["unit_code"]): (t["target"], t["actual"]) for t in body["targets"]}
            want = {(t["indicator"], t["unit_code"]): t["value"] for t in result.plan.targets_now(campaign)}
            assert {k: v[0] for k, v in got.items()} == want
            assert {k: v[1] for k, v in got.items()} == actuals[campaign.code]
            assert any(v[1] > 0 for v in got.values())

        # 3. Prometheus gauges (refreshed in the background): province and commune series match.
        merged = set(result.plan.merge.sources) if result.plan.merge else set()
        top_units = {result.plan.units[0].code} | {u.code for u in result.plan.units if u.parent} - merged
        expected = {
            (unit, name): value
            for unit in top_units
            for name, value in flatten(truth.summary(unit)).items()
            if unit in truth.units()
        }
        deadline = time.monotonic() + 60
        while True:
            text = (await metrics.get("/metrics")).text
            gauges = _gauges(text)
            mismatched = {k: (v, gauges.get(k, 0)) for k, v in expected.items() if gauges.get(k, 0) != v}
            if not mismatched or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        assert mismatched == {}
        assert 'level="province"' in text
        assert 'level="commune"' in text
        assert gauges[("QN", "households_visited")] == result.reported["households_visited"]

        # 4. The merge in the middle of the campaign: the old code's figures stay readable, marked.
        assert result.plan.merge is not None
        source, into = result.plan.merge.sources[0], result.plan.merge.into
        old = (await metrics.get("/v1/summary", params={"unit": source})).json()
        assert (old["scope"]["unit_status"], old["scope"]["merged_into"]) == ("merged", into)
        assert flatten(old) == flatten(truth.summary(source))
        successor = (await metrics.get("/v1/summary", params={"unit": into})).json()
        assert flatten(successor) == flatten(truth.summary(into))
        assert result.stats["resolved_from_old_codes"] > 0
