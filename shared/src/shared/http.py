"""The HTTP side every service shares: app factory, RFC 9457 errors, limits, health, metrics, auth.

``create_app`` gives each service the same behaviour for things that are not its domain:
problem+json for every 4xx/5xx, a 1 MiB body limit, request ids in logs, Prometheus ``/metrics``,
``/healthz`` and ``/readyz``, ``Idempotency-Key`` replay (:mod:`shared.idempotency`), Swagger UI at
``/docs`` and ReDoc at ``/redoc`` from assets the service serves itself (no CDN: they work offline),
and an OpenAPI document with readable operation ids and the problems each route can answer.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import fastapi_offline
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from pydantic import AwareDatetime, BaseModel, BeforeValidator
from pymongo.errors import DuplicateKeyError, PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import Authenticator, Principal
from shared.catalog import catalog_router
from shared.errors import PROBLEM_BASE, Conflict, PayloadTooLarge, ProblemError, ServiceUnavailable, Unauthorized
from shared.idempotency import METHODS as IDEMPOTENT_METHODS
from shared.idempotency import OPENAPI_PARAMETER as IDEMPOTENCY_KEY_PARAMETER
from shared.idempotency import IdempotencyMiddleware
from shared.logging import bind_context, get_logger, unbind_context
from shared.settings import ServiceSettings
from shared.tracing import fastapi_telemetry

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
# Answers from this size on are gzipped for a client that accepts it, as is every streamed one.
GZIP_MIN_BYTES = 64 * 1024
# Already compressed: an XLSX is a zip.
GZIP_EXCLUDED = (
    "application/zip",
    "application/gzip",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "image/*",
    "font/woff2",
    "text/event-stream",
)
# Every counter and histogram would also export a ``<name>_created`` series (its start time) that
# nothing reads; /metrics is served from here, so this is where it is turned off.
disable_created_metrics()  # type: ignore[no-untyped-call]
HTTP_REQUESTS = Counter("bridge_http_requests_total", "HTTP requests", ["service", "method", "route", "status"])
HTTP_LATENCY = Histogram(
    "bridge_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

BULK_IN_FLIGHT = Gauge("bridge_http_bulk_requests_in_flight", "Large-bodied requests being handled", ["service"])
BULK_WAITING = Gauge("bridge_http_bulk_requests_waiting", "Large-bodied requests waiting for their turn", ["service"])
BULK_REFUSED = Counter(
    "bridge_http_bulk_requests_refused", "Large-bodied requests answered 503 after waiting too long", ["service"]
)

ReadinessCheck = Callable[[], Awaitable[bool]]


def problem(status: int, title: str, detail: str, *, slug: str, **extra: Any) -> JSONResponse:
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for code, text in (
        (400, "Bad request; or `malformed-http`: the bytes are not HTTP/1.1 (a control byte in a header)"),
        (401, "Missing or invalid bearer token"),
        (403, "Role or unit scope does not allow this"),
        (404, "Not found"),
        (409, "Conflict: a duplicate code, or a state that does not allow this"),
        (413, "Body over 1 MiB"),
        (422, "Validation failed; `errors` lists the offending fields"),
        (503, "The database or the broker does not answer; retry later"),
    )
}
# What the Idempotency-Key adds to a status on the routes that honour it.
IDEMPOTENCY_PROBLEMS = {
    400: "`idempotency-key-invalid`: the Idempotency-Key header is not a valid key",
    409: "`idempotency-request-in-flight`: the first request with this Idempotency-Key is still running",
    422: "`idempotency-key-reused`: this Idempotency-Key was used with another body",
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


class _Held(Exception):
    """Backpressure still held a large write when its wait was up."""


async def _held(scope: Scope, timeout: float) -> str | None:
    """Wait up to ``timeout`` for the service's backpressure (``shared.backpressure``), if it has one;
    why it still holds, or None. The gate lives on the runtime, which the lifespan builds."""
    app = scope.get("app")
    runtime = getattr(getattr(app, "state", None), "runtime", None)
    gate = getattr(runtime, "backpressure", None)
    if gate is None:
        return None
    behind: str | None = await gate.clear(timeout)
    return behind


class BulkAdmissionMiddleware:
    """Handles at most ``at_once`` large-bodied writes (uploads, rosters, batches) at a time; the
    others wait, unread, for up to ``wait_seconds`` and are then answered 503 with ``Retry-After``.

    A batch holds its rows, documents, events and audit entries in memory while it is written, and
    every write of a service queues for its database's one writer anyway (FerretDB, one SQLite file
    per database), so a crowd of uploads costs memory for no speed. Waiting here happens before the
    body is read, so a waiting request holds little more than its socket. Large means a
    ``Content-Length`` over ``min_bytes``, or none (a chunked body). A service with backpressure
    (``shared.backpressure``) also lets them wait while its consumers are too far behind.
    """

    def __init__(self, app: ASGIApp, service: str, at_once: int, min_bytes: int, wait_seconds: float) -> None:
        self.app = app
        self.service = service
        self.min_bytes = min_bytes
        self.wait_seconds = wait_seconds
        self._turns = asyncio.Semaphore(at_once) if at_once > 0 else None

    def _large(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return False
        length = dict(scope["headers"]).get(b"content-length")
        return length is None or not length.isdigit() or int(length) > self.min_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._turns is None or not self._large(scope):
            await self.app(scope, receive, send)
            return
        waiting = BULK_WAITING.labels(self.service)
        waiting.inc()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        try:
            behind = await _held(scope, self.wait_seconds)
            if behind is not None:
                raise _Held(behind)
            await asyncio.wait_for(self._turns.acquire(), max(0.0, deadline - loop.time()))
        except (TimeoutError, _Held) as exc:
            BULK_REFUSED.labels(self.service).inc()
            why = (
                f"{self.service} holds large writes until its events are applied: {exc}"
                if isinstance(exc, _Held)
                else f"{self.service} is writing other large requests"
            )
            busy = ServiceUnavailable(f"{why}; retry in a few seconds", slug="busy")
            resp = JSONResponse(
                busy.to_problem(scope.get("path")),
                status_code=503,
                media_type=PROBLEM_JSON,
                headers={"Retry-After": "2"},
            )
            await resp(scope, receive, send)
            return
        finally:
            waiting.dec()
        in_flight = BULK_IN_FLIGHT.labels(self.service)
        in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            in_flight.dec()
            self._turns.release()


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


class Liveness(BaseModel):
    status: Literal["ok"]
    service: str


class Readiness(BaseModel):
    status: Literal["ready", "unready"]
    checks: dict[str, Literal["ok", "down"]]


def _health_router(service: str, checks: Callable[[], dict[str, ReadinessCheck]]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness: the process is up", response_model=Liveness)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @router.get(
        "/readyz",
        summary="Readiness: Kafka and the database answer",
        response_model=Readiness,
        responses={503: {"description": "A dependency is not reachable", "model": Readiness}},
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


DOCS_ASSETS = "/docs-assets"
_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
_PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` and ReDoc at ``/redoc``, their scripts and styles served by the service
    itself (from the fastapi-offline package), so both pages work on a machine without internet."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=_ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            # No validatorUrl: Swagger UI would otherwise send the document to an outside validator.
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def _operation_id(route: APIRoute) -> str:
    """The route function's name (``record_visit``) instead of FastAPI's path-derived id."""
    return route.name


def _needs_principal(dependant: Any) -> bool:
    return any(d.call is _principal or _needs_principal(d) for d in dependant.dependencies)


def _complete_operations(routers: Sequence[APIRouter], schema: dict[str, Any]) -> None:
    """Give every operation the problems it can answer, the Idempotency-Key header where it is honoured,
    and a body schema for each documented status."""
    authenticated = {
        (route.path_format, method.lower())
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and _needs_principal(route.dependant)
        for method in route.methods or ()
    }
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses: dict[str, Any] = op.setdefault("responses", {})
            params: list[dict[str, Any]] = op.get("parameters", [])
            has_body = "requestBody" in op
            # Any request can be refused before routing, by the server's HTTP parser (shared.server).
            statuses: list[int] = [400]
            if (path, method) in authenticated:
                statuses += [401, 403, 503]
                if params or has_body:
                    statuses += [404, 422]
                if has_body:
                    statuses.append(413)
                if method.upper() in IDEMPOTENT_METHODS:
                    statuses += [409, 422]
                    op["parameters"] = [*params, IDEMPOTENCY_KEY_PARAMETER]
            else:
                op["security"] = []
            # FastAPI documents its own 422 body; ours is a problem.
            generated = responses.get("422", {}).get("content", {}).get("application/json", {})
            if "HTTPValidationError" in str(generated.get("schema", "")):
                responses["422"] = dict(PROBLEM_RESPONSES[422])
            for status in statuses:
                responses.setdefault(str(status), dict(PROBLEM_RESPONSES[status]))
            if (path, method) in authenticated and method.upper() in IDEMPOTENT_METHODS:
                for status, note in IDEMPOTENCY_PROBLEMS.items():
                    response = responses[str(status)] = dict(responses[str(status)])
                    response["description"] = f"{response['description']}; or {note}"
            success = next(
                (r["content"] for code, r in sorted(responses.items()) if code.startswith("2") and r.get("content")),
                None,
            )
            # A page (HTML) answers its own errors as pages, except the ones given before it runs (400
            # from the server, 422 from validation); every other route answers problems.
            page = success is not None and not any("json" in media for media in success)
            for code, response in responses.items():
                if "content" in response or code == "204" or code.startswith("3"):
                    continue
                if code.startswith("2") and success is not None:
                    response["content"] = success
                elif code[0] in "45":
                    response["content"] = success if page and code not in ("400", "422") else _PROBLEM_CONTENT
            op["responses"] = dict(sorted(responses.items()))
    components = schema.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in orjson.dumps(schema.get("paths", {})).decode():
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)


@dataclass(frozen=True)
class BulkAdmission:
    """How many large-bodied writes a process handles at once (see :class:`BulkAdmissionMiddleware`)."""

    at_once: int
    min_bytes: int
    wait_seconds: float

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> BulkAdmission:
        return cls(settings.bulk_requests_at_once, settings.bulk_request_min_bytes, settings.bulk_wait_seconds)


def create_app(
    *,
    service: str,
    title: str,
    description: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    routers: Sequence[APIRouter],
    max_body_bytes: int = 1024 * 1024,
    version: str = "1.0.0",
    bulk: BulkAdmission | None = None,
) -> FastAPI:
    """Build a service app. The lifespan must set ``app.state.runtime`` (a :class:`Runtime`)."""
    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=_operation_id,
        # Request spans (FastAPI's own) when tracing is configured; nothing at all otherwise.
        telemetry=fastapi_telemetry(),
    )
    _install_problem_handlers(app)
    _install_docs(app)
    app.add_middleware(IdempotencyMiddleware, subject_of=_subject_of)
    if bulk is not None:
        app.add_middleware(
            BulkAdmissionMiddleware,
            service=service,
            at_once=bulk.at_once,
            min_bytes=bulk.min_bytes,
            wait_seconds=bulk.wait_seconds,
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    # Outside the idempotency store, which keeps and replays bodies as the handler made them. Only
    # large bodies and streamed ones (a province's report table of teams is ~50 MB of JSON), so the
    # ordinary small answers cost no compression.
    app.add_middleware(
        GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=6, exclude_content_types=GZIP_EXCLUDED
    )
    app.add_middleware(RequestContextMiddleware, service=service)
    included = [_health_router(service, lambda: app.state.runtime.readiness_checks()), catalog_router(service)]
    included += routers
    for r in included:
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
        _complete_operations(included, schema)
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


async def _subject_of(scope: Scope) -> str | None:
    """The verified token's subject, for the idempotency scope; None lets the route answer the 401."""
    header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    authenticator: Authenticator = scope["app"].state.runtime.authenticator
    try:
        return authenticator.decode(token).sub
    except ProblemError:
        return None


_ISO_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def _iso_text(value: object) -> object:
    """Only ISO 8601 text (or a datetime) for a date-time parameter: pydantic would also read ``89``
    as seconds since 1970, which the OpenAPI's ``date-time`` format refuses (schemathesis found it)."""
    if isinstance(value, datetime) or (isinstance(value, str) and _ISO_DATE_TIME.match(value)):
        return value
    raise ValueError("an ISO 8601 date-time with its offset, such as 2025-07-14T09:00:00+07:00")


IsoDateTime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]
"""A time zone-aware date-time given as ISO 8601 text, for query parameters."""
