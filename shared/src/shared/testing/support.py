"""Helpers for tests that drive services over HTTP against the real broker and database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from shared.auth import issue_token
from shared.envelope import Envelope, decode
from shared.outbox import pending_events
from shared.settings import DEV_JWT_SECRET


def token(
    role: str = "admin", unit: str | None = None, teams: Sequence[str] = (), sub: str = "tester"
) -> dict[str, str]:
    """Authorization headers with a development token."""
    jwt = issue_token(secret=DEV_JWT_SECRET, role=role, unit=unit, teams=teams, sub=sub)
    return {"Authorization": f"Bearer {jwt}"}


@asynccontextmanager
async def running_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (Mongo, relay, consumers) and yield an in-process HTTP client."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
            yield client


@dataclass
class Received:
    envelope: Envelope
    topic: str
    partition: int
    offset: int
    headers: dict[str, bytes]


async def collect_events(
    bootstrap: str,
    topics: Sequence[str],
    *,
    count: int | None = None,
    timeout: float = 20.0,
    settle: float = 0.0,
) -> list[Received]:
    """Read ``topics`` from the beginning until ``count`` events arrived (or ``timeout`` passed).

    With ``settle`` > 0, keep reading that long after reaching ``count`` to catch extra events
    (so a test can assert that *exactly* ``count`` were published).
    """
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    out: list[Received] = []
    try:
        deadline = time.monotonic() + timeout
        reached_at: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    out.append(
                        Received(
                            decode(r.key, r.value, list(r.headers)), r.topic, r.partition, r.offset, dict(r.headers)
                        )
                    )
            if count is not None and len(out) >= count:
                reached_at = reached_at or time.monotonic()
                if time.monotonic() - reached_at >= settle:
                    break
        return out
    finally:
        await consumer.stop()


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, interval: float = 0.1) -> None:
    """Poll an async condition until it holds; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


async def unpublished_events(db: AsyncDatabase[dict[str, Any]], collections: Sequence[str]) -> int:
    """How many outbox events in ``collections`` the relay has not published and removed yet."""
    return await pending_events(db, collections)
