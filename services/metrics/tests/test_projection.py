"""The pure folding rules (events -> per-unit, per-day increments), the unit tree walks and the
read-side arithmetic, without infrastructure."""

from __future__ import annotations

import signal
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics.projection import ALL_DAY, CATALOGUE, STATE_DAY, TEAM_PREFIX, CounterSums, counter_id, increments
from metrics.repository import path_of, subtree_of
from metrics.schemas import Interval
from metrics.service import add_up, bucket_start, projected, series, window_days
from shared.contracts import registry as reg
from shared.contracts import visits as vis
from shared.contracts.common import AgeBand, Area, Indicator, Role, Skill, TeamKind
from shared.envelope import Envelope, make_event

PROVINCE = ["QN"]
HALONG = ["QN", "QN-HALONG"]
VANDON = ["QN", "QN-VANDON"]
SCHOOL = ["QN", "QN-HALONG", "QN-HALONG-THPT"]
JULY = date(2025, 7, 1)

Key = tuple[str, str, str]  # (unit, day, field)


def totals(events: Iterable[Envelope]) -> dict[Key, int]:
    """Every event's increments added up, as ``(unit, day, field)``, zeros left out.

    The all-time documents are left out too (they repeat the dated ones); a test of their own
    checks that they always equal the sum of the unit's days. So are the teams' documents (another
    dimension of the same changes, checked in test_team_reports.py).
    """
    sums = CounterSums()
    for e in events:
        sums.add(increments(e.payload()))
    out: dict[Key, int] = {}
    for doc_id, fields in sums.docs.items():
        unit, _, day = doc_id.rpartition("|")
        if day != ALL_DAY and not unit.startswith(TEAM_PREFIX):
            out |= {(unit, day, f): v for f, v in fields.items() if v}
    return out


def test_each_units_all_time_document_is_the_sum_of_its_days(ev) -> None:
    old = ev.figures(HALONG, date(2025, 7, 3), people=4, vneid=1)
    new = ev.figures(VANDON, date(2025, 7, 5), people=6, l3=2)
    course = ev.course("K1", VANDON, "elderly_middle_aged", date(2025, 7, 6), date(2025, 7, 9))
    events = [
        ev.visit("v1", old),
        ev.visit("v2", ev.figures(HALONG, date(2025, 7, 4), people=2)),
        ev.visit_corrected("v1", old, new),
        ev.scheduled(course),
        ev.session(course, "s1", date(2025, 7, 6), 25, 0, 25),
        ev.post("P1", HALONG, "visual", JULY),
        ev.team("T1", "mobile", HALONG),
    ]
    sums = CounterSums()
    for e in events:
        sums.add(increments(e.payload()))
    days: dict[tuple[str, str], int] = {}
    for doc_id, fields in sums.docs.items():
        unit, _, day = doc_id.rpartition("|")
        if day not in (ALL_DAY, STATE_DAY) and not unit.startswith(TEAM_PREFIX):
            for f, v in fields.items():
                days[(unit, f)] = days.get((unit, f), 0) + v
    all_time = {
        (doc_id.rpartition("|")[0], f): v
        for doc_id, fields in sums.docs.items()
        if doc_id.endswith(f"|{ALL_DAY}")
        for f, v in fields.items()
    }
    assert {k: v for k, v in all_time.items() if v} == {k: v for k, v in days.items() if v}
    assert all_time[("QN-VANDON", "people_supported")] == 6


def rolled_up(sums: Mapping[Key, int], tree: Mapping[str, Mapping[str, Any]], unit: str, field: str) -> int:
    """What a reader shows for ``unit``: the field summed over the units now below it, all days."""
    below = set(subtree_of(tree, unit))
    return sum(v for (u, _, f), v in sums.items() if u in below and f == field)


def tree_of(parents: Mapping[str, str | None]) -> dict[str, dict[str, Any]]:
    return {code: {"_id": code, "parent_code": parent} for code, parent in parents.items()}


TREE = tree_of({"QN": None, "QN-HALONG": "QN", "QN-VANDON": "QN", "QN-HALONG-THPT": "QN-HALONG"})


# --- folding: one counter document per unit where it happened and day ----------------------------


def test_visit_counts_on_visited_on_at_its_own_unit_only(ev) -> None:
    f = ev.figures(HALONG, date(2025, 7, 3), 1, 4, 2, 1, 3, area="border", elderly=2, women=3, veterans=1, activated=1)
    got = increments(ev.visit("v1", f).payload())
    # The day's document, and the unit's all-time document with the same figures.
    assert got["QN-HALONG|all"] == got["QN-HALONG|2025-07-03"]
    assert {d: v for d, v in got.items() if d != "QN-HALONG|all"} == {
        "QN-HALONG|2025-07-03": {
            "households_visited": 1,
            "people_supported": 4,
            "vneid_installs": 2,
            "vneid_activations": 1,
            "online_applications_l3": 1,
            "online_applications_l4": 3,
            "online_applications_total": 4,
            "people_supported_by_group_elderly": 2,
            "people_supported_by_group_women": 3,
            "people_supported_by_group_veterans": 1,
            # A person may be in several groups: the total adds the groups up, it is not people_supported.
            "people_supported_by_group_total": 6,
            "people_supported_by_area_border": 4,
            "people_supported_by_area_total": 4,
            "households_by_area_border": 1,
            "households_by_area_total": 1,
        }
    }


