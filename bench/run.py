"""``make bench``: every figure is a ratio to a baseline measured in the same run, median of 3 reps.

Starts its own Kafka and FerretDB in a temp dir (never a ``make run`` instance), runs the parts,
prints a table and writes ``bench/results.json`` and ``bench/results.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from bench import parts
from bench.cpu import CpuTally, ledger
from bench.peer_part import peer_part
from bench.scale import DEFAULT_BUDGET_MIN, DEFAULT_SCALES, scale_part
from shared.envelope import decode
from shared.infra import FERRETDB_VERSION, KAFKA_VERSION, FerretDB, KafkaBroker
from shared.kafka import EventProducer
from shared.migrations import migrate_outboxes
from shared.outbox import outbox_fields, pending_events
from shared.runtime import Runtime
from shared.settings import ServiceSettings
from shared.topics import VISITS_TOPIC, ensure_topics

from .events import mixed_events

HERE = Path(__file__).resolve().parent
REPS = 3
# The relay empties the outbox as it publishes (a database update per 50 documents), so a
# 50,000-event backlog takes several seconds per repetition: a relay is judged stuck when it
# publishes nothing for RELAY_STALL_S, and the whole part is capped only as a last resort.
RELAY_STALL_S = 30.0
RELAY_TIMEOUT_S = 900.0


class RelayStalled(Exception):
    pass


async def median_of(reps: int, fn: Callable[[int], Awaitable[float]]) -> tuple[float, list[float]]:
    values = [await fn(i) for i in range(reps)]
    return statistics.median(values), values


# --- part 4: outbox relay vs raw producer --------------------------------------------------------


async def relay_vs_producer(kafka: KafkaBroker, ferret: FerretDB, n: int) -> dict[str, Any]:
    """Events/s of the outbox relay draining a backlog of ``n`` events against a raw producer's.

    The relay figure is publishing *and emptying the outbox*: the relay removes each entry from its
    document (``$pull`` by entry id, one update statement per 50 documents) once Kafka acknowledged
    it, and the clock stops when the last removal is done. ``relay.published`` counts a chunk as soon as Kafka
    acknowledged it, before its removal, so it alone would stop the clock early; the rate at which
    it reached the backlog is kept too (``relay_publish_only_*``).
    """
    events = [e for e in mixed_events(n * 2, seed=11) if e.topic == VISITS_TOPIC][:n]
    left: list[int] = []  # outbox entries still stored after each relay repetition
    publish_only: list[float] = []  # events/s until Kafka acknowledged the whole backlog
    raw_cpu, relay_cpu = CpuTally(), CpuTally()  # the timed spans only

    async def raw(rep: int) -> float:
        prefix = f"braw{rep}{uuid.uuid4().hex[:6]}."
        await ensure_topics(kafka.bootstrap, prefix)
        producer = EventProducer(kafka.bootstrap, client_id="bench-raw")
        await producer.ensure_started()
        gc.collect()  # neither side pays for the other's garbage
        span = ledger().mark()
        start = time.perf_counter()
        for i in range(0, len(events), 1000):
            await producer.send_all({VISITS_TOPIC: prefix + VISITS_TOPIC}, events[i : i + 1000])
        elapsed = time.perf_counter() - start
        raw_cpu.add(span)
        await producer.stop()
        return len(events) / elapsed

    async def relay(rep: int) -> float:
        prefix = f"brel{rep}{uuid.uuid4().hex[:6]}."
        await ensure_topics(kafka.bootstrap, prefix)
        # The relay exactly as a service runs it (shared.runtime.Runtime): one pooled client,
        # default batch size.
        settings = ServiceSettings(
            service_name="bench",
            kafka_bootstrap=kafka.bootstrap,
            mongo_url=ferret.url,
            mongo_db=f"bench_relay_{rep}_{uuid.uuid4().hex[:6]}",
            topic_prefix=prefix,
            create_topics=False,
        )
        runtime = Runtime(settings, outbox_collections=["visits"])
        assert runtime.relay is not None
        db = runtime.db
        # What a service's first start did before it had any backlog: record the outbox migration
        # and create the relay's index. Otherwise the timed start would scan the whole backlog once
        # for the migration and index it, work a running service never repeats.
        await migrate_outboxes(db, ["visits"])
        await db["visits"].create_index("outbox.0", sparse=True)
        docs = [{"_id": e.key, "kind": "visit", **outbox_fields([e])} for e in events]
        for i in range(0, len(docs), 2000):
            await db["visits"].insert_many(docs[i : i + 2000])
        # The relay reads its backlog from the database; the harness's copy would only make every
        # full collection in this process longer.
        del docs
        gc.collect()
        await runtime.producer.ensure_started()
        span = ledger().mark()
        start = time.perf_counter()
        await runtime.start()
        relay = runtime.relay
        try:
            seen, t_seen = 0, time.perf_counter()
            published_at: float | None = None
            # Emptied: every entry acknowledged, and none queued or being removed any more (the
            # relay forgets an entry from its in-flight set once its $pull returned).
            while (done := relay.published) < len(events) or relay._in_flight:
                if done >= len(events) and published_at is None:
                    published_at = time.perf_counter()
                if done > seen:
                    seen, t_seen = done, time.perf_counter()
                elif time.perf_counter() - t_seen > RELAY_STALL_S:
                    raise RelayStalled(
                        f"relay: {done} of {len(events)} events published,"
                        f" {len(relay._in_flight)} not yet removed, then no progress for {RELAY_STALL_S:.0f} s"
                    )
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - start
            relay_cpu.add(span)
            publish_only.append(len(events) / ((published_at or time.perf_counter()) - start))
            left.append(await pending_events(db, ["visits"]))  # must be 0 once emptied
        finally:
            await runtime.client.drop_database(db.name)
            await runtime.stop()
        return len(events) / elapsed

    # The harness's 50,000 envelopes (about 1.5M objects with their payload models) live in the
    # measuring process, where no service has them. Each full pass of the cyclic GC walked them
    # all: one took 0.78 s in the middle of a relay run (measured with gc.callbacks), a fifth of
    # it. Frozen, the GC passes see what the relay and the producer themselves allocate.
    gc.collect()
    gc.freeze()
    try:
        raw_med, raw_all = await median_of(REPS, raw)
        relay_med, relay_all = await median_of(REPS, relay)
    finally:
        gc.unfreeze()
    return {
        "events": len(events),
        "raw_producer_events_per_s": round(raw_med, 1),
        "relay_events_per_s": round(relay_med, 1),
        "raw_reps": [round(v, 1) for v in raw_all],
        "relay_reps": [round(v, 1) for v in relay_all],
        "ratio": round(relay_med / raw_med, 3),
        "target": 0.5,
        "relay_publish_only_events_per_s": round(statistics.median(publish_only), 1),
        "relay_publish_only_reps": [round(v, 1) for v in publish_only],
        "outbox_left_after_reps": left,
        "cpu_relay": str(relay_cpu),
        "cpu_raw_producer": str(raw_cpu),
    }


# --- helpers shared by the parts that need a bare consumer ----------------------------------------


async def bare_consume(bootstrap: str, topic: str, expected: int) -> float:
    """Events/s of a plain aiokafka consumer that decodes every envelope and payload."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    seen = 0
    start = time.perf_counter()
    try:
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            for records in batch.values():
                for r in records:
                    decode(r.key, r.value, list(r.headers))
                    seen += 1
    finally:
        elapsed = time.perf_counter() - start
        await consumer.stop()
    return seen / elapsed


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kafka": KAFKA_VERSION, "ferretdb": FERRETDB_VERSION}
    for pkg in ("aiokafka", "pymongo", "fastapi", "uvicorn", "pydantic", "orjson"):
        out[pkg] = metadata.version(pkg)
    return out


