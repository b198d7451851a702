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
from scripts.simulator.plan import Course, Merge, Plan, Session, Team, Unit, Visit, Volunteer, build_plan
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
    # "More than 2,380 members" of permanent teams, still members at the end (leavers' memberships end).
    assert s["team_members.permanent"] >= 2380
    # "500+ volunteers with IT skills" in the campaign teams, each registered with the it skill.
    it_volunteers = {m for t in plan.teams if t.kind == "campaign" for m in t.members}
    assert all("it" in plan.volunteers[m].skills for m in it_volunteers)
    assert len(it_volunteers) >= 500
    assert s["volunteers_by_skill.it"] >= len(it_volunteers)
    # The 1,440 households were visited in remote, border and island areas.
    assert sum(s[f"households_by_area.{a}"] for a in ("remote", "border", "island")) == 1440
    assert s["people_supported_by_area.total"] == s["people_supported"]
    # "Some units run courses online": a share, not most.
    assert s["courses_by_mode.total"] == 261
    assert 0 < s["courses_by_mode.online"] < s["courses_by_mode.in_person"]
    assert s["course_participants_by_mode.total"] == s["course_participants.total"]
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


def _services(installed: int, activated: int) -> dict[str, int]:
    return {
        "vneid_installed": installed,
        "vneid_activated": activated,
        "online_applications_l3": 0,
        "online_applications_l4": 1,
        "digital_skills_guidance": installed,
    }


def _people(total: int, elderly: int, women: int, veterans: int) -> dict[str, int]:
    return {"total": total, "elderly": elderly, "women": women, "veterans": veterans}


def _hand_plan() -> Plan:
    """A campaign small enough to count by hand: Bình Liêu (border) merges into Ba Chẽ (remote) after week 1."""
    day0 = date(2025, 7, 7)
    units = [
        Unit("QN", "Tỉnh Quảng Ninh", "province", None, "urban"),
        Unit("QN-HALONG", "Phường Hạ Long", "ward", "QN", "urban"),
        Unit("QN-BACHE", "Xã Ba Chẽ", "commune", "QN", "remote"),
        Unit("QN-BINHLIEU", "Xã Bình Liêu", "commune", "QN", "border"),
    ]
    volunteers = [
        Volunteer(0, "QN-HALONG", "Nguyễn Thị Hương", 1999, ["union_member", "youth"], ["it", "vneid"]),
        Volunteer(1, "QN-HALONG", "Trần Văn Dũng", 1995, ["union_member"], ["vneid"], leaves_on=day0 + timedelta(30)),
        Volunteer(2, "QN-BINHLIEU", "Lê Minh Thư", 2004, ["student"], ["it", "teaching"]),
        Volunteer(3, "QN-BACHE", "Phạm Quang Hải", 1990, ["lecturer", "union_member"], ["teaching", "media"]),
    ]
    teams = [
        Team("QN-HALONG-TT", "Đội thường trực Phường Hạ Long", "permanent", "QN-HALONG", members=[0, 1]),
        Team("QN-BINHLIEU-CD1", "Đội lưu động số 1 Xã Bình Liêu", "mobile", "QN-BINHLIEU", members=[2]),
        Team("QN-BACHE-CD2", "Đội lưu động số 2 Xã Ba Chẽ", "mobile", "QN-BACHE", members=[3]),
        Team("QN-BACHE-BDHVS", "Tổ công nghệ số cộng đồng Xã Ba Chẽ", "literacy", "QN-BACHE", members=[3, 2]),
        Team("QN-BACHE-CD2B", "Đội lưu động số 2 Xã Ba Chẽ (nhập trùng)", "mobile", "QN-BACHE", [3], deactivate=True),
    ]
    d = [day0 + timedelta(days=n) for n in range(14)]
    visits = [
        Visit("v1", "QN-BINHLIEU-CD1", "QN-BINHLIEU", d[1], "household", "border", "hh-1", 1,
              _people(4, 2, 1, 1), _services(3, 2), [2]),
        Visit("v2", "QN-BACHE-CD2", "QN-BACHE", d[8], "household", "remote", "hh-2", 1,
              _people(3, 1, 2, 0), _services(2, 1), [3],
              correction={"people": _people(5, 3, 2, 1), "services": _services(4, 4)}),
        Visit("v3", "QN-HALONG-TT", "QN-HALONG", d[2], "service_centre", "urban", None, 0,
              _people(6, 0, 3, 0), _services(5, 5), [0], void_reason="Ghi trùng với phiếu của đội khác"),
        Visit("v4", "QN-HALONG-TT", "QN-HALONG", d[3], "service_centre", "urban", None, 0,
              _people(7, 2, 4, 1), _services(6, 3), [0]),
        # Sent after the merge with the old code: stored for Ba Chẽ, still a border household.
        Visit("v5", "QN-BINHLIEU-CD1", "QN-BINHLIEU", d[10], "household", "border", "hh-5", 1,
              _people(2, 1, 1, 0), _services(1, 0), [2]),
    ]  # fmt: skip

    def course(ref: str, audience: str, mode: str, starts: date, counting: str) -> Course:
        return Course(ref, ref.upper(), "Bình dân học vụ số", "QN-BACHE-BDHVS", "QN-BACHE", audience, mode,
                      ["vneid"], starts, starts + timedelta(days=4), counting)  # fmt: skip

    online = course("k1", "elderly_middle_aged", "online", d[2], "roster")
    online.participants = [
        {"client_ref": f"k1/p/{i}", "display_name": "Đỗ Thị Lan", "group": "elderly"} for i in range(3)
    ]
    online.completes, online.final_completions = True, 2
    in_person = course("k2", "youth_children", "in_person", d[9], "head_count")
    in_person.sessions = [Session("k2/s/0", d[9], 90, count=20), Session("k2/s/1", d[10], 90, count=25)]
    in_person.final_participants = 30  # planned for the end; the course is still running
    cancelled = course("k3", "elderly_middle_aged", "online", d[4], "head_count")
    cancelled.sessions, cancelled.cancel_reason = [Session("k3/s/0", d[4], 60, count=10)], "Bão số 3"
    return Plan(
        seed=7,
        scale=1.0,
        today=day0 + timedelta(days=49),
        day0=day0,
        units=units,
        campaigns=[],
        teams=teams,
        volunteers=volunteers,
        visits=visits,
        posts=[],
        courses=[online, in_person, cancelled],
        merge=Merge(sources=["QN-BINHLIEU"], into="QN-BACHE", after_week=0),
    )


