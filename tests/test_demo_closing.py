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


async def test_a_week_waits_while_the_metrics_service_does_not_know_the_root_yet(monkeypatch) -> None:
    # The replay waits for visits and training to know the tree; the projector may apply the
    # province's creation a moment later, and its summary answers 404 until then.
    import httpx

    from scripts.simulator import closing

    monkeypatch.setattr(closing, "STABLE_SECONDS", 0.05)
    answers = [httpx.Response(404, json={"status": 404})] * 2 + [httpx.Response(200, json={"people": 5})] * 4
    asked: list[dict[str, str]] = []

    async def call(service: str, method: str, path: str, **kwargs: object) -> httpx.Response:
        assert (service, method, path) == ("metrics", "GET", "/v1/summary")
        assert kwargs["ok"] == (200, 404)
        asked.append(kwargs["params"])  # type: ignore[arg-type]
        return answers[len(asked) - 1]

    closer = closing.WeekCloser(call, "QN", date(2025, 7, 7), depth_of=lambda unit: 0)
    await closer._settled(date(2025, 7, 7), date(2025, 7, 13))
    assert len(asked) >= 4  # past both 404s, then the same figures twice
    assert asked[0] == {"unit": "QN", "from": "2025-07-07", "to": "2025-07-13"}