def test_counter_ids_are_unit_and_day_and_current_state_uses_the_state_day() -> None:
    assert counter_id("QN-HALONG", "2025-07-03") == "QN-HALONG|2025-07-03"
    assert counter_id("QN-VANDON", STATE_DAY) == "QN-VANDON|state"


def test_a_school_visit_is_stored_at_the_school_and_read_for_its_ward_and_province(ev) -> None:
    got = totals([ev.visit("v1", ev.figures(SCHOOL, date(2025, 7, 3), people=5))])
    assert {(unit, day) for unit, day, _ in got} == {("QN-HALONG-THPT", "2025-07-03")}
    assert rolled_up(got, TREE, "QN-HALONG-THPT", "people_supported") == 5
    assert rolled_up(got, TREE, "QN-HALONG", "people_supported") == 5
    assert rolled_up(got, TREE, "QN", "people_supported") == 5
    assert rolled_up(got, TREE, "QN-VANDON", "people_supported") == 0


def test_correction_moves_figures_to_the_new_day_and_unit(ev) -> None:
    old = ev.figures(HALONG, date(2025, 7, 3), people=4, elderly=0)
    new = ev.figures(VANDON, date(2025, 7, 5), people=6, elderly=0)
    got = totals([ev.visit("v1", old), ev.visit_corrected("v1", old, new)])
    assert got == {
        ("QN-VANDON", "2025-07-05", "households_visited"): 1,
        ("QN-VANDON", "2025-07-05", "people_supported"): 6,
        ("QN-VANDON", "2025-07-05", "people_supported_by_area_island"): 6,
        ("QN-VANDON", "2025-07-05", "people_supported_by_area_total"): 6,
        ("QN-VANDON", "2025-07-05", "households_by_area_island"): 1,
        ("QN-VANDON", "2025-07-05", "households_by_area_total"): 1,
    }
    # The correction alone takes the old figures out where they were counted.
    alone = increments(ev.visit_corrected("v1", old, new).payload())
    assert alone["QN-HALONG|2025-07-03"] == {
        "households_visited": -1,
        "people_supported": -4,
        "people_supported_by_area_island": -4,
        "people_supported_by_area_total": -4,
        "households_by_area_island": -1,
        "households_by_area_total": -1,
    }


def test_correction_moves_people_between_areas_and_groups_and_a_void_takes_out_the_corrected_ones(ev) -> None:
    day = date(2025, 7, 3)
    recorded = ev.figures(HALONG, day, households=2, people=5, area="island", elderly=2, women=3, activated=1)
    fixed = ev.figures(HALONG, day, households=1, people=4, area="remote", elderly=1, veterans=2, activated=3)
    corrected = [ev.visit("v1", recorded), ev.visit_corrected("v1", recorded, fixed)]
    assert totals(corrected) == {
        ("QN-HALONG", "2025-07-03", f): v
        for f, v in {
            "households_visited": 1,
            "people_supported": 4,
            "vneid_activations": 3,
            "people_supported_by_area_remote": 4,
            "people_supported_by_area_total": 4,
            "households_by_area_remote": 1,
            "households_by_area_total": 1,
            "people_supported_by_group_elderly": 1,
            "people_supported_by_group_veterans": 2,
            "people_supported_by_group_total": 3,
        }.items()
    }
    assert totals([*corrected, ev.visit_voided("v1", fixed)]) == {}


def test_visits_of_older_producers_count_in_no_area_key_but_in_everything_else(ev) -> None:
    day = date(2025, 7, 3)
    old = ev.figures(HALONG, day, households=1, people=3, area=None, elderly=1)
    got = totals([ev.visit("v1", old)])
    assert got == {
        ("QN-HALONG", "2025-07-03", "households_visited"): 1,
        ("QN-HALONG", "2025-07-03", "people_supported"): 3,
        ("QN-HALONG", "2025-07-03", "people_supported_by_group_elderly"): 1,
        ("QN-HALONG", "2025-07-03", "people_supported_by_group_total"): 1,
    }
    # Voided by an older producer too: nothing was added to an area, nothing is taken from one.
    assert totals([ev.visit("v1", old), ev.visit_voided("v1", old)]) == {}
    # Corrected by a current producer: the area figures start with the corrected ones.
    fixed = ev.figures(HALONG, day, households=1, people=3, area="rural", elderly=1)
    after = totals([ev.visit("v1", old), ev.visit_corrected("v1", old, fixed)])
    assert after[("QN-HALONG", "2025-07-03", "people_supported_by_area_rural")] == 3
    assert after[("QN-HALONG", "2025-07-03", "households_by_area_total")] == 1