def test_breakdowns_of_a_hand_counted_campaign() -> None:
    plan = _hand_plan()
    truth = tally(plan)
    s = flatten(truth.summary())
    # v3 is voided; v2 counts as corrected; areas stay as recorded.
    area = {k: s[f"people_supported_by_area.{k}"] for k in ("remote", "border", "island", "rural", "urban")}
    assert area == {"remote": 5, "border": 4 + 2, "island": 0, "rural": 0, "urban": 7}
    assert s["people_supported_by_area.total"] == s["people_supported"] == 18
    assert (s["households_by_area.border"], s["households_by_area.remote"], s["households_by_area.urban"]) == (2, 1, 0)
    assert s["households_by_area.total"] == s["households_visited"] == 3
    group = [s[f"people_supported_by_group.{k}"] for k in ("elderly", "women", "veterans", "total")]
    assert group == [2 + 3 + 2 + 1, 1 + 2 + 4 + 1, 1 + 1 + 1 + 0, 19]
    assert s["vneid_activations"] == 2 + 4 + 3 + 0
    # The cancelled online course counts nowhere; the running one counts its largest session.
    assert (s["courses_by_mode.online"], s["courses_by_mode.in_person"], s["courses_by_mode.total"]) == (1, 1, 2)
    assert (s["course_participants_by_mode.online"], s["course_participants_by_mode.in_person"]) == (3, 25)
    # Trần Văn Dũng left: he counts in no role, skill or team any more.
    roles = [s[f"volunteers_by_role.{k}"] for k in ("union_member", "youth", "student", "lecturer", "total")]
    assert roles == [2, 1, 1, 1, 5]
    skills = [s[f"volunteers_by_skill.{k}"] for k in ("it", "vneid", "teaching", "media", "total")]
    assert skills == [2, 1, 2, 1, 6]
    # The deactivated duplicate team's member does not count.
    members = [s[f"team_members.{k}"] for k in ("permanent", "mobile", "literacy", "campaign", "total")]
    assert members == [1, 2, 2, 0, 5]

    # After the merge, Bình Liêu's team and volunteer count at Ba Chẽ; its week-1 record stays its own.
    old, successor = flatten(truth.summary("QN-BINHLIEU")), flatten(truth.summary("QN-BACHE"))
    assert (old["people_supported_by_area.border"], old["team_members.total"], old["volunteers_by_skill.it"]) == (
        4,
        0,
        0,
    )
    assert (successor["people_supported_by_area.border"], successor["people_supported_by_area.remote"]) == (6, 5)
    assert (
        successor["team_members.mobile"],
        successor["team_members.literacy"],
        successor["volunteers_by_skill.it"],
    ) == (2, 2, 1)
    # Dated breakdowns follow the window; current state does not.
    week2 = flatten(truth.summary("QN", plan.day0 + timedelta(days=7), plan.day0 + timedelta(days=13)))
    assert (week2["people_supported_by_area.remote"], week2["people_supported_by_area.border"]) == (5, 2)
    assert (week2["vneid_activations"], week2["courses_by_mode.total"], week2["team_members.total"]) == (4, 1, 5)