def write_results(results: dict[str, Any]) -> None:
    (HERE / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    lines = [
        "# Benchmark results",
        "",
        f"Run {results['date']} on {results['machine']['cores']} cores; every figure is a ratio to a baseline",
        f"measured in the same run, median of {REPS} repetitions. Versions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + ".",
        "",
        "The last column is where the measured span's CPU went, process by process (`bench/cpu.py`);",
        "the finer profiles and what they showed are in `docs/adr/0005-ten-times-the-campaign-on-ferretdb.md`.",
        "",
        "| figure | value | target | baseline | measured | where the CPU went |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["table"]:
        lines.append(
            f"| {row['figure']} | {row['value']} | {row['target']} | {row['baseline']} | {row['measured']}"
            f" | {row.get('cpu', '-')} |"
        )
    lines += ["", "## Settings", "", "```json", json.dumps(results["settings"], indent=2), "```", ""]
    if results.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in results["notes"]], ""]
    (HERE / "results.md").write_text("\n".join(lines))


def print_table(results: dict[str, Any]) -> None:
    w = max([len("figure")] + [len(row["figure"]) for row in results["table"]])
    print(f"\n{'figure':<{w}} {'value':>12} {'target':>10}  baseline / measured")
    for row in results["table"]:
        print(f"{row['figure']:<{w}} {row['value']!s:>12} {row['target']!s:>10}  {row['baseline']} / {row['measured']}")


