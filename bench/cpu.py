"""Where a part's CPU went, process by process: the coarse profile beside each figure.

A missed target needs the profile that says where the time goes. On two cores every process of a
part competes for the same CPU, so the first question is which process spent it: the database
(FerretDB), the broker, a service, the Kafka Streams peer, the load generator or the bench driver
itself (where the relay and the bare consumer run). A :class:`CpuLedger` samples the CPU time
(user + system) of the driver and of every process below it, twice a second and at each
:meth:`CpuLedger.mark`, and :meth:`CpuLedger.spent` answers what each process spent between two
marks, by name. A process that ended between samples loses at most one interval of its CPU.
Finer profiles (py-spy, pprof) and what they showed are in docs/adr/0005.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.concurrency import stop_task

SAMPLE_EVERY_S = 0.5
_TICK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> tuple[int, float] | None:
    """``(parent pid, CPU seconds)`` of ``pid``, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def process_name(pid: int, driver: int) -> str:
    """A readable name for a process of the bench, from its command line."""
    if pid == driver:
        return "bench driver"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    args = [a.decode(errors="replace") for a in argv if a]
    if not args:
        return "other"
    exe = Path(args[0]).name
    if "ferretdb" in exe:
        return "FerretDB"
    if exe == "java" or exe.startswith("java"):
        if "kafka.Kafka" in args:
            return "Kafka broker"
        if any(a.endswith(".jar") and "peer" in a for a in args):
            return "Kafka Streams peer"
        return "java"
    if "-m" in args[:-1]:
        module = args[args.index("-m") + 1]
        return "load generator" if module == "bench.loadgen" else module
    return exe


@dataclass
class Mark:
    """The CPU seconds of each process seen at one moment."""

    t: float
    cpu: dict[int, float]


@dataclass
class CpuLedger:
    """Samples the driver's and its descendants' CPU time; see the module's docstring."""

    driver: int = field(default_factory=os.getpid)
    every_s: float = SAMPLE_EVERY_S
    names: dict[int, str] = field(default_factory=dict)
    first: dict[int, float] = field(default_factory=dict)  # CPU when a pid was first seen
    last: dict[int, float] = field(default_factory=dict)  # CPU when a pid was last seen
    seen: dict[int, tuple[float, float]] = field(default_factory=dict)  # when a pid was first and last seen
    _task: asyncio.Task[None] | None = None

    def mark(self) -> Mark:
        """Sample every process now."""
        stats: dict[int, tuple[int, float]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (s := proc_stat(int(entry.name))) is not None:
                stats[int(entry.name)] = s
        ours = {self.driver}
        # Descendants: parents first is not guaranteed, so widen until nothing joins.
        grew = True
        while grew:
            grew = False
            for pid, (parent, _) in stats.items():
                if pid not in ours and parent in ours:
                    ours.add(pid)
                    grew = True
        cpu = {pid: stats[pid][1] for pid in ours if pid in stats}
        t = time.monotonic()
        for pid, seconds in cpu.items():
            self.seen[pid] = (self.seen.get(pid, (t, t))[0], t)
            if pid not in self.names:
                self.names[pid] = process_name(pid, self.driver)
                # A process born since the last sample spent its CPU since then.
                self.first[pid] = 0.0 if self._task is not None else seconds
            self.last[pid] = seconds
        return Mark(t, cpu)

    def spent(self, start: Mark, end: Mark | None = None) -> dict[str, float]:
        """CPU seconds per process name between ``start`` and ``end`` (now if None)."""
        end = end or self.mark()
        out: dict[str, float] = {}
        # Also those born and ended between the two marks, seen only by the background samples.
        between = {pid for pid, (first, last) in self.seen.items() if first > start.t and last < end.t}
        for pid in set(start.cpu) | set(end.cpu) | between:
            if pid in end.cpu:
                used = end.cpu[pid] - start.cpu.get(pid, self.first.get(pid, 0.0))
            else:  # ended within the span: what it had spent when last seen
                used = self.last.get(pid, 0.0) - start.cpu.get(pid, self.first.get(pid, 0.0))
            name = self.names.get(pid, "other")
            out[name] = out.get(name, 0.0) + max(used, 0.0)
        return out

    async def _run(self) -> None:
        while True:
            self.mark()
            await asyncio.sleep(self.every_s)

    def start(self) -> CpuLedger:
        self.mark()
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None


def describe(spent: Mapping[str, float], wall_s: float, cores: int | None = None) -> str:
    """``spent`` as a line: the processes by CPU seconds, each with its share, and how busy the cores were."""
    total = sum(spent.values())
    if total <= 0 or wall_s <= 0:
        return "-"
    cores = cores or os.cpu_count() or 1
    parts = [
        f"{name} {s:.1f} s ({s / total:.0%})"
        for name, s in sorted(spent.items(), key=lambda kv: -kv[1])
        if s >= 0.05 * total or s >= 1.0
    ]
    return f"CPU {', '.join(parts)}; {total:.1f} CPU-s in {wall_s:.1f} s = {total / wall_s:.2f} of {cores} cores"


_LEDGER: tuple[asyncio.AbstractEventLoop, CpuLedger] | None = None


def ledger() -> CpuLedger:
    """The running event loop's one ledger, started on first use."""
    global _LEDGER
    loop = asyncio.get_running_loop()
    if _LEDGER is None or _LEDGER[0] is not loop:
        _LEDGER = (loop, CpuLedger().start())
    return _LEDGER[1]


@dataclass
class CpuTally:
    """What several spans spent, added up (e.g. the three POST runs of a part, not the runs between)."""

    spent: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def add(self, start: Mark) -> None:
        """Add the span from ``start`` until now."""
        end = ledger().mark()
        for name, s in ledger().spent(start, end).items():
            self.spent[name] = self.spent.get(name, 0.0) + s
        self.wall_s += end.t - start.t

    def __str__(self) -> str:
        return describe(self.spent, self.wall_s)


@dataclass
class CpuTimeline:
    """A mark every ``every_s`` seconds over a long run, so a window (the minute before the worst
    lag) can be described after the fact."""

    every_s: float
    marks: list[tuple[float, Mark]] = field(default_factory=list)  # (seconds since t0, mark)

    async def run(self, t0: float) -> None:
        while True:
            mark = ledger().mark()
            self.marks.append((mark.t - t0, mark))
            await asyncio.sleep(self.every_s)

    def window(self, t_from: float, t_to: float) -> str:
        """:func:`describe` of the span between the marks nearest ``t_from`` and ``t_to``."""
        if len(self.marks) < 2:
            return "-"
        start = min(self.marks, key=lambda m: abs(m[0] - t_from))
        end = min(self.marks, key=lambda m: abs(m[0] - t_to))
        if end[0] <= start[0]:
            return "-"
        return describe(ledger().spent(start[1], end[1]), end[0] - start[0])


def where_it_went(start: Mark) -> str:
    """:func:`describe` of what every process spent since ``start``."""
    end = ledger().mark()
    return describe(ledger().spent(start, end), end.t - start.t)