def test_breakdowns_of_a_generated_campaign_add_up_to_their_indicators() -> None:
    plan = build_plan(5, 0.1, today=date(2025, 8, 20))
    s = flatten(tally(plan).summary())
    kept = [v for v in plan.visits if not v.void_reason]
    assert s["people_supported_by_area.total"] == s["people_supported"]
    assert s["households_by_area.total"] == s["households_visited"]
    assert s["households_by_area.rural"] == s["households_by_area.urban"] == 0  # mobile teams work far out
    for g in ("elderly", "women", "veterans"):
        assert s[f"people_supported_by_group.{g}"] == sum(v.figures[1][g] for v in kept)
    assert s["vneid_activations"] == sum(v.figures[2]["vneid_activated"] for v in kept) <= s["vneid_installs"]
    assert s["courses_by_mode.total"] == s["courses.total"]
    assert s["course_participants_by_mode.total"] == s["course_participants.total"]
    active = [v for v in plan.volunteers if v.leaves_on is None]
    assert len(active) < len(plan.volunteers)
    assert s["volunteers_by_role.student"] == sum("student" in v.roles for v in active)
    assert s["volunteers_by_skill.it"] == sum("it" in v.skills for v in active)
    assert s["volunteers_by_role.total"] == sum(len(v.roles) for v in active) > s["volunteers"]
    # Every leaver was a permanent team's member: exactly their memberships end.
    leavers = len(plan.volunteers) - len(active)
    permanent = sum(len(t.members) for t in plan.teams if t.kind == "permanent")
    assert s["team_members.permanent"] == permanent - leavers
    assert s["team_members.campaign"] == sum(len(t.members) for t in plan.teams if t.kind == "campaign")


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
    """``{(unit, "indicator[.key]"): value}`` from the ``bridge_indicator_<indicator>`` families."""
    out: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("bridge_indicator_"):
            continue
        for s in family.samples:
            indicator, key = family.name.removeprefix("bridge_indicator_"), s.labels["key"]
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

    # Every ISO week was closed as the replay passed its Sunday; what reached the log later (the
    # typhoon week's uploads, the corrections and voids) made the revised figures equal the ground
    # truth, and the province's narrative of the last week shows the typhoon week's late records.
    assert len(result.closed_weeks) >= 6
    assert result.closing_differences == {}
    assert sum(result.typhoon_adjustments.values()) > 0
    assert result.narrative_md.startswith(f"# Báo cáo tuần {result.narrative_week} / Weekly report")
    typhoon_week = max(result.typhoon_adjustments, key=lambda w: result.typhoon_adjustments[w])
    assert f"- Tuần {typhoon_week} (đã chốt / closed): " in result.narrative_md
    assert result.narrative_html.startswith("<!doctype html>")

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
