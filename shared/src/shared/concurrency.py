"""Bounded concurrency for the many small database commands of one batch, and stopping a background task."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# Concurrent calls per step of :func:`run_in_chunks` (a client's connection pool queues the rest).
CHUNK = 50


async def run_in_chunks(calls: Sequence[Callable[[], Awaitable[T]]], chunk: int = CHUNK) -> list[T]:
    """Run ``calls`` ``chunk`` at a time; their results in order.

    Every call of a chunk finishes before an error is raised, so none is left running.
    """
    results: list[T] = []
    for i in range(0, len(calls), chunk):
        outcomes = await asyncio.gather(*(c() for c in calls[i : i + chunk]), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        results += outcomes  # type: ignore[arg-type]
    return results


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background loop and wait until it has unwound (nothing if there is none)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
