"""The deployed server (uvicorn with our protocol class): bytes that are not HTTP get problem+json."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import uvicorn

from shared.server import config
from shared.testing import wait_until

from .sample_app import SampleSettings, build_app

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]


@asynccontextmanager
async def listening(make_settings) -> AsyncIterator[int]:
    """The sample service behind the server every service process runs; yields its port."""
    server = uvicorn.Server(config(build_app(make_settings(SampleSettings)), host="127.0.0.1", port=0))
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    try:
        await wait_until(started, timeout=30)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def exchange(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send raw bytes; the status line, headers and body of the answer (read until the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,  # a TLS ClientHello on the plain port
        b"GET /v1/units\x01x HTTP/1.1\r\nHost: a\r\n\r\n",  # a control byte in the request target
        b"POST /v1/units HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a broken chunk size
    ],
    ids=["tls-handshake", "control-byte", "bad-chunk"],
)
async def test_a_request_the_parser_refuses_gets_problem_json_and_the_server_keeps_serving(
    make_settings, request_bytes: bytes
) -> None:
    async with listening(make_settings) as port:
        status, headers, body = await exchange(port, request_bytes)
        assert status == "HTTP/1.1 400 Bad Request"
        assert headers["content-type"] == "application/problem+json"
        assert int(headers["content-length"]) == len(body)
        problem = orjson.loads(body)
        assert problem["type"].endswith("/problems/malformed-http")
        assert problem["status"] == 400
        assert "HTTP/1.1" in problem["detail"]

        status, headers, body = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"


async def test_a_server_that_cannot_start_exits_with_status_3() -> None:
    # The port is taken: the process must not end as if it had been stopped (a supervisor restarts it).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = (
            "from fastapi import FastAPI; from shared.server import serve;"
            f" serve(FastAPI(), host='127.0.0.1', port={port})"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        assert await asyncio.wait_for(proc.wait(), 60) == 3
