"""The Kafka Streams peer against the metrics projector, on the same events and the same database.

The peer (``bench/peer``, Java, kafka-streams of the broker's version) folds the same CloudEvents
into the same counter documents as the projector, into a database of its own. This part:

1. drains one pre-loaded topic with each, alternately, a fresh database and consumer group per
   repetition, and reports events/s and the CPU-seconds per million events of each process (from
   ``/proc/<pid>/stat``, between the first progress report and the last event applied);
2. checks that the peer's counter documents equal the projector's (the comparison's gate);
3. measures freshness at the same load for both, one after the other: probe visits published at
   half the slower one's drain rate, each stamped visible when its unit's all-time counter document
   (read by ``_id`` straight from the database, the same read for both) counts it.

``python -m bench.peer_part [--scale S]`` runs it alone on its own Kafka and FerretDB and prints
the figures (``make bench`` runs it as the ``peer`` part).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.cpu import CpuTally, ledger
from bench.events import mixed_events, unit_paths
from bench.parts import (
    PROJECTOR_COUNTERS,
    REPS,
    STALL_SECONDS,
    VISIBLE_GRACE_SECONDS,
    Bench,
    Probe,
    Service,
    _run_load_feeding,
    cpu_seconds,
    finite_ms,
    partitions_of,
    pct,
    probe_paths,
    prom_sum,
    rss_mb,
    stream_db_of,
    unfolded_chains,
    unit_events,
)
from shared.infra import FerretDB, KafkaBroker
from shared.kafka import EventProducer
from shared.mongo import connect
from shared.topics import EVENT_TOPICS, VISITS_TOPIC, ensure_topics

HERE = Path(__file__).resolve().parent
PEER_DIR = HERE / "peer"
PEER_JAR = PEER_DIR / "target" / "streams-peer.jar"
PEER_EVENTS = 100_000  # at scale 1; the projector part drains 200,000 three times already
# The first generation's counters (metrics.generations): the units' and the teams'.
PROJECTOR_COLLECTIONS = ("counts_g1", "team_counts_g1")
PEER_COLLECTION = "counts"
# Java's default heap is a quarter of the machine's memory; the peer needs far less.
JVM_OPTS = ("-Xms128m", "-Xmx768m", "-XX:+UseParallelGC")
# The peer writes to Mongo at every commit. At Kafka Streams' default under exactly_once_v2 (100 ms)
# a commit covered one poll of a backlog (~2,300 records: 540 writes per 1,000 events) and the peer
# drained at half the projector's rate; at 1,000 ms a commit covers 10-20k records, as a projector
# fetch does (150 writes per 1,000 events), which is the peer a user tuning it would run.
COMMIT_MS = int(os.environ.get("BENCH_PEER_COMMIT_MS", "1000"))
MARKS = "wm"
# The projector's two counters, as the projector part reads them.
APPLIED_METRIC, WRITES_METRIC, FOLD_WRITES_METRIC = PROJECTOR_COUNTERS["name[]"]


def now() -> float:
    return time.perf_counter()


def build_peer() -> None:
    """Fetch the peer's jars and build it (a no-op when the jar is up to date)."""
    bash = shutil.which("bash")
    if bash is None or shutil.which("java") is None:
        raise RuntimeError("the peer needs bash, java and mvn")
    r = subprocess.run([bash, str(PEER_DIR / "build.sh")], capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not PEER_JAR.exists():
        raise RuntimeError(f"bench/peer/build.sh failed ({r.returncode}): {(r.stdout + r.stderr)[-1500:]}")


class Peer:
    """``java -jar streams-peer.jar`` on the bench's broker and database; reads its progress lines."""

    def __init__(self, bootstrap: str, mongo_url: str, prefix: str, db: str, log_dir: Path) -> None:
        self.db = db
        self.app_id = f"bpeer-{db}-{uuid.uuid4().hex[:6]}"  # a new consumer group: from the beginning
        self.state_dir = Path(tempfile.mkdtemp(prefix="peer-state-", dir=log_dir))
        self.log_path = log_dir / f"peer-{db}.log"
        self.applied = 0
        self.writes = 0
        self.skipped = 0
        self.running_at: float | None = None
        self.progress_at: float | None = None  # when ``applied`` last grew
        cmd = [
            shutil.which("java") or "java",
            *JVM_OPTS,
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-jar",
            str(PEER_JAR),
            "--bootstrap",
            bootstrap,
            "--topics",
            ",".join(prefix + t for t in EVENT_TOPICS),
            "--mongo",
            mongo_url,
            "--db",
            db,
            "--app-id",
            self.app_id,
            "--state-dir",
            str(self.state_dir),
            "--commit-ms",
            str(COMMIT_MS),
        ]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True, text=True, bufsize=1
        )
        self.started = now()
        self._reader = asyncio.create_task(asyncio.to_thread(self._read))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            t = now()
            if parts == ["running"]:
                self.running_at = t
            elif len(parts) >= 8 and parts[0] == "applied":
                applied = int(parts[1])
                if applied > self.applied:
                    self.progress_at = t
                self.applied, self.writes, self.skipped = applied, int(parts[5]), int(parts[7])
            self._log.write(line.encode())

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self, grace: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.proc.wait, grace)
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await asyncio.to_thread(self.proc.wait)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)
        self._log.close()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    async def wait_running(self, timeout: float = 120.0) -> float:
        deadline = now() + timeout
        while self.running_at is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the peer exited with {self.proc.returncode}; see {self.log_path}")
            if now() > deadline:
                raise TimeoutError(f"the peer did not reach RUNNING within {timeout:.0f} s; see {self.log_path}")
            await asyncio.sleep(0.05)
        return self.running_at - self.started