def test_void_removes_exactly_what_the_visit_added(ev) -> None:
    f = ev.figures(HALONG, date(2025, 7, 3), people=4, vneid=1)
    assert totals([ev.visit("v1", f)]) != {}
    assert totals([ev.visit("v1", f), ev.visit_voided("v1", f)]) == {}


def test_team_kind_change_and_deactivation_keep_current_state(ev) -> None:
    events = [
        ev.team("T1", "mobile", HALONG),
        ev.team_moved("T1", "campaign", VANDON, "mobile", HALONG),
        ev.team("T2", "permanent", HALONG),
        ev.team_deactivated("T2", "permanent", HALONG),
    ]
    assert totals(events) == {
        ("QN-VANDON", STATE_DAY, "teams_campaign"): 1,
        ("QN-VANDON", STATE_DAY, "teams_total"): 1,
    }


def test_updates_of_inactive_teams_and_volunteers_move_nothing(ev) -> None:
    team = reg.TeamUpdated(
        code="T1",
        name="Đội hình T1",
        kind="campaign",
        unit_code="QN-VANDON",
        unit_path=VANDON,
        active=False,
        previous_kind="mobile",
        previous_unit_path=HALONG,
    )
    volunteer = reg.VolunteerUpdated(
        volunteer_id="V1",
        unit_code="QN-VANDON",
        unit_path=VANDON,
        roles=["youth"],
        skills=["it"],
        birth_year=2001,
        active=False,
        previous_unit_path=HALONG,
    )
    assert increments(team) == {}
    assert increments(volunteer) == {}


def test_volunteer_leaving_and_moving(ev) -> None:
    events = [
        ev.volunteer("V1", HALONG),
        ev.volunteer("V2", HALONG),
        ev.volunteer_left("V2", HALONG),
        ev.volunteer_moved("V1", VANDON, HALONG),
    ]
    assert totals(events) == {
        ("QN-VANDON", STATE_DAY, "volunteers"): 1,
        ("QN-VANDON", STATE_DAY, "volunteers_by_role_student"): 1,
        ("QN-VANDON", STATE_DAY, "volunteers_by_role_total"): 1,
        ("QN-VANDON", STATE_DAY, "volunteers_by_skill_vneid"): 1,
        ("QN-VANDON", STATE_DAY, "volunteers_by_skill_total"): 1,
    }


def state(got: Mapping[Key, int], indicator: str) -> dict[tuple[str, str], int]:
    """``{(unit, key): n}`` of one current-state split indicator, zeros and totals left out."""
    spec = CATALOGUE[indicator]
    fields = {spec.field(k): k for k in spec.keys}
    return {(u, fields[f]): v for (u, d, f), v in got.items() if d == STATE_DAY and f in fields}


def test_volunteers_by_role_and_skill_follow_updates_moves_and_departures(ev) -> None:
    both = {"roles": ("union_member", "student"), "skills": ("it", "vneid")}
    events = [
        ev.volunteer("V1", HALONG, **both),
        ev.volunteer("V2", HALONG, roles=("lecturer", "lecturer"), skills=()),  # a role listed twice counts once
        ev.volunteer("V3", VANDON, roles=("youth",), skills=("media",)),
        # V1 moves to Vân Đồn, no longer a student, and learns to teach.
        ev.volunteer_moved(
            "V1",
            VANDON,
            HALONG,
            roles=("union_member",),
            skills=("it", "vneid", "teaching"),
            previous_roles=both["roles"],
            previous_skills=both["skills"],
        ),
        ev.volunteer_left("V3", VANDON, roles=("youth",), skills=("media",)),
    ]
    got = totals(events)
    assert state(got, "volunteers_by_role") == {("QN-HALONG", "lecturer"): 1, ("QN-VANDON", "union_member"): 1}
    assert state(got, "volunteers_by_skill") == {
        ("QN-VANDON", "it"): 1,
        ("QN-VANDON", "vneid"): 1,
        ("QN-VANDON", "teaching"): 1,
    }
    assert got[("QN-VANDON", STATE_DAY, "volunteers_by_skill_total")] == 3  # one volunteer, three skills
    assert got[("QN-HALONG", STATE_DAY, "volunteers_by_role_total")] == 1
    assert ("QN-HALONG", STATE_DAY, "volunteers_by_skill_total") not in got


