"""``make bench-scale``: the seven-week campaign at 10x and 100x, through the public APIs only.

Each scale gets a system of its own, started as ``make run`` starts it (:class:`scripts.run.System`:
Kafka, FerretDB and the four services as processes, on free ports in a temp dir). The demo's driver
replays the plan while samplers record every service's RSS (each second) and every consumer group's
lag (every few seconds: events behind, and how long the oldest of them has waited in Kafka). At the
end every indicator of every unit and every campaign target is compared with the plan's ground
truth; then each service is stopped and started again on that history, and timed to ready.

A replay that outlasts its budget (``--budget-minutes``) is stopped: the figures then cover the part
replayed, with the full run's time extrapolated from its request rate, and exactness is not judged.

    make bench-scale                                 # 10x, then 100x (over an hour on 2 cores)
    .venv/bin/python -m bench.scale --scales 10 --budget-minutes 45

Results go into ``bench/results.json`` (key ``scale``) and rows of ``bench/results.md``, beside the
figures of the last ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.cpu import CpuTimeline, describe, ledger
from bench.parts import prom_sum, rss_mb
from scripts.demo import fetch_summary, wait_for_metrics
from scripts.run import SERVICES, RunConfig, System
from scripts.simulator.driver import Api, DemoError, Progress, Replay, estimate_requests
from scripts.simulator.plan import build_plan
from scripts.simulator.truth import campaign_actuals, flatten, tally
from shared.infra import free_port
from shared.topics import load_topics

HERE = Path(__file__).resolve().parent
DEFAULT_SCALES = (10.0, 100.0)
SEED = 7
CONCURRENCY = 16
RSS_EVERY_S = 1.0
LAG_EVERY_S = 5.0
# The targets for the province-wide campaign.
LAG_TARGET_S = 10.0
RSS_TARGET_MB = 150.0
# The lag row says where the CPU went in this window before the worst lag sample.
CPU_WINDOW_S = 60.0
READY_TARGET_S = 10.0
DEFAULT_BUDGET_MIN = 120.0


def now() -> float:
    return time.monotonic()


# --- samplers -----------------------------------------------------------------------------------------


@dataclass
class RssSampler:
    """The largest RSS of each service process seen, sampled every second (replicas restarted keep their name)."""

    system: System
    max_mb: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def sample(self, t: float) -> None:
        for name, svc in list(self.system.services.items()):
            mb = rss_mb(svc.proc.pid)
            if mb:
                self.max_mb[name] = max(self.max_mb.get(name, 0.0), mb)
                self.series.setdefault(name, []).append((round(t, 1), mb))

    async def run(self, t0: float) -> None:
        while True:
            self.sample(now() - t0)
            await asyncio.sleep(RSS_EVERY_S)


OUTBOX_GAUGE = "bridge_outbox_pending_documents"


@dataclass
class OutboxSampler:
    """What each service's relay found waiting in its outbox at its last pass (its
    ``bridge_outbox_pending_documents`` gauge), every few seconds. Consumer lag starts only once an
    event is in Kafka; these are the events not there yet."""

    system: System
    max_pending: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    errors: int = 0

    async def sample(self, client: httpx.AsyncClient, t: float) -> None:
        for name, url in self.system.urls().items():
            try:
                r = await client.get(url + "/metrics", params={"name[]": [OUTBOX_GAUGE]})
                r.raise_for_status()
            except httpx.HTTPError:  # a service restarting: the next sample counts
                self.errors += 1
                continue
            pending = prom_sum(r.text, OUTBOX_GAUGE)
            self.max_pending[name] = max(self.max_pending.get(name, 0.0), pending)
            self.series.setdefault(name, []).append((round(t, 1), pending))

    async def run(self, t0: float) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                started = now()
                await self.sample(client, started - t0)
                await asyncio.sleep(max(0.0, LAG_EVERY_S - (now() - started)))


@dataclass
class LagSampler:
    """Every consumer group's lag: events behind (end offsets minus committed), and seconds behind
    (now minus the Kafka timestamp of the oldest event not yet committed, over its partitions)."""

    bootstrap: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0

    async def run(self, t0: float) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        ends = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        peek = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=64 * 1024,
        )
        await admin.start()
        await ends.start()
        await peek.start()
        try:
            while True:
                started = now()
                try:
                    self.samples.append(await self.sample(admin, ends, peek, started - t0))
                except Exception:  # a group rebalancing or a broker busy: the next sample counts
                    self.errors += 1
                await asyncio.sleep(max(0.0, LAG_EVERY_S - (now() - started)))
        finally:
            await peek.stop()
            await ends.stop()
            await admin.close()

    async def sample(
        self, admin: AIOKafkaAdminClient, ends: AIOKafkaConsumer, peek: AIOKafkaConsumer, t: float
    ) -> dict[str, Any]:
        groups = sorted(g[0] for g in await admin.list_consumer_groups())
        out: dict[str, Any] = {"t": round(t, 1), "groups": {}}
        for group in groups:
            committed = {tp: m.offset for tp, m in (await admin.list_consumer_group_offsets(group)).items()}
            if not committed:
                continue
            end = await ends.end_offsets(list(committed))
            behind = {tp: end[tp] - max(off, 0) for tp, off in committed.items() if end[tp] > max(off, 0)}
            seconds = 0.0
            if behind:
                peek.assign(list(behind))
                for tp in behind:
                    peek.seek(tp, max(committed[tp], 0))
                batch = await peek.getmany(*behind, timeout_ms=3000)
                wall_ms = time.time() * 1000
                oldest = [records[0].timestamp for records in batch.values() if records]
                if oldest:
                    seconds = max(0.0, (wall_ms - min(oldest)) / 1000)
            out["groups"][group] = {"events": sum(behind.values()), "seconds": round(seconds, 2)}
        out["max_seconds"] = max((g["seconds"] for g in out["groups"].values()), default=0.0)
        out["max_events"] = max((g["events"] for g in out["groups"].values()), default=0)
        return out


async def topic_end_total(bootstrap: str) -> int:
    """Events in every topic of the system so far (the sum of end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [
            TopicPartition(t.name, p)
            for t in load_topics()
            for p in sorted(consumer.partitions_for_topic(t.name) or ())
        ]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


# --- one scale ----------------------------------------------------------------------------------------


def _config(data_dir: Path) -> RunConfig:
    return RunConfig(
        data_dir=data_dir,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        mongo_port=free_port(),
        ports={s.name: free_port() for s in SERVICES},
        echo_logs=False,
    )


async def _ready_after(system: System, name: str, client: httpx.AsyncClient, timeout: float = 300.0) -> float:
    """Stop ``name`` (SIGTERM, as a deploy would), start it again and time it from spawn to /readyz 200."""
    old = system.services[name]
    old.terminate()
    await asyncio.to_thread(old.wait, 30.0)
    svc = system.start_replica(name, 1)
    t0 = now()
    while now() - t0 < timeout:
        if not svc.alive():
            raise RuntimeError(f"{name} exited after its restart; see {svc.log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(f"{svc.url}/readyz", timeout=2.0)).status_code == 200:
                return now() - t0
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{name} not ready {timeout:.0f} s after its restart")


async def _exactness(plan: Any, truth: Any, metrics: httpx.AsyncClient) -> dict[str, Any]:
    """Every unit's summary and every campaign target's actual, against the ground truth."""
    units = [u.code for u in plan.units]
    wrong_units: dict[str, dict[str, tuple[int, int]]] = {}
    for unit in units:
        want = flatten(truth.summary(unit))
        got = await fetch_summary(metrics, unit)
        diff = {k: (v, got.get(k, 0)) for k, v in want.items() if got.get(k, 0) != v}
        if diff:
            wrong_units[unit] = diff
    actuals = campaign_actuals(plan, truth)
    targets = wrong_targets = 0
    for c in plan.campaigns:
        resp = await metrics.get(f"/v1/campaigns/{c.code}/progress")
        resp.raise_for_status()
        shown = {(t["indicator"], t["unit_code"]): (t["target"], t["actual"]) for t in resp.json()["targets"]}
        wanted = {(t["indicator"], t["unit_code"]): t["value"] for t in plan.targets_now(c)}
        targets += len(wanted)
        wrong_targets += len(set(shown) - set(wanted))
        wrong_targets += sum(1 for k, v in wanted.items() if shown.get(k) != (v, actuals[c.code].get(k)))
    indicators = len(flatten({}))
    return {
        "units_checked": len(units),
        "indicator_values_checked": len(units) * indicators,
        "units_differing": {u: {k: list(v) for k, v in d.items()} for u, d in list(wrong_units.items())[:5]},
        "n_units_differing": len(wrong_units),
        "targets_checked": targets,
        "targets_differing": wrong_targets,
        "exact": not wrong_units and not wrong_targets,
    }


async def run_scale(scale: float, budget_s: float, *, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """The campaign at ``scale`` on a system of its own; every figure of the scale part."""
    out: dict[str, Any] = {"scale": scale, "seed": SEED, "concurrency": concurrency}
    t = now()
    plan = build_plan(SEED, scale)
    truth = tally(plan)
    out["plan_s"] = round(now() - t, 1)
    out["plan"] = {
        "teams": len(plan.teams),
        "volunteers": len(plan.volunteers),
        "visits": len(plan.visits),
        "posts": len(plan.posts),
        "courses": len(plan.courses),
    }
    data_dir = Path(tempfile.mkdtemp(prefix=f"bridge-scale-{scale:g}x-"))
    system = System(_config(data_dir))
    out["logs"] = str(data_dir / "logs")
    t = now()
    await asyncio.to_thread(system.start)
    out["system_start_s"] = round(now() - t, 1)
    token = system.admin_token(hours=24)
    rss = RssSampler(system)
    lag = LagSampler(system.bootstrap)
    outbox = OutboxSampler(system)
    cpu = CpuTimeline(LAG_EVERY_S)
    whole = ledger().mark()
    t0 = now()
    samplers = [asyncio.create_task(x.run(t0)) for x in (rss, lag, outbox, cpu)]
    # A loaded machine answers a 250-row roster upload in tens of seconds: wait rather than resend.
    api = Api(system.urls(), token, concurrency, Progress(1, enabled=False), timeout=300.0)
    try:
        events0 = await topic_end_total(system.bootstrap)
        phases: list[dict[str, Any]] = []
        out["phases"] = phases
        out["load_average_at_start"] = os.getloadavg()

        async def reached(phase: str) -> None:
            # Where the replay's time goes: seconds and requests at the end of each phase.
            phases.append({"phase": phase, "t": round(now() - t, 1), "requests": api.stats.requests})

        replay = Replay(plan, api, reached)
        t = now()
        finished = True
        try:
            await asyncio.wait_for(replay.run(), budget_s)
        except TimeoutError:
            finished = False
        except (DemoError, httpx.HTTPError) as exc:  # what was measured up to the failure still counts
            finished = False
            out["replay_error"] = f"{type(exc).__name__}: {exc}"[:500]
        replay_s = now() - t
        out["replay_finished"] = finished
        out["replay_s"] = round(replay_s, 1)
        out["requests"] = api.stats.requests
        out["records_sent"] = api.stats.batch_items
        out["load_average_at_end"] = os.getloadavg()
        out["requests_per_s"] = round(api.stats.requests / replay_s, 1)
        out["records_per_s"] = round(api.stats.batch_items / replay_s, 1)
        metrics = api.clients["metrics"]
        if finished:
            t = now()
            expected = flatten(truth.summary())
            await wait_for_metrics(metrics, expected, timeout=600)
            out["catch_up_s"] = round(now() - t, 1)
        else:
            planned = estimate_requests(plan)
            out["requests_planned"] = planned
            out["estimated_full_replay_s"] = round(replay_s * planned / max(1, api.stats.requests), 0)
            # Let the consumers finish what was sent, so lag and restart see the same history.
            t = now()
            await _until_lag_zero(lag, timeout=300)
            out["catch_up_s"] = round(now() - t, 1)
        wall = now() - t0
        events = await topic_end_total(system.bootstrap) - events0
        out["wall_s"] = round(wall, 1)
        out["events"] = events
        out["events_per_s"] = round(events / wall, 1)
        end = ledger().mark()
        spent = ledger().spent(whole, end)
        out["cpu_s"] = {name: round(spent.get(name, 0.0), 1) for name in system.services}
        out["cpu_whole_run"] = describe(spent, end.t - whole.t)
        if finished:
            out["exactness"] = await _exactness(plan, truth, metrics)
        rss.sample(now() - t0)
        out["rss_max_mb_during_run"] = dict(rss.max_mb)
        # Restart each service on the history, one at a time, as a rolling deploy would.
        ready: dict[str, float] = {}
        async with httpx.AsyncClient() as client:
            for s in SERVICES:
                if s.name in system.services:
                    ready[s.name] = round(await _ready_after(system, s.name, client), 2)
        out["restart_to_ready_s"] = ready
        if finished:
            # Restarted on its history, the metrics service still answers the ground truth.
            got = await wait_for_metrics(metrics, flatten(truth.summary()), timeout=120)
            out["exact_after_restart"] = got == flatten(truth.summary())
        await asyncio.sleep(2 * RSS_EVERY_S)
    finally:
        for task in samplers:
            task.cancel()
        for task in samplers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await api.close()
        await asyncio.to_thread(system.stop)
        shutil.rmtree(data_dir / "kafka", ignore_errors=True)
        shutil.rmtree(data_dir / "ferretdb", ignore_errors=True)
    out["rss_max_mb"] = dict(rss.max_mb)
    out["rss_series_every_s"] = RSS_EVERY_S
    out["lag"] = _lag_summary(lag)
    if (worst_at := out["lag"]["max_at_s"]) is not None:
        out["cpu_before_worst_lag"] = cpu.window(worst_at - CPU_WINDOW_S, worst_at)
    out["outbox"] = {
        "max_pending_events": {k: int(v) for k, v in sorted(outbox.max_pending.items())},
        "samples": len(next(iter(outbox.series.values()), [])),
        "failed_samples": outbox.errors,
        # when each backlog peaked, and when it was last above zero (seconds from the start)
        "peak_at_s": {k: max(v, key=lambda p: p[1])[0] for k, v in sorted(outbox.series.items()) if v},
        "last_pending_at_s": {
            k: max((t for t, n in v if n > 0), default=None) for k, v in sorted(outbox.series.items())
        },
    }
    return out


async def _until_lag_zero(lag: LagSampler, timeout: float) -> None:
    deadline = now() + timeout
    seen = len(lag.samples)
    while now() < deadline:
        if len(lag.samples) > seen and lag.samples[-1]["max_events"] == 0:
            return
        await asyncio.sleep(1.0)


def _lag_summary(lag: LagSampler) -> dict[str, Any]:
    samples = lag.samples
    worst = max(samples, key=lambda s: s["max_seconds"], default=None)
    per_group: dict[str, dict[str, float]] = {}
    for s in samples:
        for g, v in s["groups"].items():
            row = per_group.setdefault(g, {"max_seconds": 0.0, "max_events": 0})
            row["max_seconds"] = max(row["max_seconds"], v["seconds"])
            row["max_events"] = max(row["max_events"], v["events"])
    return {
        "every_s": LAG_EVERY_S,
        "samples": len(samples),
        "failed_samples": lag.errors,
        "max_seconds": worst["max_seconds"] if worst else None,
        "max_at_s": worst["t"] if worst else None,
        "median_of_sample_max_seconds": (
            round(statistics.median(s["max_seconds"] for s in samples), 2) if samples else None
        ),
        "per_group": per_group,
        "series": [(s["t"], s["max_seconds"], s["max_events"]) for s in samples],
    }


# --- the part: rows for results.md --------------------------------------------------------------------


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows for one scale, each target marked met or missed."""
    x = f"scale {r['scale']:g}x"
    out: list[dict[str, Any]] = []

    def row(figure: str, value: Any, target: str, baseline: str, measured: str, cpu: str = "-") -> None:
        out.append(
            {
                "figure": f"{x}: {figure}",
                "value": value,
                "target": target,
                "baseline": baseline,
                "measured": measured,
                "cpu": cpu,
            }
        )

    if "error" in r:
        row("campaign through the APIs", "failed", "-", "-", r["error"])
        return out
    p = r["plan"]
    done = r["replay_finished"]
    replayed = (
        f"{r['requests']:,} requests, {r['records_sent']:,} batch items in {r['replay_s']} s"
        if done
        else f"{'failed' if r.get('replay_error') else 'stopped'} after {r['replay_s']} s:"
        f" {r['requests']:,} of ~{r['requests_planned']:,} requests;"
        f" full replay ~{r['estimated_full_replay_s'] / 60:.0f} min at this rate"
    )
    row(
        "campaign through the APIs (wall time)",
        f"{r['wall_s']} s",
        "-",
        f"{p['visits']:,} visits, {p['posts']:,} posts, {p['courses']:,} courses, {p['volunteers']:,} volunteers",
        f"{replayed}; then {r['catch_up_s']} s until metrics caught up",
        cpu=f"the whole run: {r.get('cpu_whole_run', '-')}",
    )
    row(
        "requests/s", r["requests_per_s"], "-", f"concurrency {r['concurrency']}", f"{r['records_per_s']} batch items/s"
    )
    row("events/s", r["events_per_s"], "-", "-", f"{r['events']:,} events published over {r['wall_s']} s")
    ex = r.get("exactness")
    if ex is not None:
        row(
            "every indicator and target exact",
            f"{'yes' if ex['exact'] else 'no'} ({_mark(ex['exact'])})",
            "exact",
            "ground truth",
            f"{ex['indicator_values_checked']:,} values of {ex['units_checked']} units,"
            f" {ex['targets_checked']} targets; {ex['n_units_differing']} units and"
            f" {ex['targets_differing']} targets differ; after restarts: {r.get('exact_after_restart')}",
        )
    else:
        row("every indicator and target exact", "not judged (-)", "exact", "ground truth", "replay stopped early")
    lag = r["lag"]
    lag_ok = None if lag["max_seconds"] is None else lag["max_seconds"] < LAG_TARGET_S
    worst: tuple[str, dict[str, float]] = max(
        lag["per_group"].items(), key=lambda kv: kv[1]["max_seconds"], default=("-", {})
    )
    row(
        "consumer lag, max over the run",
        f"{lag['max_seconds']} s ({_mark(lag_ok)})",
        f"< {LAG_TARGET_S:.0f} s",
        f"{lag['samples']} samples every {lag['every_s']:.0f} s",
        f"worst group {worst[0]} (max {worst[1].get('max_events', 0):,} events behind);"
        f" median of samples {lag['median_of_sample_max_seconds']} s",
        cpu=f"the {CPU_WINDOW_S:.0f} s before the worst sample (at {lag.get('max_at_s')} s):"
        f" {r.get('cpu_before_worst_lag', '-')}",
    )
    box = r.get("outbox")
    if box and box["max_pending_events"]:
        name, most = max(box["max_pending_events"].items(), key=lambda kv: kv[1])
        row(
            "outbox backlog, max over the run",
            f"{most:,} events ({name})",
            "-",
            f"{box['samples']} samples every {LAG_EVERY_S:.0f} s",
            "events a relay found waiting at its pass (not yet in Kafka, so not in consumer lag): "
            + ", ".join(
                f"{k} {v:,} (peak at {box['peak_at_s'].get(k)} s)" for k, v in box["max_pending_events"].items()
            ),
        )
    for name, mb in sorted(r["rss_max_mb"].items()):
        row(
            f"RSS max, {name}",
            f"{mb} MB ({_mark(mb < RSS_TARGET_MB)})",
            f"< {RSS_TARGET_MB:.0f} MB",
            "-",
            "VmRSS every 1 s",
        )
    for name, s in r["restart_to_ready_s"].items():
        row(
            f"restart to ready, {name}",
            f"{s} s ({_mark(s < READY_TARGET_S)})",
            f"< {READY_TARGET_S:.0f} s",
            "-",
            "SIGTERM, spawn, /readyz 200 on the run's history",
        )
    return out


def notes(r: dict[str, Any]) -> list[str]:
    x = f"scale {r['scale']:g}x"
    if "error" in r:
        return [f"{x}: failed: {r['error']}"]
    out = []
    missed = [row["figure"] for row in rows(r) if "MISSED" in str(row["value"])]
    if missed:
        out.append(f"{x}: targets missed: {'; '.join(m.removeprefix(x + ': ') for m in missed)}")
    if r.get("replay_error"):
        out.append(f"{x}: the replay failed: {r['replay_error']}")
    elif not r["replay_finished"]:
        out.append(
            f"{x}: the replay was stopped at its budget after {r['replay_s']} s ({r['requests']:,} requests);"
            f" lag, RSS and restart figures cover that part of the campaign"
        )
    load = (r.get("load_average_at_start"), r.get("load_average_at_end"))
    out.append(
        f"{x}: load average (1, 5, 15 min) at start {load[0]} and at the end of the replay {load[1]} on"
        f" {os.cpu_count()} cores; CPU seconds per service over the run: {r['cpu_s']};"
        f" phases (s, requests): {[(p['phase'], p['t'], p['requests']) for p in r.get('phases', [])]}"
    )
    return out


async def scale_part(results: dict[str, Any], scales: Sequence[float], budget_s: float) -> None:
    """Run each scale and put its figures, rows and notes into ``results`` (bench/run.py's layout)."""
    part: dict[str, Any] = results.setdefault("scale", {})
    part["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    part["budget_s"] = budget_s
    for scale in scales:
        try:
            r = await run_scale(scale, budget_s)
        except (DemoError, httpx.HTTPError, RuntimeError, TimeoutError) as exc:
            r = {"scale": scale, "error": f"{type(exc).__name__}: {exc}"}
        part[f"{scale:g}x"] = r
        results["table"] = [
            row for row in results.get("table", []) if not row["figure"].startswith(f"scale {scale:g}x")
        ]
        results["table"] += rows(r)
        results["notes"] = [n for n in results.get("notes", []) if not n.startswith(f"scale {scale:g}x")]
        results["notes"] += notes(r)


def main(argv: list[str] | None = None) -> int:
    from bench.run import print_table, versions, write_results

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default=",".join(f"{s:g}" for s in DEFAULT_SCALES))
    p.add_argument("--budget-minutes", type=float, default=DEFAULT_BUDGET_MIN, help="per scale's replay")
    a = p.parse_args(argv)
    scales = [float(s) for s in a.scales.split(",") if s]
    fresh: dict[str, Any] = {"table": [], "notes": []}
    asyncio.run(scale_part(fresh, scales, a.budget_minutes * 60))
    # Read only now: the file may have been rewritten by a `make bench` during this run.
    path = HERE / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault("date", datetime.now(UTC).isoformat(timespec="seconds"))
    results.setdefault("machine", {"cores": os.cpu_count(), "platform": sys.platform})
    results.setdefault("versions", versions())
    results.setdefault("settings", {})
    results.setdefault("scale", {}).update(fresh["scale"])
    ran = tuple(f"scale {s:g}x" for s in scales)
    results["table"] = [r for r in results.get("table", []) if not r["figure"].startswith(ran)] + fresh["table"]
    results["notes"] = [n for n in results.get("notes", []) if not n.startswith(ran)] + fresh["notes"]
    write_results(results)
    print_table({"table": [r for r in results["table"] if r["figure"].startswith("scale ")]})
    print(f"\nwrote {path} and {HERE / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
