"""The simulator at every scale ``make demo`` accepts, without infrastructure: unique codes and refs,
figures that grow with the scale while the province keeps its communes, and an exact ground truth."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from datetime import date
from typing import Any

import pytest

from scripts.run import REPO
from scripts.simulator.plan import (
    ELDERLY_COURSES,
    FANPAGE_POSTS,
    HOUSEHOLDS,
    IT_VOLUNTEERS,
    LITERACY_TEAMS,
    MOBILE_TEAMS,
    NEWSPAPER_ARTICLES,
    PERMANENT_MEMBERS,
    PERMANENT_TEAMS,
    SHINING_RED_TEAMS,
    VISUAL_POSTS,
    WEEKS,
    YOUTH_COURSES,
    Plan,
    Shards,
    build_plan,
)
from scripts.simulator.truth import KEYS, flatten

TODAY = date(2025, 8, 20)
SCALES = (0.05, 1.0, 10.0, 100.0)


def n(full: int, scale: float) -> int:
    return max(1, round(full * scale))


# Built in a fresh interpreter: the test process's own high-water mark (earlier tests) says nothing
# about the plan. Prints CPU seconds and the peak RSS growth over the interpreter with its imports.
MEASURE = """
import sys, time
from datetime import date
from scripts.simulator.plan import build_plan
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field))
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the high-water mark (VmHWM) to the current RSS: imports no longer count
started = time.process_time()
build_plan(7, float(sys.argv[1]), today=date(2025, 8, 20))
print(time.process_time() - started, status("VmHWM:") - before)
"""


@pytest.fixture(scope="module", params=SCALES, ids=lambda s: f"scale-{s:g}")
def built(request: pytest.FixtureRequest) -> tuple[Plan, float, dict[str, Any]]:
    scale: float = request.param
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE, str(scale)], capture_output=True, text=True, check=True, cwd=REPO
    )
    seconds, growth = (float(x) for x in measured.stdout.split())  # CPU seconds: CI's cores are shared
    plan = build_plan(7, scale, today=TODAY)
    seen = _recount(plan)
    seen["peak_growth_mb"] = growth
    return plan, seconds, seen


def _recount(plan: Plan) -> dict[str, Any]:
    """One pass over every record: its refs and codes, and the figures counted here independently."""
    refs: Counter[str] = Counter()
    households: Counter[str] = Counter()
    per_unit: dict[str, Counter[str]] = defaultdict(Counter)
    own: dict[str, Counter[str]] = defaultdict(Counter)  # records stored for the unit itself
    out: dict[str, Any] = {"refs": refs, "households": households, "per_unit": per_unit, "own": own}
    out["course_codes"] = Counter()
    paths: dict[tuple[str, int | None], tuple[str, ...]] = {}

    def add(code: str, sent: int | None, name: str, value: int) -> None:
        """Counted at the unit it is stored for and every unit above (a merged unit hangs below its successor)."""
        if (code, sent) not in paths:
            paths[(code, sent)] = plan.path(plan.stored_unit(code, sent))
        for unit in paths[(code, sent)]:
            per_unit[unit][name] += value
        own[paths[(code, sent)][-1]][name] += value

    weeks: Counter[int] = Counter()
    for v in plan.visits:
        refs["visit:" + v.client_ref] += 1
        weeks[plan.week_of(v.visited_on)] += 1
        if v.household_ref:
            households[v.household_ref] += 1
        if not v.void_reason:
            sent = None if v.typhoon or v.correction else plan.week_of(v.visited_on)
            add(v.unit, sent, "households_visited", v.households)
            add(v.unit, sent, "people_supported", v.figures[1]["total"])
    for p in plan.posts:
        refs["post:" + p.client_ref] += 1
        if not p.void_reason:
            add(p.unit, plan.week_of(p.published_on), f"outreach_posts.{p.channel}", 1)
    for c in plan.courses:
        refs["course:" + c.client_ref] += 1
        out["course_codes"][c.code] += 1
        for part in c.participants:
            refs["participant:" + part["client_ref"]] += 1
        for s in c.sessions:
            refs["session:" + s.client_ref] += 1
        if not c.cancel_reason:
            add(c.unit, plan.week_of(c.starts_on), f"courses.{c.audience}", 1)
    out["weeks"] = weeks
    return out


def test_every_code_and_client_ref_is_unique(built: tuple[Plan, float, dict[str, Any]]) -> None:
    plan, _, seen = built
    repeated = {ref: k for ref, k in seen["refs"].items() if k > 1}
    assert repeated == {}
    assert max(seen["households"].values()) == 1  # each household ref names one household
    assert max(seen["course_codes"].values()) == 1
    teams = Counter(t.code for t in plan.teams)
    assert max(teams.values()) == 1
    assert len({u.code for u in plan.units}) == len(plan.units)
    assert len({c.code for c in plan.campaigns}) == len(plan.campaigns) == 2
    assert [v.key for v in plan.volunteers] == list(range(len(plan.volunteers)))  # roster refs derive from keys
    assert sum(seen["refs"][k] for k in seen["refs"] if k.startswith("visit:")) == len(plan.visits)
    assert sum(seen["refs"][k] for k in seen["refs"] if k.startswith("post:")) == len(plan.posts)
    assert sum(seen["refs"][k] for k in seen["refs"] if k.startswith("course:")) == len(plan.courses)


def test_the_province_keeps_its_communes_and_each_commune_gets_more_teams(
    built: tuple[Plan, float, dict[str, Any]],
) -> None:
    plan, _, _ = built
    scale = plan.scale
    assert len(plan.units) == 57
    kinds = Counter(t.kind for t in plan.teams if not t.deactivate)
    assert kinds["permanent"] == n(PERMANENT_TEAMS, scale)
    assert kinds["mobile"] == n(MOBILE_TEAMS, scale)
    assert kinds["literacy"] == n(LITERACY_TEAMS, scale)
    assert sum(1 for t in plan.teams if "Thắp sáng đỏ" in t.name) == n(SHINING_RED_TEAMS, scale)
    per_unit = Counter(t.unit for t in plan.teams if t.kind == "permanent")
    if scale >= 1:
        # Every ward, commune and zone has its permanent teams, about `scale` of them.
        assert min(per_unit.values()) >= int(scale)
        assert max(per_unit.values()) <= int(scale) + 1
        assert len(per_unit) == 55
    members = sum(len(t.members) for t in plan.teams if t.kind == "permanent")
    assert members == n(PERMANENT_MEMBERS, scale)
    it = {m for t in plan.teams if t.kind == "campaign" for m in t.members}
    assert len(it) == n(IT_VOLUNTEERS, scale)


def test_records_scale_and_the_ground_truth_is_exact(built: tuple[Plan, float, dict[str, Any]]) -> None:
    plan, _, seen = built
    scale = plan.scale
    truth = plan.truth
    assert truth is not None
    s = flatten(truth.summary())
    assert s["households_visited"] == n(HOUSEHOLDS, scale)
    assert sum(s[f"households_by_area.{a}"] for a in ("remote", "border", "island")) == n(HOUSEHOLDS, scale)
    assert (s["courses.youth_children"], s["courses.elderly_middle_aged"]) == (
        n(YOUTH_COURSES, scale),
        n(ELDERLY_COURSES, scale),
    )
    assert (s["outreach_posts.fanpage"], s["outreach_posts.newspaper"], s["outreach_posts.visual"]) == (
        n(FANPAGE_POSTS, scale),
        n(NEWSPAPER_ARTICLES, scale),
        n(VISUAL_POSTS, scale),
    )
    # People per record stay the article's: the province total grows with the scale.
    assert 12000 * scale * 0.9 <= s["people_supported"] <= 13000 * scale * 1.1
    assert set(seen["weeks"]) == set(range(WEEKS))

    # The truth agrees with this file's own recount, unit by unit, and a unit's figures add up to the province's.
    recount = seen["per_unit"]
    children = sorted(u for u in recount if u != "QN")
    for name in ("households_visited", "people_supported", "outreach_posts.visual", "courses.youth_children"):
        assert {u: flatten(truth.summary(u))[name] for u in children} == {u: recount[u][name] for u in children}
        assert s[name] == recount["QN"][name] == sum(c[name] for c in seen["own"].values())
    for indicator, keys in KEYS.items():
        if keys:
            assert s[f"{indicator}.total"] == sum(s[f"{indicator}.{k}"] for k in keys)
    # Campaign targets were set from the same truth, for the province and every unit with field teams.
    for c in plan.campaigns:
        assert c.targets
        assert all(t["value"] >= 1 for t in c.targets)


def test_a_province_wide_plan_is_built_fast_and_never_held_whole(built: tuple[Plan, float, dict[str, Any]]) -> None:
    plan, seconds, seen = built
    assert isinstance(plan.visits, Shards)
    assert isinstance(plan.posts, Shards)
    assert isinstance(plan.courses, Shards)
    # Measured: 0.1 CPU-s at 1x, 2.3 at 10x, 28 at 100x (its 315,000 volunteers, and a pass over its
    # 555,000 visits and posts and 26,000 courses for the ground truth).
    assert seconds < 2 + 0.6 * plan.scale
    # About 160 MB at 100x; held whole, its records alone would take over a gigabyte.
    assert seen["peak_growth_mb"] < 20 + 2.5 * plan.scale


def test_records_are_made_again_identically_on_every_pass() -> None:
    plan = build_plan(3, 0.5, today=TODAY)
    first = [(v.client_ref, v.visited_on, v.people, v.correction, v.void_reason) for v in plan.visits]
    assert first == [(v.client_ref, v.visited_on, v.people, v.correction, v.void_reason) for v in plan.visits]
    week3 = [v.client_ref for v in plan.visits if plan.week_of(v.visited_on) == 3]
    assert [v.client_ref for v in plan.in_week(plan.visits, 3, lambda v: v.visited_on)] == week3
    courses = [c.client_ref for c in plan.courses if plan.week_of(c.starts_on) == 5]
    assert [c.client_ref for c in plan.in_week(plan.courses, 5, lambda c: c.starts_on)] == courses
    again = build_plan(3, 0.5, today=TODAY)
    assert flatten(again.truth.summary()) == flatten(plan.truth.summary())  # type: ignore[union-attr]
    assert [c.targets for c in again.campaigns] == [c.targets for c in plan.campaigns]
