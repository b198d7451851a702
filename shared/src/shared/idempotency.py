"""``Idempotency-Key`` as draft-ietf-httpapi-idempotency-key-header describes it, stored in Mongo.

A client that may retry a POST, PUT or PATCH sends ``Idempotency-Key: "<unique value>"`` (a
structured-field string; a bare token is accepted too). The first request with a key runs; its
response (any status below 500) is kept for :data:`DEFAULT_TTL_SECONDS` and replayed, with
``Idempotent-Replayed: true``, to every retry with the same key and the same request. Then:

- the same key with another body or query string is a 422 ``idempotency-key-reused`` problem;
- the same key while the first request is still running is a 409 ``idempotency-request-in-flight``
  problem with ``Retry-After``;
- a key older than its expiry is forgotten: the next request with it runs as a new one;
- a 5xx, or a request that never finished, keeps nothing, so a retry runs again.

Keys are scoped by the caller's subject (the token's ``sub``) and the route, not by the token
itself, so a retry sent after the token was renewed is still recognised. The state lives in the
service's database, so every replica sees the same keys; each entry is one document looked up by
``_id`` (the only lookup FerretDB answers without scanning the collection).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import PROBLEM_BASE, ProblemError
from shared.logging import get_logger

log = get_logger(__name__)

HEADER = "Idempotency-Key"
COLLECTION = "idempotency_keys"
METHODS = frozenset({"POST", "PUT", "PATCH"})
DEFAULT_TTL_SECONDS = 24 * 3600
# A first request still marked in flight after this long is taken for lost (its process died).
DEFAULT_LEASE_SECONDS = 60.0
# How often one process deletes the expired keys of its database.
SWEEP_EVERY_SECONDS = 600.0
MAX_KEY_LENGTH = 255
PROBLEM_JSON = "application/problem+json"

SubjectOf = Callable[[Scope], Awaitable[str | None]]

OPENAPI_PARAMETER: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry safe (draft-ietf-httpapi-idempotency-key-header): a unique value, e.g. a UUID, as a "
        'structured-field string (`"…"`; a bare token is accepted). A retry with the same key, route and body '
        "from the same subject gets the first response again, marked `Idempotent-Replayed: true`; the same key "
        "with another body is a 422 `idempotency-key-reused`, and while the first request is still running a "
        "409 `idempotency-request-in-flight`. Keys expire 24 hours after their first use "
        "(setting `idempotency_key_ttl_seconds`); a 5xx answer keeps nothing."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH + 2, "pattern": "^[ -~]+$"},
    "example": '"8e03978e-40d5-43e8-bc93-6894a57f9324"',
}


def _problem(status: int, slug: str, title: str, detail: str, path: str, **headers: str) -> Response:
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail, "instance": path}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers or None)


def parse_key(raw: bytes) -> str | None:
    """The key of an ``Idempotency-Key`` header value, or None when it is not a valid one."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not 0 < len(text) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in text):
        return None
    return text


