"""Which ISO weeks the demo closes as the replay goes (scripts/simulator/closing.py), without infrastructure."""

from __future__ import annotations

from datetime import date

from scripts.simulator.closing import iso_week, weeks_ended_by


def test_a_week_is_closed_once_its_sunday_was_replayed_including_a_partial_first_week() -> None:
    first = date(2025, 7, 9)  # a Wednesday: the campaign starts mid-week
    assert weeks_ended_by(first, date(2025, 7, 12)) == []
    assert weeks_ended_by(first, date(2025, 7, 13)) == [("2025-W28", date(2025, 7, 7), date(2025, 7, 13))]
    assert [w for w, *_ in weeks_ended_by(first, date(2025, 7, 26))] == ["2025-W28", "2025-W29"]


def test_iso_weeks_cross_the_new_year_as_iso_8601_numbers_them() -> None:
    assert iso_week(date(2024, 12, 30)) == "2025-W01"
    assert iso_week(date(2026, 1, 1)) == "2026-W01"
    assert iso_week(date(2027, 1, 1)) == "2026-W53"
