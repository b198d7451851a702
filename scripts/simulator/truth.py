"""The ground truth: the plan counted by DOMAIN.md's rules, independently of the services' code.

Every countable thing becomes a :class:`Fact` (indicator, key, unit path, local date or None for
current state, value); a summary for any unit subtree and date window is then a sum over facts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scripts.simulator.plan import Plan

AREAS = ("remote", "border", "island", "rural", "urban")
MODES = ("in_person", "online")

# Split keys per indicator, as in GET /v1/summary; indicators without keys are plain numbers.
KEYS: dict[str, tuple[str, ...]] = {
    "teams": ("permanent", "mobile", "literacy", "campaign"),
    "volunteers": (),
    "households_visited": (),
    "people_supported": (),
    "vneid_installs": (),
    "online_applications": ("l3", "l4"),
    "courses": ("youth_children", "elderly_middle_aged", "general"),
    "course_participants": ("youth_children", "elderly_middle_aged", "general"),
    "course_completions": (),
    "outreach_posts": ("fanpage", "newspaper", "visual"),
    # The breakdowns the article quotes; each "total" is the sum of its keys.
    "people_supported_by_area": AREAS,
    "households_by_area": AREAS,
    "people_supported_by_group": ("elderly", "women", "veterans"),
    "vneid_activations": (),
    "courses_by_mode": MODES,
    "course_participants_by_mode": MODES,
    "volunteers_by_role": ("union_member", "youth", "student", "lecturer"),
    "volunteers_by_skill": ("it", "vneid", "teaching", "media"),
    "team_members": ("permanent", "mobile", "literacy", "campaign"),
}


@dataclass(frozen=True)
class Fact:
    indicator: str
    key: str
    path: tuple[str, ...]
    day: date | None
    value: int


class Tally:
    """Facts summed by (indicator, key, unit path, day) as they are added: a province-wide campaign's
    millions of facts take a few thousand sums, and a summary reads those."""

    def __init__(self, facts: Iterable[Fact] = ()) -> None:
        self.sums: dict[str, dict[tuple[str, tuple[str, ...], date | None], int]] = defaultdict(dict)
        for f in facts:
            self.add(f.indicator, f.key, f.path, f.day, f.value)

    def add(self, indicator: str, key: str, path: tuple[str, ...], day: date | None, value: int) -> None:
        if value:
            per = self.sums[indicator]
            per[(key, path, day)] = per.get((key, path, day), 0) + value

    @property
    def facts(self) -> list[Fact]:
        return [Fact(i, k, p, d, v) for i, per in self.sums.items() for (k, p, d), v in per.items() if v]

    def _select(self, indicator: str, unit: str, first: date | None, last: date | None) -> Iterable[tuple[str, int]]:
        for (key, path, day), value in self.sums.get(indicator, {}).items():
            if unit not in path:
                continue
            if day is not None and ((first and day < first) or (last and day > last)):
                continue
            yield key, value

    def summary(self, unit: str = "QN", first: date | None = None, last: date | None = None) -> dict[str, Any]:
        """The same shape as the metrics service's GET /v1/summary (without ``as_of`` and ``scope``)."""
        out: dict[str, Any] = {}
        for indicator, keys in KEYS.items():
            sums: dict[str, int] = defaultdict(int)
            for key, value in self._select(indicator, unit, first, last):
                sums[key] += value
            if keys:
                split = {k: sums[k] for k in keys}
                out[indicator] = {**split, "total": sum(split.values())}
            else:
                out[indicator] = sums["total"]
        return out

    def total(self, indicator: str, unit: str = "QN", first: date | None = None, last: date | None = None) -> int:
        return sum(value for _, value in self._select(indicator, unit, first, last))

    def units(self) -> set[str]:
        return {u for per in self.sums.values() for (_, path, _), v in per.items() if v for u in path}


def flatten(summary: dict[str, Any]) -> dict[str, int]:
    """``{"teams.permanent": 55, ..., "volunteers": 3100}`` for comparison and tables."""
    out: dict[str, int] = {}
    for indicator, keys in KEYS.items():
        value = summary.get(indicator)
        if keys:
            value = value or {}
            for k in (*keys, "total"):
                out[f"{indicator}.{k}"] = int(value.get(k, 0))
        else:
            out[indicator] = int(value or 0)
    return out