def test_volunteer_events_of_older_producers_keep_roles_and_skills_as_they_were(ev) -> None:
    registered = ev.volunteer("V1", HALONG, roles=("student",), skills=("it",))
    # An update without previous_*: the roles and skills are taken as unchanged, and move with the unit.
    moved = ev.volunteer_moved(
        "V1", VANDON, HALONG, roles=("student",), skills=("it",), previous_roles=None, previous_skills=None
    )
    got = totals([registered, moved])
    assert state(got, "volunteers_by_role") == {("QN-VANDON", "student"): 1}
    assert state(got, "volunteers_by_skill") == {("QN-VANDON", "it"): 1}
    # A departure without roles and skills takes the volunteer out of volunteers only.
    left = totals([registered, ev.volunteer_left("V1", HALONG, roles=(), skills=())])
    assert left == {
        ("QN-HALONG", STATE_DAY, "volunteers_by_role_student"): 1,
        ("QN-HALONG", STATE_DAY, "volunteers_by_role_total"): 1,
        ("QN-HALONG", STATE_DAY, "volunteers_by_skill_it"): 1,
        ("QN-HALONG", STATE_DAY, "volunteers_by_skill_total"): 1,
    }
    # An inactive volunteer's update moves nothing.
    assert increments(ev.volunteer_moved("V1", VANDON, HALONG, active=False).payload()) == {}


def test_team_members_follow_memberships_team_moves_kind_changes_and_deactivation(ev) -> None:
    events = [
        ev.team("T1", "mobile", HALONG),
        ev.team("T2", "permanent", VANDON),
        *(ev.member("T1", f"V{i}", "mobile", HALONG) for i in range(3)),
        ev.member("T2", "V9", "permanent", VANDON),
        ev.member("T2", "V8", "permanent", VANDON),
        ev.member("T1", "V0", "mobile", HALONG, ended=True),
        # T1 becomes a campaign team of Vân Đồn with its 2 members.
        ev.team_moved("T1", "campaign", VANDON, "mobile", HALONG, members=2),
        ev.member("T1", "V5", "campaign", VANDON),
        # T2 closes with its 2 members; a membership ended afterwards is not counted again.
        ev.team_deactivated("T2", "permanent", VANDON, members=2),
        ev.member("T2", "V9", "permanent", VANDON, ended=True, team_active=False),
    ]
    got = totals(events)
    assert state(got, "team_members") == {("QN-VANDON", "campaign"): 3}
    assert got[("QN-VANDON", STATE_DAY, "team_members_total")] == 3
    assert state(got, "teams") == {("QN-VANDON", "campaign"): 1}

    # Brought back with the 1 member it kept: its members count again, and so does the team.
    back = totals(
        [*events, ev.team_moved("T2", "permanent", HALONG, "permanent", VANDON, members=1, previous_active=False)]
    )
    assert state(back, "team_members") == {("QN-VANDON", "campaign"): 3, ("QN-HALONG", "permanent"): 1}
    assert state(back, "teams") == {("QN-VANDON", "campaign"): 1, ("QN-HALONG", "permanent"): 1}


def test_team_and_membership_events_of_older_producers_move_no_team_members(ev) -> None:
    started = ev.member("T1", "V1", "mobile", HALONG)
    assert totals([started]) == {
        ("QN-HALONG", STATE_DAY, "team_members_mobile"): 1,
        ("QN-HALONG", STATE_DAY, "team_members_total"): 1,
    }
    assert increments(ev.member("T1", "V1", None, None, team_active=None).payload()) == {}
    assert increments(ev.member("T1", "V1", "mobile", HALONG, team_active=None).payload()) == {}
    assert increments(ev.member("T1", "V1", "mobile", HALONG, team_active=False).payload()) == {}
    # Without a member count a move moves the team only; without previous_active it was active.
    moved = increments(
        ev.team_moved("T1", "campaign", VANDON, "mobile", HALONG, members=None, previous_active=None).payload()
    )
    assert moved == {
        "QN-HALONG|state": {"teams_mobile": -1, "teams_total": -1},
        "QN-VANDON|state": {"teams_campaign": 1, "teams_total": 1},
        "team:T1|state": {"teams_campaign": 1, "teams_mobile": -1, "teams_total": 0},
    }
    assert increments(ev.team_deactivated("T1", "mobile", HALONG, members=None).payload()) == {
        "QN-HALONG|state": {"teams_mobile": -1, "teams_total": -1},
        "team:T1|state": {"teams_mobile": -1, "teams_total": -1},
    }
    # An update of a team that stays inactive moves nothing.
    inactive = ev.team_moved("T1", "campaign", VANDON, "mobile", HALONG, members=4, active=False, previous_active=False)
    assert increments(inactive.payload()) == {}


def test_head_count_course_participants_follow_changes_and_completions_use_ends_on(ev) -> None:
    course = ev.course("K1", VANDON, "elderly_middle_aged", date(2025, 7, 6), date(2025, 7, 9))
    events = [
        ev.scheduled(course),
        ev.session(course, "s1", date(2025, 7, 6), 25, 0, 25),
        ev.session(course, "s2", date(2025, 7, 7), 20, 25, 25),
        ev.completed(course, (25, 30), (0, 27)),
    ]
    assert totals(events) == {
        ("QN-VANDON", "2025-07-06", "courses_elderly_middle_aged"): 1,
        ("QN-VANDON", "2025-07-06", "courses_total"): 1,
        ("QN-VANDON", "2025-07-06", "course_participants_elderly_middle_aged"): 30,
        ("QN-VANDON", "2025-07-06", "course_participants_total"): 30,
        ("QN-VANDON", "2025-07-06", "courses_by_mode_in_person"): 1,
        ("QN-VANDON", "2025-07-06", "courses_by_mode_total"): 1,
        ("QN-VANDON", "2025-07-06", "course_participants_by_mode_in_person"): 30,
        ("QN-VANDON", "2025-07-06", "course_participants_by_mode_total"): 30,
        ("QN-VANDON", "2025-07-09", "course_completions"): 27,
    }


