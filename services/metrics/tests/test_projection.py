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

from metrics.projection import CATALOGUE, STATE_DAY, CounterSums, counter_id, increments
from metrics.repository import path_of, subtree_of
from metrics.schemas import Interval
from metrics.service import add_up, bucket_start, projected, series, window_days
from shared.contracts import registry as reg
from shared.contracts import visits as vis
from shared.envelope import Envelope

PROVINCE = ["QN"]
HALONG = ["QN", "QN-HALONG"]
VANDON = ["QN", "QN-VANDON"]
SCHOOL = ["QN", "QN-HALONG", "QN-HALONG-THPT"]
JULY = date(2025, 7, 1)

Key = tuple[str, str, str]  # (unit, day, field)


def totals(events: Iterable[Envelope]) -> dict[Key, int]:
    """Every event's increments added up, as ``(unit, day, field)``, zeros left out."""
    sums = CounterSums()
    for e in events:
        sums.add(increments(e.payload()))
    out: dict[Key, int] = {}
    for doc_id, fields in sums.docs.items():
        unit, _, day = doc_id.rpartition("|")
        out |= {(unit, day, f): v for f, v in fields.items() if v}
    return out


def rolled_up(sums: Mapping[Key, int], tree: Mapping[str, Mapping[str, Any]], unit: str, field: str) -> int:
    """What a reader shows for ``unit``: the field summed over the units now below it, all days."""
    below = set(subtree_of(tree, unit))
    return sum(v for (u, _, f), v in sums.items() if u in below and f == field)


def tree_of(parents: Mapping[str, str | None]) -> dict[str, dict[str, Any]]:
    return {code: {"_id": code, "parent_code": parent} for code, parent in parents.items()}


TREE = tree_of({"QN": None, "QN-HALONG": "QN", "QN-VANDON": "QN", "QN-HALONG-THPT": "QN-HALONG"})


# --- folding: one counter document per unit where it happened and day ----------------------------


def test_visit_counts_on_visited_on_at_its_own_unit_only(ev) -> None:
    f = ev.figures(HALONG, date(2025, 7, 3), households=1, people=4, vneid=2, l3=1, l4=3)
    assert increments(ev.visit("v1", f).payload()) == {
        "QN-HALONG|2025-07-03": {
            "households_visited": 1,
            "people_supported": 4,
            "vneid_installs": 2,
            "online_applications_l3": 1,
            "online_applications_l4": 3,
            "online_applications_total": 4,
        }
    }


def test_counter_ids_are_unit_and_day_and_current_state_uses_the_state_day() -> None:
    assert counter_id("QN-HALONG", "2025-07-03") == "QN-HALONG|2025-07-03"
    assert counter_id("QN-VANDON", STATE_DAY) == "QN-VANDON|state"


def test_a_school_visit_is_stored_at_the_school_and_read_for_its_ward_and_province(ev) -> None:
    got = totals([ev.visit("v1", ev.figures(SCHOOL, date(2025, 7, 3), people=5))])
    assert set(got) == {("QN-HALONG-THPT", "2025-07-03", f) for f in ("households_visited", "people_supported")}
    assert rolled_up(got, TREE, "QN-HALONG-THPT", "people_supported") == 5
    assert rolled_up(got, TREE, "QN-HALONG", "people_supported") == 5
    assert rolled_up(got, TREE, "QN", "people_supported") == 5
    assert rolled_up(got, TREE, "QN-VANDON", "people_supported") == 0


def test_correction_moves_figures_to_the_new_day_and_unit(ev) -> None:
    old = ev.figures(HALONG, date(2025, 7, 3), people=4)
    new = ev.figures(VANDON, date(2025, 7, 5), people=6)
    got = totals([ev.visit("v1", old), ev.visit_corrected("v1", old, new)])
    assert got == {
        ("QN-VANDON", "2025-07-05", "households_visited"): 1,
        ("QN-VANDON", "2025-07-05", "people_supported"): 6,
    }
    # The correction alone takes the old figures out where they were counted.
    alone = increments(ev.visit_corrected("v1", old, new).payload())
    assert alone["QN-HALONG|2025-07-03"] == {"households_visited": -1, "people_supported": -4}


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
    assert totals(events) == {("QN-VANDON", STATE_DAY, "volunteers"): 1}


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
        ("QN-VANDON", "2025-07-09", "course_completions"): 27,
    }


def test_roster_completions_count_one_by_one_on_ends_on(ev) -> None:
    course = ev.course("K3", SCHOOL, "youth_children", date(2025, 7, 8), date(2025, 7, 10))
    events = [ev.participant_completed(course, "p1", 0), ev.participant_completed(course, "p2", 1)]
    assert totals(events) == {("QN-HALONG-THPT", "2025-07-10", "course_completions"): 2}


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


def test_counter_sums_add_only_the_documents_asked_for() -> None:
    sums = CounterSums()
    halong, vandon = counter_id("QN-HALONG", "2025-07-01"), counter_id("QN-VANDON", "2025-07-01")
    sums.add({halong: {"people_supported": 2}})
    sums.add({halong: {"people_supported": 3}, vandon: {"people_supported": 9}})
    sums.add({vandon: {"people_supported": 1}}, only={halong})
    assert sums.docs == {halong: {"people_supported": 5}, vandon: {"people_supported": 9}}


# --- property: visits with corrections and voids --------------------------------------------------

visit_figures = st.builds(
    lambda unit, day, hh, people, vneid, l3, l4: vis.VisitFigures(
        unit_code=unit[-1],
        unit_path=unit,
        visited_on=JULY + timedelta(days=day),
        households=hh,
        people=vis.People(total=people),
        services=vis.Services(vneid_installed=vneid, online_applications_l3=l3, online_applications_l4=l4),
    ),
    st.sampled_from([HALONG, VANDON, SCHOOL, PROVINCE]),
    st.integers(0, 5),
    st.integers(0, 1),
    st.integers(0, 9),
    st.integers(0, 5),
    st.integers(0, 5),
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
    got = totals(events)
    assert got == {k: v for k, v in expected.items() if v}
    # Read through the tree, the province sees every visit that was not voided.
    people = sum(v for (_, _, f), v in expected.items() if f == "people_supported")
    assert rolled_up(got, TREE, "QN", "people_supported") == people


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