async def run(selected: set[str], scale: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    kafka = KafkaBroker(tmp / "kafka", heap="1g").start()
    ferret = FerretDB(tmp / "ferretdb").start()
    settings: dict[str, Any] = {"reps": REPS, "scale": scale}
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(),
        "settings": settings,
        "table": [],
        "notes": [],
    }
    try:
        if "relay" in selected:
            n = int(50_000 * scale)
            settings["relay_backlog_events"] = n
            try:
                r = await asyncio.wait_for(relay_vs_producer(kafka, ferret, n), RELAY_TIMEOUT_S)
            except (TimeoutError, RelayStalled) as exc:
                r = {"events": n, "ratio": None, "raw_producer_events_per_s": None, "relay_events_per_s": None}
                results["notes"].append(
                    str(exc) if isinstance(exc, RelayStalled) else f"relay: not finished within {RELAY_TIMEOUT_S:.0f} s"
                )
            results["relay"] = r
            results["relay_ratio"] = r["ratio"]
            if any(r.get("outbox_left_after_reps", ())):
                results["notes"].append(
                    f"relay: outbox entries left after it was emptied, per repetition: {r['outbox_left_after_reps']}"
                )
            results["table"].append(
                {
                    "figure": "outbox relay (publish + empty) / raw producer",
                    "value": r["ratio"],
                    "target": ">= 0.7",
                    "baseline": f"{r['raw_producer_events_per_s']} ev/s",
                    "measured": f"{r['relay_events_per_s']} ev/s"
                    + (
                        f" (publish only {r['relay_publish_only_events_per_s']} ev/s)"
                        if r.get("relay_publish_only_events_per_s")
                        else ""
                    ),
                    # The relay runs in the bench driver, as it runs inside a service.
                    "cpu": f"relay: {r.get('cpu_relay', '-')}; raw producer: {r.get('cpu_raw_producer', '-')}",
                }
            )
        await parts.run_service_parts(selected - {"peer", "scale"}, scale, kafka, ferret, results)
        # Last, with every service stopped: it times a JVM and a service against each other.
        if "peer" in selected:
            await peer_part(kafka, ferret, scale, results)
        # Only when asked for (--parts scale, or `make bench-scale`): a system of its own, for an hour or more.
        if "scale" in selected:
            await scale_part(results, DEFAULT_SCALES, DEFAULT_BUDGET_MIN * 60)
    finally:
        kafka.stop()
        ferret.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def keep_scale_rows(results: dict[str, Any]) -> None:
    """Carry the last scale run (``make bench-scale``, an hour or more) over into this run's files."""
    path = HERE / "results.json"
    if not path.exists():
        return
    before = json.loads(path.read_text())
    if "scale" not in before:
        return
    results["scale"] = before["scale"]
    results["table"] += [r for r in before.get("table", []) if r["figure"].startswith("scale ")]
    results["notes"] += [n for n in before.get("notes", []) if n.startswith("scale ")]


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # leader-election retries at topic creation
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--parts", default="relay,projector,freshness,write_api,restart,peer")
    p.add_argument("--scale", type=float, default=1.0, help="shrink every workload (e.g. 0.05 for a smoke run)")
    a = p.parse_args()
    parts_run = set(a.parts.split(","))
    results = asyncio.run(run(parts_run, a.scale))
    if "scale" not in parts_run:
        keep_scale_rows(results)
    write_results(results)
    print_table(results)
    print(f"\nwrote {HERE / 'results.json'} and {HERE / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