def test_roster_completions_count_one_by_one_on_ends_on(ev) -> None:
    course = ev.course("K3", SCHOOL, "youth_children", date(2025, 7, 8), date(2025, 7, 10))
    events = [ev.participant_completed(course, "p1", 0), ev.participant_completed(course, "p2", 1)]
    assert totals(events) == {("QN-HALONG-THPT", "2025-07-10", "course_completions"): 2}


def test_courses_and_participants_by_mode_count_as_courses_and_participants_do(ev) -> None:
    online = ev.course("K1", HALONG, "elderly_middle_aged", date(2025, 7, 8), date(2025, 7, 10), mode="online")
    in_person = ev.course("K2", HALONG, "youth_children", date(2025, 7, 8), date(2025, 7, 9))
    cancelled = ev.course("K3", HALONG, "general", date(2025, 7, 8), date(2025, 7, 9), mode="online")
    untold = ev.course("K4", HALONG, "general", date(2025, 7, 8), date(2025, 7, 9), mode=None)  # an older producer
    events = [
        *(ev.scheduled(c) for c in (online, in_person, cancelled, untold)),
        ev.session(online, "s1", date(2025, 7, 8), 12, 0, 12),
        ev.completed(online, (12, 15), (0, 14)),
        ev.enrolled(in_person, "p1", 0),
        ev.enrolled(cancelled, "p2", 0),
        ev.cancelled(cancelled, 1),
        ev.enrolled(untold, "p3", 0),
    ]
    got = {f: v for (u, d, f), v in totals(events).items() if "by_mode" in f}
    assert got == {
        "courses_by_mode_online": 1,
        "courses_by_mode_in_person": 1,
        "courses_by_mode_total": 2,
        "course_participants_by_mode_online": 15,
        "course_participants_by_mode_in_person": 1,
        "course_participants_by_mode_total": 16,
    }
    assert totals(events)[("QN-HALONG", "2025-07-08", "courses_total")] == 3


def test_cancelled_roster_course_stops_counting(ev) -> None:
    course = ev.course("K2", HALONG, "general", date(2025, 7, 8), date(2025, 7, 10))
    events = [ev.scheduled(course), ev.enrolled(course, "p1", 0), ev.enrolled(course, "p2", 1), ev.cancelled(course, 2)]
    assert totals(events[:3])[("QN-HALONG", "2025-07-08", "course_participants_general")] == 2
    assert totals(events) == {}


def test_outreach_post_and_void(ev) -> None:
    post = ev.post("P1", HALONG, "visual", JULY)
    assert totals([post]) == {
        ("QN-HALONG", "2025-07-01", "outreach_posts_visual"): 1,
        ("QN-HALONG", "2025-07-01", "outreach_posts_total"): 1,
    }
    assert totals([post, ev.post_voided("P1", HALONG, "visual", JULY)]) == {}


def test_unit_and_campaign_events_move_no_counter(ev) -> None:
    assert increments(ev.unit(HALONG).payload()) == {}
    assert increments(ev.campaign("C", JULY, JULY, [("courses", "QN", 3)]).payload()) == {}


def test_the_catalogue_names_every_indicator_a_target_can_name() -> None:
    assert list(CATALOGUE) == [i.value for i in Indicator]


def test_every_field_the_fold_writes_belongs_to_a_catalogue_indicator(ev) -> None:
    known = {spec.field(k) for spec in CATALOGUE.values() for k in (*spec.keys, "total")}
    day = date(2025, 7, 3)
    course = ev.course("K1", HALONG, "general", day, day, mode="online")
    events = [
        *(
            ev.visit(f"v{a}", ev.figures(HALONG, day, 1, 2, 1, 1, 1, area=a, women=1, veterans=1, activated=1))
            for a in ("remote", "border", "island", "rural", "urban")
        ),
        ev.scheduled(course),
        ev.enrolled(course, "p1", 0),
        ev.volunteer("V1", HALONG, roles=("union_member", "youth", "student", "lecturer"), skills=("it", "media")),
        ev.member("T1", "V1", "literacy", HALONG),
    ]
    written = {f for (_, _, f) in totals(events)}
    assert written <= known
    # Every breakdown is written by these events (their zero keys aside).
    for name in ("people_supported_by_area", "households_by_area", "people_supported_by_group", "vneid_activations"):
        assert CATALOGUE[name].field() in written, name
    for name in ("courses_by_mode", "course_participants_by_mode", "volunteers_by_role", "team_members"):
        assert CATALOGUE[name].field() in written, name


