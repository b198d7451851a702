"""The scale part's table (bench/scale.py) without running it: each of the issue's targets is marked met
or missed from the measured figures, and a replay stopped at its budget is reported as partial."""

from __future__ import annotations

from typing import Any

import httpx

from bench.scale import OutboxSampler, notes, rows


def _run(**over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "scale": 10.0,
        "concurrency": 16,
        "plan": {"visits": 26600, "posts": 28880, "courses": 2640, "volunteers": 31531},
        "replay_finished": True,
        "replay_s": 600.0,
        "requests": 30000,
        "records_sent": 200000,
        "requests_per_s": 50.0,
        "records_per_s": 333.3,
        "catch_up_s": 4.0,
        "wall_s": 604.0,
        "events": 250000,
        "events_per_s": 413.9,
        "exactness": {
            "exact": True,
            "indicator_values_checked": 3591,
            "units_checked": 57,
            "targets_checked": 120,
            "n_units_differing": 0,
            "targets_differing": 0,
        },
        "exact_after_restart": True,
        "lag": {
            "max_seconds": 3.2,
            "samples": 120,
            "every_s": 5.0,
            "median_of_sample_max_seconds": 0.4,
            "per_group": {"metrics.projector": {"max_seconds": 3.2, "max_events": 900}},
        },
        "rss_max_mb": {"registry": 120.0, "visits": 151.0},
        "restart_to_ready_s": {"registry": 2.5, "metrics": 12.0},
        "cpu_s": {},
        "logs": "logs",
    }
    r.update(over)
    return r


def test_each_target_is_marked_met_or_missed_from_its_measured_value() -> None:
    table = {row["figure"]: row for row in rows(_run())}
    assert table["scale 10x: every indicator and target exact"]["value"] == "yes (met)"
    assert table["scale 10x: consumer lag, max over the run"]["value"] == "3.2 s (met)"
    assert table["scale 10x: RSS max, registry"]["value"] == "120.0 MB (met)"
    assert table["scale 10x: RSS max, visits"]["value"] == "151.0 MB (MISSED)"
    assert table["scale 10x: restart to ready, metrics"]["value"] == "12.0 s (MISSED)"
    assert table["scale 10x: restart to ready, registry"]["target"] == "< 10 s"
    missed = [n for n in notes(_run()) if "targets missed" in n]
    assert missed == ["scale 10x: targets missed: RSS max, visits; restart to ready, metrics"]


def test_a_replay_stopped_at_its_budget_is_partial_and_not_judged_exact() -> None:
    run = _run(
        replay_finished=False, requests_planned=90000, estimated_full_replay_s=1800.0, exactness=None, scale=100.0
    )
    run.pop("exactness")
    table = {row["figure"]: row for row in rows(run)}
    assert table["scale 100x: every indicator and target exact"]["value"] == "not judged (-)"
    assert "full replay ~30 min" in table["scale 100x: campaign through the APIs (wall time)"]["measured"]
    assert any("stopped at its budget" in n for n in notes(run))


def test_the_outbox_backlog_is_reported_with_the_service_that_held_the_most() -> None:
    run = _run(
        outbox={
            "max_pending_events": {"registry": 148115, "visits": 1200},
            "samples": 40,
            "failed_samples": 0,
            "peak_at_s": {"registry": 610.0, "visits": 900.0},
            "last_pending_at_s": {"registry": 700.0, "visits": 905.0},
        }
    )
    row = {r["figure"]: r for r in rows(run)}["scale 10x: outbox backlog, max over the run"]
    assert row["value"] == "148,115 events (registry)"
    assert "registry 148,115 (peak at 610.0 s), visits 1,200 (peak at 900.0 s)" in row["measured"]
    assert not any("outbox" in r["figure"] for r in rows(_run()))  # runs from before the sampler


class _Urls:
    def __init__(self, urls: dict[str, str]) -> None:
        self._urls = urls

    def urls(self) -> dict[str, str]:
        return self._urls


async def test_the_outbox_sampler_reads_each_services_gauge_and_keeps_the_largest() -> None:
    texts = iter(
        [
            'bridge_outbox_pending_documents{service="registry"} 120.0\n',
            'bridge_outbox_pending_documents{service="registry"} 7.0\n',
        ]
    )

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.params.get_list("name[]") == ["bridge_outbox_pending_documents"]
        if request.url.host == "visits":
            return httpx.Response(503)
        return httpx.Response(200, text=next(texts))

    sampler = OutboxSampler(_Urls({"registry": "http://registry", "visits": "http://visits"}))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await sampler.sample(client, 5.0)
        await sampler.sample(client, 10.0)
    assert sampler.max_pending == {"registry": 120.0}
    assert sampler.series == {"registry": [(5.0, 120.0), (10.0, 7.0)]}
    assert sampler.errors == 2


def test_the_lag_row_says_where_the_cpu_went_before_the_worst_sample() -> None:
    lag = {**_run()["lag"], "max_at_s": 610.0}
    run = _run(
        lag=lag,
        cpu_whole_run="CPU FerretDB 900.0 s (60%), registry 300.0 s (20%)",
        cpu_before_worst_lag="CPU FerretDB 70.0 s (61%), training 30.0 s (26%)",
    )
    table = {r["figure"]: r for r in rows(run)}
    assert table["scale 10x: consumer lag, max over the run"]["cpu"] == (
        "the 60 s before the worst sample (at 610.0 s): CPU FerretDB 70.0 s (61%), training 30.0 s (26%)"
    )
    assert table["scale 10x: campaign through the APIs (wall time)"]["cpu"].endswith("registry 300.0 s (20%)")
    earlier = {r["figure"]: r for r in rows(_run())}  # a run from before the ledger
    assert earlier["scale 10x: consumer lag, max over the run"]["cpu"].endswith(": -")