def tally(plan: Plan) -> Tally:
    """Facts at the unit each thing is counted for at the end: teams and volunteers of a merged unit
    at its successor, and records naming it at the successor if they were sent after the merge.

    A plan built by :func:`~scripts.simulator.plan.build_plan` was counted once already (its targets
    come from the count); that count is returned."""
    if plan.truth is not None:
        return plan.truth
    out = Tally()
    add = out.add
    paths: dict[tuple[str, int | None], tuple[str, ...]] = {}

    def path(code: str, sent: int | None = None) -> tuple[str, ...]:
        """The path a record of ``code`` sent in week ``sent`` counts at (None: after the seven weeks;
        -1: a team or volunteer, counted where its unit is at the end)."""
        if (code, sent) not in paths:
            unit = plan.current_unit(code) if sent == -1 else plan.stored_unit(code, sent)
            paths[(code, sent)] = plan.path(unit)
        return paths[(code, sent)]

    for t in plan.teams:
        if t.deactivate:
            continue
        team_path = path(t.unit, -1)
        add("teams", t.kind, team_path, None, 1)
        # Leaving ends every membership the volunteer holds (the registry closes them with the leave).
        members = sum(1 for k in t.members if plan.volunteers[k].leaves_on is None)
        add("team_members", t.kind, team_path, None, members)
    for v in plan.volunteers:
        if v.leaves_on is None:
            p = path(v.unit, -1)
            add("volunteers", "total", p, None, 1)
            for role in v.roles:
                add("volunteers_by_role", role, p, None, 1)
            for skill in v.skills:
                add("volunteers_by_skill", skill, p, None, 1)
    groups = KEYS["people_supported_by_group"]
    for visit in plan.visits:
        if visit.void_reason:
            continue  # a voided visit no longer counts
        households, people, services = visit.figures  # a correction replaces the recorded figures
        # Late typhoon uploads and corrections are sent after the seven weeks.
        sent = None if visit.typhoon or visit.correction else plan.week_of(visit.visited_on)
        p, d = path(visit.unit, sent), visit.visited_on
        add("households_visited", "total", p, d, households)
        add("people_supported", "total", p, d, people["total"])
        add("vneid_installs", "total", p, d, services["vneid_installed"])
        add("online_applications", "l3", p, d, services["online_applications_l3"])
        add("online_applications", "l4", p, d, services["online_applications_l4"])
        # A correction replaces people and services but keeps the area the visit was recorded in.
        add("people_supported_by_area", visit.area, p, d, people["total"])
        add("households_by_area", visit.area, p, d, households)
        add("vneid_activations", "total", p, d, services["vneid_activated"])
        for g in groups:
            add("people_supported_by_group", g, p, d, people[g])
    for post in plan.posts:
        if not post.void_reason:
            p = path(post.unit, plan.week_of(post.published_on))
            add("outreach_posts", post.channel, p, post.published_on, 1)
    for c in plan.courses:
        if c.cancel_reason:
            continue  # cancelled courses count nowhere
        p = path(c.unit, plan.week_of(c.starts_on))
        add("courses", c.audience, p, c.starts_on, 1)
        add("courses_by_mode", c.mode, p, c.starts_on, 1)
        if c.counting == "roster":
            participants: int | None = len(c.participants)
            completions = c.final_completions if c.completes else len(c.marked_complete)
        else:
            largest = max((s.count or 0 for s in c.sessions), default=0)
            participants = c.final_participants if c.completes else largest
            completions = c.final_completions if c.completes else 0
        add("course_participants", c.audience, p, c.starts_on, participants or 0)
        add("course_participants_by_mode", c.mode, p, c.starts_on, participants or 0)
        add("course_completions", "total", p, c.ends_on, completions or 0)
    return out


def campaign_actuals(plan: Plan, facts: Tally) -> dict[str, dict[tuple[str, str], int]]:
    """``{campaign: {(indicator, unit): actual}}`` over each campaign's window, for its targets."""
    out: dict[str, dict[tuple[str, str], int]] = {}
    for c in plan.campaigns:
        out[c.code] = {
            (t["indicator"], t["unit_code"]): facts.total(
                t["indicator"], unit=t["unit_code"], first=c.starts_on, last=c.ends_on
            )
            for t in plan.targets_now(c)
        }
    return out