class IdempotencyStore:
    """The keys of one service database: claim, finish, forget and sweep."""

    def __init__(
        self,
        col: AsyncCollection[dict[str, Any]],
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.col = col
        self.ttl = timedelta(seconds=ttl_seconds)
        self.lease = timedelta(seconds=lease_seconds)

    async def claim(self, doc_id: str, fingerprint: str, about: dict[str, str]) -> dict[str, Any] | None:
        """Mark the key in flight for this request, or return the entry that holds it.

        None means the caller owns the key and runs the request.
        """
        for _ in range(5):
            now = datetime.now(UTC)
            fresh = {
                "_id": doc_id,
                "state": "in_flight",
                "fingerprint": fingerprint,
                "created_at": now,
                "expires_at": now + self.ttl,
                "lease_until": now + self.lease,
                **about,
            }
            try:
                await self.col.insert_one(fresh)
                return None
            except DuplicateKeyError:
                pass
            held = await self.col.find_one({"_id": doc_id})
            if held is None:
                continue  # forgotten between our insert and read: claim again
            if held["expires_at"] <= now:
                # Expired: the key is new again. Conditional, so a claim made since is not lost.
                await self.col.delete_one({"_id": doc_id, "expires_at": held["expires_at"]})
                continue
            if held["state"] == "in_flight" and held["lease_until"] <= now and held["fingerprint"] == fingerprint:
                taken = await self.col.update_one(
                    {"_id": doc_id, "state": "in_flight", "lease_until": held["lease_until"]},
                    {"$set": {"lease_until": now + self.lease}},
                )
                if taken.modified_count:
                    return None
                continue
            return held
        raise RuntimeError(f"idempotency key {doc_id} kept changing")

    async def finish(self, doc_id: str, status: int, body: bytes, headers: dict[str, str]) -> None:
        await self.col.update_one(
            {"_id": doc_id}, {"$set": {"state": "done", "status": status, "body": body, "headers": headers}}
        )

    async def forget(self, doc_id: str) -> None:
        await self.col.delete_one({"_id": doc_id})

    async def sweep(self) -> int:
        """Delete every expired key; returns how many."""
        result = await self.col.delete_many({"expires_at": {"$lte": datetime.now(UTC)}})
        return result.deleted_count


class IdempotencyMiddleware:
    """Applies :class:`IdempotencyStore` to every POST, PUT and PATCH that carries the header.

    ``subject_of`` names the authenticated caller of a request, or None (then the request runs as if
    it had no key, and the route answers its 401).
    """

    def __init__(
        self,
        app: ASGIApp,
        subject_of: SubjectOf,
        *,
        ttl_seconds: float | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.app = app
        self.subject_of = subject_of
        self.ttl_seconds = ttl_seconds
        self.lease_seconds = lease_seconds
        self._store: IdempotencyStore | None = None
        self._last_sweep = time.monotonic()
        self._sweeping: asyncio.Task[None] | None = None

    def store(self, app: FastAPI) -> IdempotencyStore:
        runtime = app.state.runtime
        if self._store is None or self._store.col.database is not runtime.db:
            ttl = self.ttl_seconds
            if ttl is None:
                ttl = float(runtime.settings.idempotency_key_ttl_seconds)
            self._store = IdempotencyStore(runtime.db[COLLECTION], ttl_seconds=ttl, lease_seconds=self.lease_seconds)
        return self._store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS:
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope["headers"] if k == b"idempotency-key"), None)
        if raw is None:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        key = parse_key(raw)
        if key is None:
            resp = _problem(
                400,
                "idempotency-key-invalid",
                "Idempotency-Key is not valid",
                f"send 1 to {MAX_KEY_LENGTH} printable ASCII characters, as a quoted string",
                path,
            )
            await resp(scope, receive, send)
            return
        subject = await self.subject_of(scope)
        if subject is None:
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        try:
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
        except ProblemError as exc:  # a streamed body over the size limit: outside the app's handlers here
            too_large = JSONResponse(exc.to_problem(path), status_code=exc.status, media_type=PROBLEM_JSON)
            await too_large(scope, receive, send)
            return

        method: str = scope["method"]
        doc_id = hashlib.sha256("\x1f".join((subject, method, path, key)).encode()).hexdigest()
        digest = hashlib.sha256(scope.get("query_string", b""))
        digest.update(b"\x1f")
        digest.update(body)
        fingerprint = digest.hexdigest()
        store = self.store(scope["app"])
        self._maybe_sweep(store)
        held = await store.claim(doc_id, fingerprint, {"subject": subject, "route": f"{method} {path}", "key": key})
        if held is not None:
            await self._answer_held(held, fingerprint, path, scope, receive, send)
            return

        sent = False

        async def replay_body() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 500
        headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def capture(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                for k, v in msg.get("headers", []):
                    name = k.decode("latin-1").lower()
                    if name in ("content-type", "location", "content-disposition"):
                        headers[name] = v.decode("latin-1")
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))
            await send(msg)

        finished = False
        try:
            await self.app(scope, replay_body, capture)
            if status < 500:
                await store.finish(doc_id, status, b"".join(chunks), headers)
                finished = True
        finally:
            if not finished:
                # Shielded: a cancelled request must still free its key for the retry.
                await asyncio.shield(store.forget(doc_id))

    async def _answer_held(
        self, held: dict[str, Any], fingerprint: str, path: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if held["fingerprint"] != fingerprint:
            resp = _problem(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was already used with a different request body; use a new key",
                path,
            )
        elif held["state"] == "in_flight":
            resp = _problem(
                409,
                "idempotency-request-in-flight",
                "Request in progress",
                "the first request with this Idempotency-Key is still being processed; retry shortly",
                path,
                **{"Retry-After": "1"},
            )
        else:
            stored: dict[str, str] = dict(held.get("headers") or {})
            media_type = stored.pop("content-type", None)
            resp = Response(
                held["body"],
                status_code=held["status"],
                media_type=media_type,
                headers={**stored, "Idempotent-Replayed": "true"},
            )
        await resp(scope, receive, send)

    def _maybe_sweep(self, store: IdempotencyStore) -> None:
        if time.monotonic() - self._last_sweep < SWEEP_EVERY_SECONDS:
            return
        if self._sweeping is not None and not self._sweeping.done():
            return
        self._last_sweep = time.monotonic()
        self._sweeping = asyncio.create_task(self._sweep(store), name="idempotency-sweep")

    async def _sweep(self, store: IdempotencyStore) -> None:
        try:
            removed = await store.sweep()
        except Exception as exc:
            log.warning("idempotency_sweep_failed", error=str(exc) or type(exc).__name__)
            return
        if removed:
            log.info("idempotency_keys_expired", removed=removed)
