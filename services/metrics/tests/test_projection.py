"""The pure folding rules (events -> increments) and the watermark planning, without infrastructure."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from metrics.projection import ALL_DAY, CATALOGUE, STATE_DAY, Increment, fold, net, plan_updates
from metrics.schemas import Interval
from metrics.service import add_up, bucket_start, projected, series, window_days
from shared.contracts import visits as vis

HALONG = ["QN", "QN-HALONG"]
VANDON = ["QN", "QN-VANDON"]
JULY = date(2025, 7, 1)


def totals(increments: list[Increment]) -> dict[tuple[str, str, str], int]:
    out: dict[tuple[str, str, str], int] = defaultdict(int)
    for i in increments:
        out[(i.unit, i.day, i.field)] += i.delta
    return {k: v for k, v in out.items() if v}


def test_visit_counts_on_visited_on_for_every_ancestor_and_all_time(ev) -> None:
    f = ev.figures(HALONG, date(2025, 7, 3), households=1, people=4, vneid=2, l3=1, l4=3)
    got = totals(fold(ev.visit("v1", f).payload()))
    for unit in HALONG:
        for day in ("2025-07-03", ALL_DAY):
            assert got[(unit, day, "households_visited")] == 1
            assert got[(unit, day, "people_supported")] == 4
            assert got[(unit, day, "vneid_installs")] == 2
            assert got[(unit, day, "online_applications_l3")] == 1
            assert got[(unit, day, "online_applications_l4")] == 3
            assert got[(unit, day, "online_applications_total")] == 4
    assert not any(k[0] == "QN-VANDON" for k in got)


def test_correction_moves_figures_to_the_new_day_and_unit(ev) -> None:
    old = ev.figures(HALONG, date(2025, 7, 3), people=4)
    new = ev.figures(VANDON, date(2025, 7, 5), people=6)
    got = totals(fold(ev.visit("v1", old).payload()) + fold(ev.visit_corrected("v1", old, new).payload()))
    assert got[("QN-VANDON", "2025-07-05", "people_supported")] == 6
    assert got[("QN", ALL_DAY, "people_supported")] == 6
    assert ("QN-HALONG", "2025-07-03", "people_supported") not in got


def test_void_removes_exactly_what_the_visit_added(ev) -> None:
    f = ev.figures(HALONG, date(2025, 7, 3), people=4, vneid=1)
    assert totals(fold(ev.visit("v1", f).payload()) + fold(ev.visit_voided("v1", f).payload())) == {}


def test_team_kind_change_and_deactivation_keep_current_state(ev) -> None:
    events = [
        ev.team("T1", "mobile", HALONG),
        ev.team_moved("T1", "campaign", VANDON, "mobile", HALONG),
        ev.team("T2", "permanent", HALONG),
        ev.team_deactivated("T2", "permanent", HALONG),
    ]
    got = totals([i for e in events for i in fold(e.payload())])
    assert got == {
        ("QN", STATE_DAY, "teams_campaign"): 1,
        ("QN", STATE_DAY, "teams_total"): 1,
        ("QN-VANDON", STATE_DAY, "teams_campaign"): 1,
        ("QN-VANDON", STATE_DAY, "teams_total"): 1,
    }


def test_volunteer_leaving_and_moving(ev) -> None:
    events = [
        ev.volunteer("V1", HALONG),
        ev.volunteer("V2", HALONG),
        ev.volunteer_left("V2", HALONG),
        ev.volunteer_moved("V1", VANDON, HALONG),
    ]
    got = totals([i for e in events for i in fold(e.payload())])
    assert got == {("QN", STATE_DAY, "volunteers"): 1, ("QN-VANDON", STATE_DAY, "volunteers"): 1}


def test_head_count_course_participants_follow_changes_and_completions_use_ends_on(ev) -> None:
    course = ev.course("K1", VANDON, "elderly_middle_aged", date(2025, 7, 6), date(2025, 7, 9))
    events = [
        ev.scheduled(course),
        ev.session(course, "s1", date(2025, 7, 6), 25, 0, 25),
        ev.session(course, "s2", date(2025, 7, 7), 20, 25, 25),
        ev.completed(course, (25, 30), (0, 27)),
    ]
    got = totals([i for e in events for i in fold(e.payload())])
    assert got[("QN-VANDON", "2025-07-06", "courses_elderly_middle_aged")] == 1
    assert got[("QN-VANDON", "2025-07-06", "course_participants_elderly_middle_aged")] == 30
    assert got[("QN", "2025-07-06", "course_participants_total")] == 30
    assert got[("QN-VANDON", "2025-07-09", "course_completions")] == 27
    assert ("QN-VANDON", "2025-07-06", "course_completions") not in got


def test_cancelled_roster_course_stops_counting(ev) -> None:
    course = ev.course("K2", HALONG, "general", date(2025, 7, 8), date(2025, 7, 10))
    events = [ev.scheduled(course), ev.enrolled(course, "p1", 0), ev.enrolled(course, "p2", 1), ev.cancelled(course, 2)]
    assert totals([i for e in events for i in fold(e.payload())]) == {}


def test_outreach_post_and_void(ev) -> None:
    got = totals(fold(ev.post("P1", HALONG, "visual", JULY).payload()))
    assert got[("QN-HALONG", "2025-07-01", "outreach_posts_visual")] == 1
    assert got[("QN", ALL_DAY, "outreach_posts_total")] == 1
    voided = fold(ev.post_voided("P1", HALONG, "visual", JULY).payload())
    assert totals(fold(ev.post("P1", HALONG, "visual", JULY).payload()) + voided) == {}


def test_unit_and_campaign_events_move_no_counter(ev) -> None:
    assert fold(ev.unit(HALONG).payload()) == []
    assert fold(ev.campaign("C", JULY, JULY, [("courses", "QN", 3)]).payload()) == []


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
    st.sampled_from([HALONG, VANDON, ["QN"]]),
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
    increments: list[Increment] = []
    expected: dict[tuple[str, str, str], int] = defaultdict(int)
    for n, (recorded, corrections, voided) in enumerate(histories):
        vid = f"v{n}"
        events = [ev.visit(vid, recorded)]
        current = recorded
        for fix in corrections:
            events.append(ev.visit_corrected(vid, current, fix))
            current = fix
        if voided:
            events.append(ev.visit_voided(vid, current))
        increments += [i for e in events for i in fold(e.payload())]
        if not voided:
            for unit in current.unit_path:
                for day in (current.visited_on.isoformat(), ALL_DAY):
                    expected[(unit, day, "households_visited")] += current.households
                    expected[(unit, day, "people_supported")] += current.people.total
                    expected[(unit, day, "vneid_installs")] += current.services.vneid_installed
                    expected[(unit, day, "online_applications_l3")] += current.services.online_applications_l3
                    expected[(unit, day, "online_applications_l4")] += current.services.online_applications_l4
                    expected[(unit, day, "online_applications_total")] += (
                        current.services.online_applications_l3 + current.services.online_applications_l4
                    )
    assert totals(increments) == {k: v for k, v in expected.items() if v}


# --- property: watermark planning makes any redelivery harmless ----------------------------------

offsets_and_increments = st.lists(
    st.tuples(st.sampled_from(["A|d", "B|d", "C|d"]), st.sampled_from(["x", "y"]), st.integers(-3, 5)),
    min_size=1,
    max_size=40,
)


Store = dict[str, dict[str, int]]


def replay(partition: list[tuple[int, Increment]], cuts: list[int], store: Store, marks: dict[str, int | None]) -> None:
    """Apply a partition in batches cut at ``cuts``, as the projector does against Mongo."""
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(partition)), len(partition)]
    for lo, hi in itertools.pairwise(bounds):
        batch = partition[lo:hi]
        if not batch:
            continue
        batch_max = batch[-1][0]
        for doc, fields in plan_updates(batch, marks, batch_max).items():
            for f, v in fields.items():
                store[doc][f] = store[doc].get(f, 0) + v
            marks[doc] = batch_max


def cleaned(store: Store) -> Store:
    return {d: {f: v for f, v in fs.items() if v} for d, fs in store.items() if any(fs.values())}


@settings(max_examples=200, deadline=None)
@given(offsets_and_increments, st.lists(st.integers(0, 40), max_size=4), st.lists(st.integers(0, 40), max_size=4))
def test_redelivered_batches_cut_differently_apply_each_event_once(rows, first_cuts, second_cuts) -> None:
    partition = [
        (offset, Increment(doc.split("|")[0], 1, "d", field, delta)) for offset, (doc, field, delta) in enumerate(rows)
    ]
    once = net(inc for _, inc in partition)
    # A crash after writing the batches up to some offset, before committing any of them; Kafka
    # then redelivers the whole partition with other cuts onto the same store.
    crash_at = max([c for c in first_cuts if c <= len(partition)], default=len(partition))
    store: Store = defaultdict(dict)
    marks: dict[str, int | None] = {}
    replay(partition[:crash_at], first_cuts, store, marks)
    replay(partition, second_cuts, store, marks)
    assert cleaned(store) == once


def test_document_already_past_the_batch_takes_nothing() -> None:
    inc = Increment("QN", 1, "2025-07-01", "households_visited", 1)
    assert plan_updates([(5, inc)], {inc.doc_id: 9}, 9) == {}
    assert plan_updates([(5, inc), (7, inc)], {inc.doc_id: 5}, 7) == {"QN": {"days.2025-07-01.households_visited": 1}}


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
    docs = [
        {"day": "2025-07-02", "c": {"online_applications_l3": 2, "online_applications_total": 2}},  # Wednesday
        {"day": "2025-07-06", "c": {"online_applications_l4": 1, "online_applications_total": 1}},  # Sunday
        {"day": "2025-07-21", "c": {"online_applications_l3": 5, "online_applications_total": 5}},
        {"day": STATE_DAY, "c": {"teams_total": 9}},
    ]
    points = series(docs, CATALOGUE["online_applications"], Interval.week, date(2025, 7, 2), date(2025, 7, 21))
    assert [(p.start, p.value, p.by) for p in points] == [
        (date(2025, 6, 30), 3, {"l3": 2, "l4": 1}),
        (date(2025, 7, 7), 0, {"l3": 0, "l4": 0}),
        (date(2025, 7, 14), 0, {"l3": 0, "l4": 0}),
        (date(2025, 7, 21), 5, {"l3": 5, "l4": 0}),
    ]
    assert bucket_start(date(2025, 7, 6), Interval.week) == date(2025, 6, 30)


def test_add_up_keeps_state_apart_from_dated_counters() -> None:
    t = add_up([{"day": STATE_DAY, "c": {"volunteers": 3}}, {"day": "2025-07-01", "c": {"volunteers": 99}}])
    assert t.of(CATALOGUE["volunteers"]) == {"total": 3}
