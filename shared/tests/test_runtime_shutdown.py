"""A shutdown step that never finishes (nor yields to cancellation) cannot hang a service's stop."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared import runtime


async def test_a_stuck_step_is_left_behind_after_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "SHUTDOWN_STEP_SECONDS", 0.2)
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallows cancellation, as a stuck client close might

    started = time.monotonic()
    await runtime._bounded(stubborn(), "stubborn step")
    assert time.monotonic() - started < 5
    release.set()
    await asyncio.sleep(0.01)  # let the left-behind step end before the loop closes


async def test_a_failing_step_does_not_stop_the_next_ones() -> None:
    ran: list[str] = []

    async def boom() -> None:
        ran.append("boom")
        raise RuntimeError("broker gone")

    async def fine() -> None:
        ran.append("fine")

    await runtime._bounded(boom(), "boom")
    await runtime._bounded(fine(), "fine")
    assert ran == ["boom", "fine"]
