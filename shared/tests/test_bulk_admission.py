"""Large-bodied writes take turns: at most ``at_once`` are handled, the rest wait unread, then 503."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from shared.http import BulkAdmissionMiddleware

LARGE = b"x" * 2048


class Held:
    """An app that holds every request until released, noting which bodies it has read."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.read: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.read.append(body[:8])
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_large_writes_beyond_the_limit_wait_unread_and_small_ones_pass() -> None:
    held = Held()
    gate = BulkAdmissionMiddleware(held, service="t", at_once=2, min_bytes=1024, wait_seconds=30)
    async with client(gate) as c:
        large = [asyncio.create_task(c.post("/v1/x:batch", content=bytes([65 + i]) + LARGE)) for i in range(3)]
        await asyncio.sleep(0.2)
        assert len(held.read) == 2  # the third waits, its body not read
        small = asyncio.create_task(c.post("/v1/x", content=b"{}"))
        reads = asyncio.create_task(c.get("/v1/x"))
        await asyncio.sleep(0.2)
        assert len(held.read) == 4  # a small write and a read are not held back
        held.release.set()
        answers = await asyncio.gather(*large, small, reads)
    assert [r.status_code for r in answers] == [200] * 5
    assert len(held.read) == 5


async def test_a_large_write_that_waits_too_long_gets_a_problem_with_retry_after() -> None:
    held = Held()
    gate = BulkAdmissionMiddleware(held, service="t", at_once=1, min_bytes=1024, wait_seconds=0.3)
    async with client(gate) as c:
        first = asyncio.create_task(c.post("/v1/x:batch", content=LARGE))
        await asyncio.sleep(0.1)
        r = await c.post("/v1/x:batch", content=LARGE)
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] == "2"
        problem = r.json()
        assert problem["status"] == 503
        assert problem["type"].endswith("/busy")
        assert len(held.read) == 1  # the refused body was never read
        held.release.set()
        assert (await first).status_code == 200
        # The turn is given back: the next large write goes through.
        assert (await c.post("/v1/x:batch", content=LARGE)).status_code == 200