# --- throughput and CPU ---------------------------------------------------------------------------


async def drain_projector(b: Bench, prefix: str, db: str, expected: int, timeout: float) -> dict[str, Any]:
    """The metrics service on a fresh database and group, draining the pre-loaded topics."""
    svc = b.service("metrics", prefix, db, group_prefix=f"{db}.")
    start: tuple[float, float, float] | None = None  # (t, applied, cpu s) at the first answer
    applied = writes = 0.0
    t_progress = t_done = now()
    peak = 0.0
    stalled = False
    deadline = now() + timeout
    mongo = connect(b.ferret.url)
    try:
        while now() < deadline:
            if svc.proc.poll() is not None:
                raise RuntimeError(f"metrics exited with {svc.proc.returncode}; see {svc.log_path}")
            peak = max(peak, svc.rss())
            with contextlib.suppress(httpx.HTTPError):
                r = await b.client.get(svc.url + "/metrics", params=PROJECTOR_COUNTERS, timeout=5.0)
                if r.status_code == 200:
                    t = now()
                    seen = prom_sum(r.text, APPLIED_METRIC)
                    writes = prom_sum(r.text, WRITES_METRIC) + prom_sum(r.text, FOLD_WRITES_METRIC)
                    if start is None:
                        start = (t, seen, cpu_seconds(svc.pid))
                    if seen > applied:
                        t_progress = t
                    applied = seen
                    # Done once the folder has added every delta into the counter documents the
                    # peer's are compared with.
                    if applied >= expected and not await unfolded_chains(mongo, db):
                        t_done = t
                        break
                    if t - t_progress > STALL_SECONDS:
                        stalled = True
                        break
            await asyncio.sleep(0.1)
        cpu_done = cpu_seconds(svc.pid)
    finally:
        await svc.stop()
        await mongo.close()
    if start is None:
        raise RuntimeError(f"metrics never answered /metrics; see {svc.log_path}")
    t0, a0, cpu0 = start
    end = t_progress if stalled or applied < expected else t_done
    return _drained(applied, expected, a0, end - t0, cpu_done - cpu0, writes, peak, stalled)


async def drain_peer(b: Bench, prefix: str, db: str, expected: int, timeout: float, log_dir: Path) -> dict[str, Any]:
    """The Kafka Streams peer on a fresh database and application id, draining the same topics."""
    peer = Peer(b.kafka.bootstrap, b.ferret.url, prefix, db, log_dir)
    peak = 0.0
    stalled = False
    try:
        startup = await peer.wait_running()
        t0, a0, cpu0 = now(), peer.applied, cpu_seconds(peer.pid)
        t_progress = t0
        deadline = now() + timeout
        while peer.applied < expected and now() < deadline:
            if peer.proc.poll() is not None:
                raise RuntimeError(f"the peer exited with {peer.proc.returncode}; see {peer.log_path}")
            peak = max(peak, rss_mb(peer.pid))
            t_progress = peer.progress_at or t_progress
            if now() - t_progress > STALL_SECONDS:
                stalled = True
                break
            await asyncio.sleep(0.02)
        cpu_done = cpu_seconds(peer.pid)
        end = peer.progress_at or now()
        peak = max(peak, rss_mb(peer.pid))
    finally:
        await peer.stop()
    out = _drained(peer.applied, expected, a0, end - t0, cpu_done - cpu0, peer.writes, peak, stalled)
    out["startup_s"] = round(startup, 1)
    out["skipped"] = peer.skipped
    return out