def test_counter_sums_add_only_the_documents_asked_for() -> None:
    sums = CounterSums()
    halong, vandon = counter_id("QN-HALONG", "2025-07-01"), counter_id("QN-VANDON", "2025-07-01")
    sums.add({halong: {"people_supported": 2}})
    sums.add({halong: {"people_supported": 3}, vandon: {"people_supported": 9}})
    sums.add({vandon: {"people_supported": 1}}, only={halong})
    assert sums.docs == {halong: {"people_supported": 5}, vandon: {"people_supported": 9}}


# --- property: visits with corrections and voids --------------------------------------------------

visit_figures = st.builds(
    lambda unit, day, hh, people, vneid, l3, l4, area, groups, activated: vis.VisitFigures(
        unit_code=unit[-1],
        unit_path=unit,
        visited_on=JULY + timedelta(days=day),
        households=hh,
        people=vis.People(total=people, elderly=groups[0], women=groups[1], veterans=groups[2]),
        services=vis.Services(
            vneid_installed=vneid, vneid_activated=activated, online_applications_l3=l3, online_applications_l4=l4
        ),
        area=area,
    ),
    st.sampled_from([HALONG, VANDON, SCHOOL, PROVINCE]),
    st.integers(0, 5),
    st.integers(0, 1),
    st.integers(0, 9),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 5),
    st.sampled_from([None, *Area]),  # None: recorded, corrected or voided by an older producer
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
    st.integers(0, 5),
)
# Each visit: its recorded figures, zero or more corrections, and whether it ends voided.
visit_histories = st.lists(
    st.tuples(visit_figures, st.lists(visit_figures, max_size=3), st.booleans()), min_size=1, max_size=8
)


@settings(max_examples=150, deadline=None)
@given(visit_histories)
def test_folded_visits_equal_direct_sums_of_final_figures(ev, histories) -> None:
    events: list[Envelope] = []
    expected: dict[Key, int] = defaultdict(int)
    for n, (recorded, corrections, voided) in enumerate(histories):
        vid = f"v{n}"
        events.append(ev.visit(vid, recorded))
        current = recorded
        for fix in corrections:
            events.append(ev.visit_corrected(vid, current, fix))
            current = fix
        if voided:
            events.append(ev.visit_voided(vid, current))
            continue
        at = (current.unit_path[-1], current.visited_on.isoformat())
        s = current.services
        expected[(*at, "households_visited")] += current.households
        expected[(*at, "people_supported")] += current.people.total
        expected[(*at, "vneid_installs")] += s.vneid_installed
        expected[(*at, "online_applications_l3")] += s.online_applications_l3
        expected[(*at, "online_applications_l4")] += s.online_applications_l4
        expected[(*at, "online_applications_total")] += s.online_applications_l3 + s.online_applications_l4
        expected[(*at, "vneid_activations")] += s.vneid_activated
        p = current.people
        for group, n in (("elderly", p.elderly), ("women", p.women), ("veterans", p.veterans)):
            expected[(*at, f"people_supported_by_group_{group}")] += n
            expected[(*at, "people_supported_by_group_total")] += n
        if current.area is not None:
            for name, n in (("people_supported_by_area", p.total), ("households_by_area", current.households)):
                expected[(*at, f"{name}_{current.area.value}")] += n
                expected[(*at, f"{name}_total")] += n
    got = totals(events)
    assert got == {k: v for k, v in expected.items() if v}
    # Read through the tree, the province sees every visit that was not voided.
    people = sum(v for (_, _, f), v in expected.items() if f == "people_supported")
    assert rolled_up(got, TREE, "QN", "people_supported") == people


# --- property: the registry's current state, as its producer describes each change ----------------

