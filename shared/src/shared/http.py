"""The HTTP side every service shares: app factory, RFC 9457 errors, limits, health, metrics, auth.

``create_app`` gives each service the same behaviour for things that are not its domain:
problem+json for every 4xx/5xx, a 1 MiB body limit, request ids in logs, Prometheus ``/metrics``,
``/healthz`` and ``/readyz``, and ``Idempotency-Key`` replay on POST.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from pymongo.errors import DuplicateKeyError, PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import Authenticator, Principal
from shared.catalog import catalog_router
from shared.errors import PROBLEM_BASE, Conflict, PayloadTooLarge, ProblemError, Unauthorized
from shared.logging import bind_context, get_logger, unbind_context

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests", ["service", "method", "route", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

ReadinessCheck = Callable[[], Awaitable[bool]]


def problem(status: int, title: str, detail: str, *, slug: str, **extra: Any) -> JSONResponse:
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for code, text in (
        (400, "Bad request"),
        (401, "Missing or invalid bearer token"),
        (403, "Role or unit scope does not allow this"),
        (404, "Not found"),
        (409, "Conflict (duplicate code, or idempotency key reused with another body)"),
        (413, "Body over 1 MiB"),
        (422, "Validation failed; `errors` lists the offending fields"),
    )
}


def _install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse(
            exc.to_problem(instance=request.url.path), status_code=exc.status, media_type=PROBLEM_JSON, headers=headers
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body",
                "message": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem(
            422, "The request is not valid", detail, slug="validation", errors=errors, instance=request.url.path
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        titles = {404: "Not found", 405: "Method not allowed", 401: "Authentication required"}
        return problem(
            exc.status_code,
            titles.get(exc.status_code, "HTTP error"),
            str(exc.detail) if exc.detail else titles.get(exc.status_code, ""),
            slug=f"http-{exc.status_code}",
            instance=request.url.path,
        )

    async def on_duplicate(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            Conflict("a record with the same unique key exists").to_problem(request.url.path),
            status_code=409,
            media_type=PROBLEM_JSON,
        )

    async def on_mongo(request: Request, exc: Exception) -> Response:
        log.error("database_error", error=str(exc))
        return problem(503, "Database unavailable", "the database did not answer; retry later", slug="unavailable")

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled_error", path=request.url.path)
        return problem(500, "Internal error", "an unexpected error occurred", slug="internal")

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(DuplicateKeyError, on_duplicate)
    app.add_exception_handler(PyMongoError, on_mongo)
    app.add_exception_handler(Exception, on_unexpected)


class BodyLimitMiddleware:
    """Rejects bodies over ``max_bytes`` with 413, by header and while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"the body is over {self.max_bytes} bytes")
            return msg

        await self.app(scope, limited, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = JSONResponse(
            PayloadTooLarge(f"the body is over {self.max_bytes} bytes").to_problem(scope.get("path")),
            status_code=413,
            media_type=PROBLEM_JSON,
        )
        await resp(scope, receive, send)


class RequestContextMiddleware:
    """Request id (``X-Request-ID``), structured access log and Prometheus HTTP metrics."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode() or uuid.uuid4().hex
        bind_context(request_id=request_id)
        status = 500
        start = time.perf_counter()

        async def send_wrapper(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                msg.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            HTTP_REQUESTS.labels(self.service, scope["method"], template, str(status)).inc()
            HTTP_LATENCY.labels(self.service, scope["method"], template).observe(elapsed)
            if template not in ("/metrics", "/healthz", "/readyz"):
                log.info(
                    "http_request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    ms=round(elapsed * 1000, 1),
                )
            unbind_context("request_id")


class IdempotencyMiddleware:
    """``Idempotency-Key`` on POST: the first response is stored and replayed for the same key and
    body; the same key with another body is a 409. Keys are scoped to the caller's token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        key = headers.get(b"idempotency-key")
        if scope["type"] != "http" or scope["method"] != "POST" or not key:
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        caller = hashlib.sha256(headers.get(b"authorization", b"")).hexdigest()[:16]
        doc_id = f"{caller}:{scope['path']}:{key.decode(errors='replace')}"
        body_hash = hashlib.sha256(body).hexdigest()
        app: FastAPI = scope["app"]
        col = app.state.runtime.db["idempotency_keys"]
        stored = await app.state.runtime.db["idempotency_keys"].find_one({"_id": doc_id})
        if stored is not None:
            if stored["body_hash"] != body_hash:
                resp: Response = JSONResponse(
                    Conflict(
                        "this Idempotency-Key was already used with a different request body",
                        slug="idempotency-key-reused",
                    ).to_problem(scope["path"]),
                    status_code=409,
                    media_type=PROBLEM_JSON,
                )
            else:
                resp = Response(
                    stored["body"],
                    status_code=stored["status"],
                    media_type=stored["media_type"],
                    headers={"Idempotent-Replayed": "true"},
                )
            await resp(scope, receive, send)
            return

        sent = False

        async def replay_body() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        captured: dict[str, Any] = {"status": 500, "body": b"", "media_type": "application/json"}

        async def capture(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                captured["status"] = msg["status"]
                for k, v in msg.get("headers", []):
                    if k.lower() == b"content-type":
                        captured["media_type"] = v.decode()
            elif msg["type"] == "http.response.body":
                captured["body"] += msg.get("body", b"")
            await send(msg)

        await self.app(scope, replay_body, capture)
        if captured["status"] < 500:
            try:
                await col.insert_one({"_id": doc_id, "body_hash": body_hash, **captured})
            except DuplicateKeyError:
                pass  # a concurrent retry stored its (identical) response first


def _health_router(service: str, checks: Callable[[], dict[str, ReadinessCheck]]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness: the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @router.get(
        "/readyz",
        summary="Readiness: Kafka and the database answer",
        responses={503: {"description": "A dependency is not reachable"}},
    )
    async def readyz() -> Response:
        results = {name: await check() for name, check in checks().items()}
        ready = all(results.values())
        body = {
            "status": "ready" if ready else "unready",
            "checks": {k: "ok" if v else "down" for k, v in results.items()},
        }
        return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # ``?name[]=...`` limits the exposition to those series (as prometheus_client's own
        # handlers do): a poller that follows one counter should not pay for every indicator
        # gauge. A full metrics-service scrape is ~1,800 lines and 17 ms of its CPU.
        names = request.query_params.getlist("name[]")
        registry = REGISTRY.restricted_registry(names) if names else REGISTRY
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def create_app(
    *,
    service: str,
    title: str,
    description: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    routers: Sequence[APIRouter],
    max_body_bytes: int = 1024 * 1024,
    version: str = "1.0.0",
) -> FastAPI:
    """Build a service app. The lifespan must set ``app.state.runtime`` (a :class:`Runtime`)."""
    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        responses=PROBLEM_RESPONSES,
    )
    _install_problem_handlers(app)
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(RequestContextMiddleware, service=service)
    app.include_router(_health_router(service, lambda: app.state.runtime.readiness_checks()))
    app.include_router(catalog_router(service))
    for r in routers:
        app.include_router(r)

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original_openapi()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = {
            "type": "object",
            "description": "RFC 9457 problem details",
            "properties": {
                "type": {"type": "string", "format": "uri"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "instance": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["type", "title", "status"],
        }
        schema["components"].setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
        }
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send a bearer token: Authorization: Bearer <jwt>")
    authenticator: Authenticator = request.app.state.runtime.authenticator
    principal = authenticator.decode(token)
    bind_context(principal=principal.sub, role=principal.role.value)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(_principal)]


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Run one service process as deployed: uvicorn on uvloop and httptools, our logging only.

    uvicorn's own access line is off: :class:`RequestContextMiddleware` already writes one per
    request (with its request id and duration), and formatting a second one cost every request.
    """
    import uvicorn

    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", log_config=None, access_log=False)
