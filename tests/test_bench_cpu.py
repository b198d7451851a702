"""bench/cpu.py: the CPU of a span is put on the process that spent it, by a readable name, including
a child that started and ended inside the span."""

from __future__ import annotations

import asyncio
import sys

from bench.cpu import CpuLedger, CpuTally, CpuTimeline, describe, ledger, process_name

# Busy for about 0.6 s of CPU, as a module run with -m would be (its name is the module's).
_BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6:\n    pass\n"


async def _burn_in_child() -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _BURN)
    assert await proc.wait() == 0


async def test_a_child_that_ended_within_the_span_is_charged_its_cpu() -> None:
    # Sampled often, so the child's last sample comes late in its life.
    own = CpuLedger(every_s=0.02).start()
    try:
        start = own.mark()
        await _burn_in_child()
        spent = own.spent(start)
    finally:
        await own.stop()
    child = spent.get(sys.executable.rsplit("/", 1)[-1], 0.0)
    assert child >= 0.4, spent
    assert spent.get("bench driver", 0.0) < child


async def test_a_tally_adds_only_its_own_spans() -> None:
    tally = CpuTally()
    span = ledger().mark()
    await asyncio.sleep(0.05)
    tally.add(span)
    await _burn_in_child()  # between the spans: not in the tally
    await asyncio.sleep(0.6)
    span = ledger().mark()
    await asyncio.sleep(0.05)
    tally.add(span)
    assert sum(tally.spent.values()) < 0.3, tally.spent
    assert 0.09 <= tally.wall_s < 1.0


async def test_a_timeline_describes_a_window_after_the_fact() -> None:
    timeline = CpuTimeline(every_s=0.2)
    task = asyncio.create_task(timeline.run(0.0))
    try:
        await asyncio.sleep(0.3)
        await _burn_in_child()
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
    first, last = timeline.marks[0][0], timeline.marks[-1][0]
    text = timeline.window(first, last)
    assert text.startswith("CPU python"), text
    assert timeline.window(last, first) == "-"


def test_describe_orders_by_cpu_and_drops_the_small_ones() -> None:
    text = describe({"FerretDB": 30.0, "metrics": 9.0, "Kafka broker": 1.2, "bench driver": 0.1}, wall_s=20.0, cores=2)
    assert text == (
        "CPU FerretDB 30.0 s (74%), metrics 9.0 s (22%), Kafka broker 1.2 s (3%);"
        " 40.3 CPU-s in 20.0 s = 2.02 of 2 cores"
    )
    assert describe({}, wall_s=5.0) == "-"


def test_processes_are_named_by_what_they_run() -> None:
    import os

    assert process_name(os.getpid(), driver=os.getpid()) == "bench driver"
    assert process_name(2**22 + 12345, driver=os.getpid()) == "gone"
