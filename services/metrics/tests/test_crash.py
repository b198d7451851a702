"""The metrics service as a real process: SIGKILLed while applying a backlog, restarted, and then
rebuilt by ``python -m metrics.rebuild`` from another process; the counters stay exact throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from asyncio.subprocess import PIPE
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from metrics.app import MetricsSettings
from metrics.projection import CounterSums, counter_id, increments, nonzero
from metrics.repository import ProjectionRepository, stream_db_name
from shared.envelope import Envelope
from shared.infra import free_port
from shared.mongo import connect
from shared.testing import token

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.e2e]

PATHS = [["QN", "QN-HALONG"], ["QN", "QN-VANDON"], ["QN", "QN-HALONG", "QN-HALONG-THPT"]]


def backlog(ev, n: int) -> list[Envelope]:
    """``n`` visits with corrections, voids and relay duplicates mixed in, in publishing order."""
    out: list[Envelope] = [ev.unit(["QN"]), *(ev.unit(p) for p in PATHS)]
    for i in range(n):
        path = PATHS[i % 3]
        figures = ev.figures(path, date(2025, 7, 1 + i % 10), people=1 + i % 4, vneid=i % 2, l3=i % 3, l4=i % 5 % 2)
        recorded = ev.visit(f"V{i}", figures)
        out.append(recorded)
        if i % 17 == 0:
            fixed = ev.figures(PATHS[(i + 1) % 3], date(2025, 7, 20), people=9, l3=1)
            out.append(ev.visit_corrected(f"V{i}", figures, fixed))
        elif i % 23 == 0:
            out.append(ev.visit_voided(f"V{i}", figures))
        if i % 11 == 0:
            out.append(recorded)  # republished: same ce_id, later offset
    return out


def expected_counters(events: list[Envelope]) -> dict[str, dict[str, int]]:
    """Per counter document, what the events add up to with each ce_id counted once."""
    sums = CounterSums()
    for e in {e.id: e for e in events}.values():
        sums.add(increments(e.payload()))
    return {doc: nonzero(fields) for doc, fields in sums.docs.items() if nonzero(fields)}


async def projected_counters(db: Any, generation: int) -> dict[str, dict[str, int]]:
    """Every counter document of the generation, read through the repository, watermarks left out."""
    out: dict[str, dict[str, int]] = {}
    for row in await ProjectionRepository(db, generation).all_counters():
        fields = nonzero(row["c"])
        if fields:
            out[counter_id(row["unit"], row["day"])] = fields
    return out


async def folded_counters(db: Any, generation: int) -> dict[str, dict[str, int]]:
    """The counter documents as stored, deltas not folded yet left out."""
    out: dict[str, dict[str, int]] = {}
    async for doc in db[f"counts_g{generation}"].find({}):
        fields = nonzero({k: v for k, v in doc.items() if k not in ("_id", "unit", "day", "wm")})
        if fields:
            out[doc["_id"]] = fields
    return out


async def applied_ids(db: Any, generation: int) -> set[str]:
    """Distinct event ids recorded as processed (a batch redone after a kill records its ids again)."""
    stream = db.client[stream_db_name(db.name)]
    docs = await stream[f"processed_events_g{generation}"].find({}, {"ids": 1}).to_list()
    return {i for d in docs for i in d["ids"]}


def service_env(settings: MetricsSettings, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "METRICS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "METRICS_MONGO_URL": settings.mongo_url,
        "METRICS_MONGO_DB": settings.mongo_db,
        "METRICS_TOPIC_PREFIX": settings.topic_prefix,
        "METRICS_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "METRICS_PORT": str(port),
        # Small batches: many Mongo-write/offset-commit windows for the kill to land in.
        "METRICS_CONSUMER_MAX_RECORDS": "150",
        "METRICS_GENERATION_POLL_SECONDS": "0.5",
        "METRICS_LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def start_service(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "metrics"], env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_sigkill_while_applying_a_backlog_then_restart_and_cli_rebuild_leave_counters_exact(
    make_settings, ev, send, processes, tmp_path
) -> None:
    settings = make_settings(MetricsSettings)
    events = backlog(ev, 3000)
    expected = expected_counters(events)
    unique = len({e.id for e in events})
    await send(settings, events)

    client = connect(settings.mongo_url)
    db = client[settings.mongo_db]
    port = free_port()
    env = service_env(settings, port)
    log = tmp_path / "metrics.log"
    try:
        kills = []
        for fraction in (0.2, 0.6):
            proc = start_service(env, log)
            processes.append(proc)
            deadline = time.monotonic() + 120
            applied = 0
            while time.monotonic() < deadline:
                applied = len(await applied_ids(db, 1))
                if applied >= unique * fraction:
                    break
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGKILL)  # no shutdown hooks: whatever was mid-flight stays so
            proc.wait(10)
            kills.append(applied)
        assert all(0 < k < unique for k in kills), (kills, unique, log.read_text()[-3000:])

        processes.append(start_service(env, log))
        deadline = time.monotonic() + 180
        got: dict[str, dict[str, int]] = {}
        marked = 0
        while time.monotonic() < deadline:
            # A batch's ids are stored just before its counters change, so wait for both.
            got = await projected_counters(db, 1)
            marked = len(await applied_ids(db, 1))
            if got == expected and marked == unique:
                break
            await asyncio.sleep(0.5)
        assert got == expected
        assert marked == unique
        # Every delta, those the killed processes wrote included, ends up in the counter documents
        # themselves, once.
        stream = client[stream_db_name(settings.mongo_db)]
        deadline = time.monotonic() + 60
        unfolded = 1
        while unfolded and time.monotonic() < deadline:
            unfolded = await stream["chains_g1"].count_documents({"starts": {"$ne": []}})
            await asyncio.sleep(0.2)
        assert unfolded == 0
        assert await folded_counters(db, 1) == expected

        visits = sum(1 for e in {e.id: e for e in events}.values() if e.type.endswith("visit.recorded.v1"))
        voided = sum(1 for e in {e.id: e for e in events}.values() if e.type.endswith("visit.voided.v1"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            summary = (await http.get("/v1/summary", headers=token("admin"))).json()
            assert summary.get("households_visited") == visits - voided, (summary, log.read_text()[-3000:])

            rebuild = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "metrics.rebuild", env=env, stdout=PIPE, stderr=subprocess.STDOUT
            )
            output, _ = await asyncio.wait_for(rebuild.communicate(), 180)
            assert rebuild.returncode == 0, output[-3000:]
            assert await projected_counters(db, 2) == expected
            deadline = time.monotonic() + 30
            fresh: dict[str, Any] = {}
            while time.monotonic() < deadline:
                fresh = (await http.get("/v1/freshness", headers=token("admin"))).json()
                if fresh["generation"] == 2:
                    break
                await asyncio.sleep(0.2)
            assert fresh["generation"] == 2
            # The live service now projects in the rebuilt generation's group and keeps counting.
            extra = ev.visit("V-after", ev.figures(PATHS[1], date(2025, 8, 1), households=3, people=4))
            await send(settings, [extra, extra])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                summary = (await http.get("/v1/summary", headers=token("admin"))).json()
                if summary["households_visited"] == visits - voided + 3:
                    break
                await asyncio.sleep(0.2)
            assert summary["households_visited"] == visits - voided + 3
            names = await db.list_collection_names()
            assert "counts_g1" not in names
            assert "team_counts_g1" not in names
            assert "processed_events_g1" not in await db.client[stream_db_name(db.name)].list_collection_names()
    finally:
        await client.close()