def _drained(
    applied: float, expected: int, a0: float, seconds: float, cpu: float, writes: float, peak: float, stalled: bool
) -> dict[str, Any]:
    done = applied - a0
    return {
        "applied": int(applied),
        "done": applied >= expected,
        "stalled": stalled,
        "seconds": round(seconds, 2),
        "events_per_s": done / max(seconds, 1e-9),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_million": cpu / done * 1e6 if done > 0 else None,
        "mongo_writes_per_1000_events": round(writes / applied * 1000, 1) if applied else None,
        "peak_rss_mb": peak,
    }


async def counter_docs(mongo_url: str, db: str, collections: Sequence[str]) -> dict[str, dict[str, int]]:
    """Every counter document of ``db``'s ``collections``, without its watermarks and zero fields."""
    client = connect(mongo_url)
    try:
        docs = [d for name in collections for d in await client[db][name].find({}, {MARKS: 0}).to_list()]
    finally:
        await client.close()
    return {
        str(d["_id"]): {k: int(v) for k, v in d.items() if isinstance(v, int) and not isinstance(v, bool) and v}
        for d in docs
    }


def differences(want: dict[str, dict[str, int]], got: dict[str, dict[str, int]], limit: int = 5) -> list[str]:
    """Up to ``limit`` documents whose counters differ, described."""
    out: list[str] = []
    for doc_id in sorted(set(want) | set(got)):
        if want.get(doc_id) != got.get(doc_id):
            out.append(f"{doc_id}: projector {want.get(doc_id)} peer {got.get(doc_id)}")
            if len(out) >= limit:
                break
    return out


async def drop(b: Bench, dbs: Sequence[str]) -> None:
    client = connect(b.ferret.url)
    try:
        for db in dbs:
            for name in (db, stream_db_of(db)):
                with contextlib.suppress(Exception):
                    await client.drop_database(name)
    finally:
        await client.close()


