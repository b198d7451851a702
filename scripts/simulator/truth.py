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
    def __init__(self, facts: Iterable[Fact]) -> None:
        self.facts = [f for f in facts if f.value]

    def _select(self, unit: str, first: date | None, last: date | None) -> Iterable[Fact]:
        for f in self.facts:
            if unit not in f.path:
                continue
            if f.day is not None and ((first and f.day < first) or (last and f.day > last)):
                continue
            yield f

    def summary(self, unit: str = "QN", first: date | None = None, last: date | None = None) -> dict[str, Any]:
        """The same shape as the metrics service's GET /v1/summary (without ``as_of`` and ``scope``)."""
        sums: dict[tuple[str, str], int] = defaultdict(int)
        for f in self._select(unit, first, last):
            sums[(f.indicator, f.key)] += f.value
        out: dict[str, Any] = {}
        for indicator, keys in KEYS.items():
            if keys:
                split = {k: sums[(indicator, k)] for k in keys}
                out[indicator] = {**split, "total": sum(split.values())}
            else:
                out[indicator] = sums[(indicator, "total")]
        return out

    def total(self, indicator: str, unit: str = "QN", first: date | None = None, last: date | None = None) -> int:
        return sum(f.value for f in self._select(unit, first, last) if f.indicator == indicator)

    def units(self) -> set[str]:
        return {u for f in self.facts for u in f.path}


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
    at its successor, and records naming it at the successor if they were sent after the merge."""
    facts: list[Fact] = []
    path = plan.path
    for t in plan.teams:
        if t.deactivate:
            continue
        team_path = path(plan.current_unit(t.unit))
        facts.append(Fact("teams", t.kind, team_path, None, 1))
        # Leaving ends every membership the volunteer holds (the registry closes them with the leave).
        members = sum(1 for k in t.members if plan.volunteers[k].leaves_on is None)
        facts.append(Fact("team_members", t.kind, team_path, None, members))
    for v in plan.volunteers:
        if v.leaves_on is None:
            p = path(plan.current_unit(v.unit))
            facts.append(Fact("volunteers", "total", p, None, 1))
            facts += [Fact("volunteers_by_role", role, p, None, 1) for role in v.roles]
            facts += [Fact("volunteers_by_skill", skill, p, None, 1) for skill in v.skills]
    for visit in plan.visits:
        if visit.void_reason:
            continue  # a voided visit no longer counts
        households, people, services = visit.figures  # a correction replaces the recorded figures
        # Late typhoon uploads and corrections are sent after the seven weeks.
        sent = None if visit.typhoon or visit.correction else plan.week_of(visit.visited_on)
        p, d = path(plan.stored_unit(visit.unit, sent)), visit.visited_on
        facts += [
            Fact("households_visited", "total", p, d, households),
            Fact("people_supported", "total", p, d, people["total"]),
            Fact("vneid_installs", "total", p, d, services["vneid_installed"]),
            Fact("online_applications", "l3", p, d, services["online_applications_l3"]),
            Fact("online_applications", "l4", p, d, services["online_applications_l4"]),
            # A correction replaces people and services but keeps the area the visit was recorded in.
            Fact("people_supported_by_area", visit.area, p, d, people["total"]),
            Fact("households_by_area", visit.area, p, d, households),
            Fact("vneid_activations", "total", p, d, services["vneid_activated"]),
        ]
        facts += [Fact("people_supported_by_group", g, p, d, people[g]) for g in KEYS["people_supported_by_group"]]
    for post in plan.posts:
        if not post.void_reason:
            p = path(plan.stored_unit(post.unit, plan.week_of(post.published_on)))
            facts.append(Fact("outreach_posts", post.channel, p, post.published_on, 1))
    for c in plan.courses:
        if c.cancel_reason:
            continue  # cancelled courses count nowhere
        p = path(plan.stored_unit(c.unit, plan.week_of(c.starts_on)))
        facts.append(Fact("courses", c.audience, p, c.starts_on, 1))
        facts.append(Fact("courses_by_mode", c.mode, p, c.starts_on, 1))
        if c.counting == "roster":
            participants: int | None = len(c.participants)
            completions = c.final_completions if c.completes else len(c.marked_complete)
        else:
            largest = max((s.count or 0 for s in c.sessions), default=0)
            participants = c.final_participants if c.completes else largest
            completions = c.final_completions if c.completes else 0
        facts.append(Fact("course_participants", c.audience, p, c.starts_on, participants or 0))
        facts.append(Fact("course_participants_by_mode", c.mode, p, c.starts_on, participants or 0))
        facts.append(Fact("course_completions", "total", p, c.ends_on, completions or 0))
    return Tally(facts)


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