registry_steps = st.lists(
    st.tuples(
        st.sampled_from(
            ["team", "update_team", "deactivate", "reactivate", "join", "quit", "volunteer", "update", "leave"]
        ),
        st.integers(0, 1),
        st.integers(0, 2),
        st.sampled_from(list(TeamKind)),
        st.sampled_from([HALONG, VANDON, SCHOOL]),
        st.frozensets(st.sampled_from(list(Role))),
        st.frozensets(st.sampled_from(list(Skill))),
    ),
    min_size=20,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(registry_steps)
def test_registry_breakdowns_equal_the_final_state_of_teams_memberships_and_volunteers(ev, steps) -> None:
    """A registry in miniature emits what the registry service emits; the fold must end where it ends."""
    teams: dict[str, dict[str, Any]] = {}
    volunteers: dict[str, dict[str, Any]] = {}
    members: set[tuple[str, str]] = set()
    events: list[Envelope] = []

    def count(team: str) -> int:
        return sum(1 for t, _ in members if t == team)

    def end(team: str, vid: str) -> None:
        members.discard((team, vid))
        t = teams[team]
        events.append(ev.member(team, vid, t["kind"], t["path"], ended=True, team_active=t["active"]))

    for op, t, v, kind, path, roles, skills in steps:
        team, vid = f"T{t}", f"V{v}"
        td, vd = teams.get(team), volunteers.get(vid)
        if op == "team" and td is None:
            teams[team] = {"kind": kind, "path": path, "active": True}
            events.append(ev.team(team, kind, path))
        elif op == "update_team" and td is not None:
            active = td["active"]
            events.append(
                ev.team_moved(
                    team, kind, path, td["kind"], td["path"], members=count(team), active=active, previous_active=active
                )
            )
            td.update(kind=kind, path=path)
        elif op == "deactivate" and td is not None and td["active"]:
            events.append(ev.team_deactivated(team, td["kind"], td["path"], members=count(team)))
            td["active"] = False
        elif op == "reactivate" and td is not None and not td["active"]:
            events.append(
                ev.team_moved(
                    team, td["kind"], td["path"], td["kind"], td["path"], members=count(team), previous_active=False
                )
            )
            td["active"] = True
        elif op == "join" and td and td["active"] and vd and vd["active"] and (team, vid) not in members:
            members.add((team, vid))
            events.append(ev.member(team, vid, td["kind"], td["path"]))
        elif op == "quit" and (team, vid) in members:
            end(team, vid)
        elif op == "volunteer" and vd is None:
            volunteers[vid] = {"path": path, "roles": roles, "skills": skills, "active": True}
            events.append(ev.volunteer(vid, path, roles=sorted(roles), skills=sorted(skills)))
        elif op == "update" and vd is not None:
            events.append(
                ev.volunteer_moved(
                    vid,
                    path,
                    vd["path"],
                    roles=sorted(roles),
                    skills=sorted(skills),
                    previous_roles=sorted(vd["roles"]),
                    previous_skills=sorted(vd["skills"]),
                    active=vd["active"],
                )
            )
            vd.update(path=path, roles=roles, skills=skills)
        elif op == "leave" and vd is not None and vd["active"]:
            events.append(ev.volunteer_left(vid, vd["path"], roles=sorted(vd["roles"]), skills=sorted(vd["skills"])))
            vd["active"] = False
            for team_code in sorted(tc for tc, member in members if member == vid):
                end(team_code, vid)

    expected: dict[str, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
    for code, _ in members:
        if teams[code]["active"]:
            expected["team_members"][(teams[code]["path"][-1], teams[code]["kind"].value)] += 1
    for td in teams.values():
        if td["active"]:
            expected["teams"][(td["path"][-1], td["kind"].value)] += 1
    for vd in volunteers.values():
        if vd["active"]:
            for r in vd["roles"]:
                expected["volunteers_by_role"][(vd["path"][-1], r.value)] += 1
            for k in vd["skills"]:
                expected["volunteers_by_skill"][(vd["path"][-1], k.value)] += 1
    got = totals(events)
    for name in ("team_members", "teams", "volunteers_by_role", "volunteers_by_skill"):
        assert state(got, name) == dict(expected[name]), name
        by_unit: dict[str, int] = defaultdict(int)
        for (unit, _), n in expected[name].items():
            by_unit[unit] += n
        total = CATALOGUE[name].field("total")
        assert {u: n for (u, d, f), n in got.items() if f == total} == dict(by_unit), name


# --- the unit tree as readers walk it -------------------------------------------------------------


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: a pure-Python loop is interrupted by the alarm."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_subtree_and_path_follow_the_current_parents() -> None:
    assert sorted(subtree_of(TREE, "QN")) == ["QN", "QN-HALONG", "QN-HALONG-THPT", "QN-VANDON"]
    assert sorted(subtree_of(TREE, "QN-HALONG")) == ["QN-HALONG", "QN-HALONG-THPT"]
    assert subtree_of(TREE, "QN-VANDON") == ["QN-VANDON"]
    assert path_of(TREE, "QN-HALONG-THPT") == SCHOOL
    assert path_of(TREE, "QN") == ["QN"]


def test_a_moved_unit_takes_its_subtree_to_its_new_parent() -> None:
    moved = {**TREE, "QN-HALONG": {"_id": "QN-HALONG", "parent_code": "QN-VANDON"}}
    assert sorted(subtree_of(moved, "QN-VANDON")) == ["QN-HALONG", "QN-HALONG-THPT", "QN-VANDON"]
    assert path_of(moved, "QN-HALONG-THPT") == ["QN", "QN-VANDON", "QN-HALONG", "QN-HALONG-THPT"]
    school_only = {**TREE, "QN-HALONG-THPT": {"_id": "QN-HALONG-THPT", "parent_code": "QN-VANDON"}}
    assert subtree_of(school_only, "QN-HALONG") == ["QN-HALONG"]
    assert sorted(subtree_of(school_only, "QN-VANDON")) == ["QN-HALONG-THPT", "QN-VANDON"]


def test_a_unit_not_in_the_tree_yet_is_its_own_subtree_and_has_no_path() -> None:
    assert subtree_of(TREE, "QN-COTO") == ["QN-COTO"]
    assert path_of(TREE, "QN-COTO") == []


@pytest.mark.parametrize(
    ("parents", "code", "below", "path"),
    [
        # Two units each other's parent.
        ({"QN": None, "QN-A": "QN-B", "QN-B": "QN-A"}, "QN-A", ["QN-A", "QN-B"], ["QN-B", "QN-A"]),
        # The root pulled into a loop.
        ({"QN": "QN-HALONG", "QN-HALONG": "QN"}, "QN", ["QN", "QN-HALONG"], ["QN-HALONG", "QN"]),
        # A unit its own parent.
        ({"QN": None, "QN-A": "QN-A"}, "QN-A", ["QN-A"], ["QN-A"]),
    ],
)
def test_a_cycle_in_bad_data_does_not_hang_the_tree_walks(
    parents: dict[str, str | None], code: str, below: list[str], path: list[str]
) -> None:
    tree = tree_of(parents)
    with deadline(2.0):
        assert sorted(subtree_of(tree, code)) == below
        assert path_of(tree, code) == path
        for other in tree:
            walked = subtree_of(tree, other)
            assert len(walked) == len(set(walked))
            assert path_of(tree, other)[-1] == other


# --- read-side arithmetic -----------------------------------------------------------------------


def test_window_days_count_today_and_are_capped_to_the_window() -> None:
    start, end = date(2025, 7, 1), date(2025, 7, 30)
    assert window_days(start, end, date(2025, 6, 20)) == (0, 30)
    assert window_days(start, end, date(2025, 7, 1)) == (1, 30)
    assert window_days(start, end, date(2025, 7, 15)) == (15, 30)
    assert window_days(start, end, date(2025, 12, 1)) == (30, 30)


def test_projection_extrapolates_dated_indicators_only() -> None:
    assert projected(140, CATALOGUE["courses"], 15, 30) == 280.0
    assert projected(7, CATALOGUE["courses"], 0, 30) == 0.0
    assert projected(55, CATALOGUE["teams"], 3, 90) == 55.0


def test_weekly_series_starts_on_monday_and_fills_empty_weeks() -> None:
    # Rows of several units, as counters_in_range returns them for a subtree.
    docs = [
        {"unit": "QN-HALONG", "day": "2025-07-02", "c": {"online_applications_l3": 2, "online_applications_total": 2}},
        {"unit": "QN-VANDON", "day": "2025-07-06", "c": {"online_applications_l4": 1, "online_applications_total": 1}},
        {"unit": "QN-HALONG", "day": "2025-07-21", "c": {"online_applications_l3": 5, "online_applications_total": 5}},
        {"unit": "QN-HALONG", "day": STATE_DAY, "c": {"teams_total": 9}},
    ]
    points = series(docs, CATALOGUE["online_applications"], Interval.week, date(2025, 7, 2), date(2025, 7, 21))
    assert [(p.start, p.value, p.by) for p in points] == [
        (date(2025, 6, 30), 3, {"l3": 2, "l4": 1}),
        (date(2025, 7, 7), 0, {"l3": 0, "l4": 0}),
        (date(2025, 7, 14), 0, {"l3": 0, "l4": 0}),
        (date(2025, 7, 21), 5, {"l3": 5, "l4": 0}),
    ]
    assert bucket_start(date(2025, 7, 6), Interval.week) == date(2025, 6, 30)


def test_add_up_keeps_state_apart_from_dated_counters_and_sums_units() -> None:
    t = add_up(
        [
            {"unit": "QN-HALONG", "day": STATE_DAY, "c": {"volunteers": 3}},
            {"unit": "QN-VANDON", "day": STATE_DAY, "c": {"volunteers": 2}},
            {"unit": "QN-HALONG", "day": "2025-07-01", "c": {"volunteers": 99, "people_supported": 4}},
            {"unit": "QN-VANDON", "day": "2025-07-02", "c": {"people_supported": 6}},
        ]
    )
    assert t.of(CATALOGUE["volunteers"]) == {"total": 5}
    assert t.of(CATALOGUE["people_supported"]) == {"total": 10}


def test_volunteer_events_of_contract_v1_and_v2_count_the_same(ev) -> None:
    v1 = ev.volunteer("V1", HALONG, roles=("student",), skills=("it",))
    payload = reg.VolunteerRegisteredV2(
        volunteer_id="V1",
        unit_code="QN-HALONG",
        unit_path=HALONG,
        roles=["student"],
        skills=["it"],
        age_band=AgeBand.from_16_to_30,
    )
    v2 = make_event(reg.VOLUNTEER_REGISTERED_V2, payload, source="/registry", key="V1")
    assert increments(v1.payload()) == increments(v2.payload())
    assert increments(v2.payload())["QN-HALONG|state"]["volunteers_by_skill_it"] == 1