async def throughput(b: Bench, log_dir: Path) -> dict[str, Any]:
    n = max(1000, int(PEER_EVENTS * b.scale))
    prefix = f"bpeer{uuid.uuid4().hex[:6]}."
    await ensure_topics(b.kafka.bootstrap, prefix)
    events = mixed_events(n, seed=7)
    units = unit_events(unit_paths())
    # One topic holds the whole mix, as in the projector part; both fold by event type, not topic.
    single = dict.fromkeys(EVENT_TOPICS, prefix + VISITS_TOPIC)
    t = now()
    for i in range(0, len(units), 5000):
        await b.producer.send_all(b.topic_of(prefix), units[i : i + 5000])
    for i in range(0, n, 5000):
        await b.producer.send_all(single, events[i : i + 5000])
    load_s = now() - t
    del events
    expected = n + len(units)
    timeout = max(120.0, 600.0 * b.scale)
    proj: list[dict[str, Any]] = []
    peer: list[dict[str, Any]] = []
    gate: list[dict[str, Any]] = []
    reference: dict[str, dict[str, int]] | None = None
    tag = uuid.uuid4().hex[:6]
    proj_cpu, peer_cpu = CpuTally(), CpuTally()  # the drains only, not the counter comparisons
    # Alternated, so drift in the machine's background load hits both alike.
    for rep in range(REPS):
        pdb, sdb = f"bpp_proj{rep}_{tag}", f"bpp_peer{rep}_{tag}"
        try:
            span = ledger().mark()
            proj.append(await drain_projector(b, prefix, pdb, expected, timeout))
            proj_cpu.add(span)
            span = ledger().mark()
            peer.append(await drain_peer(b, prefix, sdb, expected, timeout, log_dir))
            peer_cpu.add(span)
            if rep == 0:
                reference = await counter_docs(b.ferret.url, pdb, PROJECTOR_COLLECTIONS)
            got = await counter_docs(b.ferret.url, sdb, [PEER_COLLECTION])
            assert reference is not None
            diff = differences(reference, got)
            gate.append({"documents": len(got), "equal": not diff and bool(got), "differences": diff})
        finally:
            await drop(b, [pdb, sdb])
        if proj[-1]["stalled"] or peer[-1]["stalled"]:
            break

    def med(runs: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else None

    p_rate, s_rate = med(proj, "events_per_s"), med(peer, "events_per_s")
    return {
        "events": n,
        "peer_commit_interval_ms": COMMIT_MS,
        "preload_s": round(load_s, 1),
        "projector_events_per_s": round(p_rate or 0, 1),
        "peer_events_per_s": round(s_rate or 0, 1),
        "ratio": round(p_rate / s_rate, 3) if p_rate and s_rate else None,
        "projector_cpu_s_per_million": _round(med(proj, "cpu_s_per_million")),
        "peer_cpu_s_per_million": _round(med(peer, "cpu_s_per_million")),
        "projector_reps": proj,
        "peer_reps": peer,
        "all_applied": all(r["done"] for r in proj + peer),
        "counters_equal": bool(gate) and all(g["equal"] for g in gate),
        "counter_check": gate,
        "reference_documents": len(reference or {}),
        "cpu_projector_drains": str(proj_cpu),
        "cpu_peer_drains": str(peer_cpu),
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


# --- freshness at the same load -------------------------------------------------------------------


async def poll_counters(
    b: Bench, db: str, collection: str, probes: list[Probe], stop: asyncio.Event, interval: float, units: list[str]
) -> int:
    """Stamp each probe visible once its unit's all-time document counts it; returns the reads made."""
    client = connect(b.ferret.url)
    col = client[db][collection]
    reads = 0

    async def one(unit: str) -> None:
        nonlocal reads
        idx = done = 0
        mine: list[Probe] = []
        while True:
            while idx < len(probes):
                if probes[idx].unit == unit:
                    mine.append(probes[idx])
                idx += 1
            doc = await col.find_one({"_id": f"{unit}|all"}, {"households_visited": 1})
            t = now()
            reads += 1
            count = int((doc or {}).get("households_visited", 0))
            while done < len(mine) and mine[done].seq <= count:
                mine[done].visible = t
                done += 1
            if stop.is_set() and idx >= len(probes) and done >= len(mine):
                return
            await asyncio.sleep(interval)

    try:
        await asyncio.gather(*(one(u) for u in units))
    finally:
        await client.close()
    return reads


async def freshness_of(b: Bench, which: str, rate: float, seconds: float, log_dir: Path) -> dict[str, Any]:
    """Probe latency of ``which`` (projector or peer) under ``rate`` events/s on fresh topics."""
    prefix = f"bpf{which[:2]}{uuid.uuid4().hex[:6]}."
    db = f"bpf_{which}_{uuid.uuid4().hex[:6]}"
    await ensure_topics(b.kafka.bootstrap, prefix)
    paths = probe_paths(partitions_of(VISITS_TOPIC))
    b.prefix, b.probe_seq = prefix, {}
    process: Service | Peer
    if which == "projector":
        process, collection = b.service("metrics", prefix, db, group_prefix=f"{db}."), PROJECTOR_COLLECTIONS[0]
    else:
        process, collection = Peer(b.kafka.bootstrap, b.ferret.url, prefix, db, log_dir), PEER_COLLECTION
    probes: list[Probe] = []
    stop = asyncio.Event()
    poller: asyncio.Task[int] | None = None
    try:
        if isinstance(process, Peer):
            await process.wait_running()
        else:
            await process.wait_ready(b.client)
            await asyncio.sleep(3)  # the consumer joins its group after the lifespan started it
        units = [p[-1] for p in paths]
        poller = asyncio.create_task(poll_counters(b, db, collection, probes, stop, 0.05, units))
        cpu0 = cpu_seconds(process.pid)
        _, achieved, _ = await _run_load_feeding(b, rate, seconds, 30.0, paths, 0.5, probes)
        cpu = cpu_seconds(process.pid) - cpu0
        stop.set()
        try:
            reads = await asyncio.wait_for(poller, timeout=VISIBLE_GRACE_SECONDS)
        except TimeoutError:
            reads = -1
    finally:
        if poller is not None:
            poller.cancel()
        await process.stop()
        await drop(b, [db])
    missing = sum(p.visible is None for p in probes)
    lat = [(p.visible - p.published) * 1000 if p.visible is not None else float("inf") for p in probes]
    return {
        "target_rate_ev_s": round(rate, 1),
        "achieved_rate_ev_s": round(achieved, 1),
        "probes": len(probes),
        "probes_not_visible": missing,
        "counter_reads": reads,
        "p50_ms": finite_ms(pct(lat, 50)),
        "p95_ms": finite_ms(pct(lat, 95)),
        "p99_ms": finite_ms(pct(lat, 99)),
        "cpu_s_under_load": round(cpu, 2),
    }


# --- the part -------------------------------------------------------------------------------------


async def peer_part(kafka: KafkaBroker, ferret: FerretDB, scale: float, results: dict[str, Any]) -> None:
    """The ``peer`` part of ``make bench``: figures into ``results`` (table rows, notes, ``peer``)."""
    t = now()
    try:
        await asyncio.to_thread(build_peer)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        results["notes"].append(f"peer: not built, part skipped: {exc}")
        return
    results["settings"].setdefault("part_seconds", {})["peer_build"] = round(now() - t, 1)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    results["settings"]["peer_logs"] = str(log_dir)
    producer = EventProducer(kafka.bootstrap, client_id="bench-peer")
    await producer.ensure_started()
    t = now()
    try:
        async with httpx.AsyncClient() as client:
            b = Bench(kafka, ferret, scale, results, log_dir, client, producer)
            await _measure(b, log_dir)
    except Exception as exc:  # the other parts' figures still count
        results["notes"].append(f"part 'peer' failed: {type(exc).__name__}: {exc}")
    finally:
        await producer.stop()
        results["settings"]["part_seconds"]["peer"] = round(now() - t, 1)


async def _measure(b: Bench, log_dir: Path) -> None:
    out: dict[str, Any] = await throughput(b, log_dir)
    b.results["peer"] = out
    b.results["projector_peer_ratio"] = out["ratio"]
    b.row(
        "projector / Kafka Streams peer",
        out["ratio"],
        ">= 1.0",
        f"{out['peer_events_per_s']} ev/s",
        f"{out['projector_events_per_s']} ev/s, {out['events']}-event backlog,"
        f" peer commit interval {out['peer_commit_interval_ms']} ms",
        cpu=f"projector drains: {out['cpu_projector_drains']}; peer drains: {out['cpu_peer_drains']}",
    )
    b.row(
        "CPU-s per million events (projector / peer)",
        f"{out['projector_cpu_s_per_million']} / {out['peer_cpu_s_per_million']}",
        "-",
        f"peer {out['peer_cpu_s_per_million']} s",
        "each process's user+system CPU while draining",
    )
    checked = out["counter_check"]
    b.row(
        "peer counter documents = projector's",
        "yes" if out["counters_equal"] else "NO",
        "yes",
        f"{out['reference_documents']} projector documents",
        f"{len(checked)} peer repetitions compared",
    )
    if not out["counters_equal"]:
        b.note(f"peer: counter documents differ from the projector's: {checked}")
    if not out["all_applied"]:
        b.note("peer: a repetition did not apply every event; see results.json peer.*_reps")
    slower = min(out["projector_events_per_s"], out["peer_events_per_s"])
    if slower <= 0:
        b.note("peer: no throughput to base the freshness load on; freshness skipped")
        return
    rate = slower * 0.5
    seconds = max(10.0, 30.0 * min(b.scale * 4, 1.0))
    fresh = {
        "rate_ev_s": round(rate, 1),
        "seconds": seconds,
        "projector": await freshness_of(b, "projector", rate, seconds, log_dir),
        "peer": await freshness_of(b, "peer", rate, seconds, log_dir),
    }
    out["freshness"] = fresh
    fp, fs = fresh["projector"], fresh["peer"]
    b.row(
        "freshness p99 at the same load (projector / peer)",
        f"{fp['p99_ms']} / {fs['p99_ms']} ms",
        "-",
        f"{fresh['rate_ev_s']} ev/s (50% of the slower)",
        f"p50 {fp['p50_ms']} / {fs['p50_ms']} ms, counter read by _id",
    )
    for name, f in (("projector", fp), ("peer", fs)):
        if f["probes_not_visible"]:
            b.note(f"peer part freshness: {f['probes_not_visible']} of {f['probes']} {name} probes never visible")


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=HERE / "out" / "peer.json")
    a = p.parse_args()

    async def go() -> dict[str, Any]:
        tmp = Path(tempfile.mkdtemp(prefix="bridge-peer-"))
        kafka = KafkaBroker(tmp / "kafka", heap="1g").start()
        ferret = FerretDB(tmp / "ferretdb").start()
        results: dict[str, Any] = {"settings": {"scale": a.scale}, "table": [], "notes": []}
        try:
            await peer_part(kafka, ferret, a.scale, results)
        finally:
            kafka.stop()
            ferret.stop()
            shutil.rmtree(tmp, ignore_errors=True)
        return results

    results = asyncio.run(go())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    for row in results["table"]:
        print(f"{row['figure']}: {row['value']} (target {row['target']}; {row['baseline']} / {row['measured']})")
    for n in results["notes"]:
        print("note:", n)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
