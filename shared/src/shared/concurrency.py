"""Bounded concurrency for the many small database commands of one batch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

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
