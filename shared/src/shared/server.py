"""How a service process serves HTTP: uvicorn on uvloop and httptools, with its one plain-text answer replaced.

uvicorn answers a request its parser refuses (bytes that are not HTTP/1.1: a TLS handshake sent to
the plain port, a control character in the request line, a broken chunked body) on its own, before
any application code runs, with ``400 Invalid HTTP request received.`` in ``text/plain``. Every
other error of ours is RFC 9457 problem+json, so that one answer is replaced here, in the one
place that knows about uvicorn's protocol classes.
"""

from __future__ import annotations

from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.errors import ProblemError
from shared.http import PROBLEM_JSON

# The answer is the same for every refused request: built once.
MALFORMED_HTTP_BODY = orjson.dumps(
    ProblemError(
        "Yêu cầu không phải HTTP/1.1 hợp lệ; máy chủ đã đóng kết nối."
        " / The request is not valid HTTP/1.1; the server closed the connection.",
        title="Malformed HTTP request",
        slug="malformed-http",
    ).to_problem()
)


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering an unparsable request in problem+json."""

    def send_400_response(self, msg: str) -> None:
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        length = len(MALFORMED_HTTP_BODY)
        head.append(f"content-type: {PROBLEM_JSON}\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n".encode())
        self.transport.write(b"".join(head) + MALFORMED_HTTP_BODY)
        self.transport.close()


def config(app: FastAPI, *, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """The server of one service process, as deployed; ``overrides`` for a test that runs it in a
    thread (another event loop, its lifespan required).

    uvicorn's own access line is off: :class:`shared.http.RequestContextMiddleware` already writes
    one per request (with its request id and duration), and formatting a second one cost every request.
    """
    settings: dict[str, Any] = {
        "loop": "uvloop",
        "http": ProblemHttpToolsProtocol,
        "log_config": None,
        "access_log": False,
    }
    return uvicorn.Config(app, host=host, port=port, **(settings | overrides))


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Run one service process until it is stopped (uvicorn exits with status 3 if it cannot start)."""
    uvicorn.Server(config(app, host=host, port=port)).run()
