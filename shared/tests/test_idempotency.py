"""Idempotency-Key as draft-ietf-httpapi-idempotency-key-header describes it, on the real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field

from shared.auth import issue_token
from shared.http import CurrentPrincipal, create_app
from shared.idempotency import COLLECTION, IdempotencyStore, parse_key
from shared.runtime import Runtime
from shared.settings import DEV_JWT_SECRET, ServiceSettings
from shared.testing import running_app, token, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]


class CounterSettings(ServiceSettings):
    service_name: str = "counter"


class VisitIn(BaseModel):
    household: str = Field(max_length=64)
    people: int = Field(ge=0, le=1000)


def build_app(settings: CounterSettings) -> FastAPI:
    """A service whose POST counts how often it really ran, with a gate to hold a request in flight."""
    router = APIRouter(prefix="/v1")
    gate = asyncio.Event()
    gate.set()
    failures = {"left": 0}

    @router.post("/visits", status_code=201)
    async def record_visit(body: VisitIn, principal: CurrentPrincipal, request: Request) -> dict[str, Any]:
        await gate.wait()
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("the database fell over")
        db = request.app.state.runtime.db
        doc = await db["runs"].find_one_and_update(
            {"_id": "runs"}, {"$inc": {"n": 1}}, upsert=True, return_document=True
        )
        return {"run": doc["n"], "household": body.household, "by": principal.sub}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        app.state.runtime = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = create_app(service="counter", title="counter", description="test", lifespan=lifespan, routers=[router])
    app.state.gate = gate
    app.state.failures = failures
    return app


def renewed_token(sub: str) -> dict[str, str]:
    """Another token for the same subject (a different signature, as after a refresh)."""
    jwt = issue_token(secret=DEV_JWT_SECRET, role="field", unit="QN-VD", sub=sub, ttl=timedelta(hours=2))
    return {"Authorization": f"Bearer {jwt}"}


VISIT = {"household": "Nguyễn Thị Hương, Đặc khu Vân Đồn", "people": 3}


async def test_a_retry_after_the_token_was_renewed_replays_the_first_response(make_settings) -> None:
    async with running_app(build_app(make_settings(CounterSettings))) as client:
        key = {"Idempotency-Key": '"visit-0001"'}
        first = await client.post("/v1/visits", json=VISIT, headers={**token(sub="huong"), **key})
        retry = await client.post("/v1/visits", json=VISIT, headers={**renewed_token("huong"), **key})
        # The same key from another person is their own key.
        other = await client.post("/v1/visits", json=VISIT, headers={**token(sub="binh"), **key})
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json() == {"run": 1, "household": VISIT["household"], "by": "huong"}
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["content-type"] == "application/json"
    assert "idempotent-replayed" not in first.headers
    assert other.json()["run"] == 2


async def test_a_quoted_key_and_the_same_bare_token_are_one_key(make_settings) -> None:
    async with running_app(build_app(make_settings(CounterSettings))) as client:
        first = await client.post("/v1/visits", json=VISIT, headers={**token(), "Idempotency-Key": '"k-42"'})
        bare = await client.post("/v1/visits", json=VISIT, headers={**token(), "Idempotency-Key": "k-42"})
    assert bare.json() == first.json()
    assert bare.headers["idempotent-replayed"] == "true"


async def test_reusing_a_key_with_another_body_is_a_422_problem(make_settings) -> None:
    async with running_app(build_app(make_settings(CounterSettings))) as client:
        h = {**token(), "Idempotency-Key": '"visit-0002"'}
        await client.post("/v1/visits", json=VISIT, headers=h)
        other = await client.post("/v1/visits", json={**VISIT, "people": 4}, headers=h)
        other_query = await client.post("/v1/visits?dry=1", json=VISIT, headers=h)
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["type"].endswith("/idempotency-key-reused")
    assert other_query.status_code == 422


async def test_a_retry_while_the_first_request_runs_is_a_409_then_a_replay(make_settings) -> None:
    app = build_app(make_settings(CounterSettings))
    async with running_app(app) as client:
        h = {**token(), "Idempotency-Key": '"visit-0003"'}
        app.state.gate.clear()
        first = asyncio.create_task(client.post("/v1/visits", json=VISIT, headers=h))
        keys = app.state.runtime.db[COLLECTION]
        await wait_until(lambda: _has_in_flight(keys))
        during = await client.post("/v1/visits", json=VISIT, headers=h)
        app.state.gate.set()
        done = await first
        after = await client.post("/v1/visits", json=VISIT, headers=h)
    assert during.status_code == 409
    assert during.json()["type"].endswith("/idempotency-request-in-flight")
    assert during.headers["retry-after"] == "1"
    assert done.status_code == 201
    assert after.json() == done.json() == {**after.json(), "run": 1}


async def _has_in_flight(keys: Any) -> bool:
    return await keys.find_one({"state": "in_flight"}) is not None


async def test_keys_are_shared_by_replicas_of_a_service(make_settings) -> None:
    settings = make_settings(CounterSettings)
    one, two = build_app(settings), build_app(settings)
    async with running_app(one) as first_replica, running_app(two) as second_replica:
        h = {**token(sub="huong"), "Idempotency-Key": '"visit-0004"'}
        one.state.gate.clear()
        pending = asyncio.create_task(first_replica.post("/v1/visits", json=VISIT, headers=h))
        await wait_until(lambda: _has_in_flight(one.state.runtime.db[COLLECTION]))
        during = await second_replica.post("/v1/visits", json=VISIT, headers=h)
        one.state.gate.set()
        first = await pending
        replayed = await second_replica.post("/v1/visits", json=VISIT, headers={**renewed_token("huong"), **h})
    assert during.status_code == 409
    assert replayed.json() == first.json()
    assert replayed.headers["idempotent-replayed"] == "true"


async def test_an_expired_key_is_new_again_and_the_sweep_removes_expired_keys(make_settings) -> None:
    app = build_app(make_settings(CounterSettings))
    async with running_app(app) as client:
        h = {**token(), "Idempotency-Key": '"visit-0005"'}
        first = await client.post("/v1/visits", json=VISIT, headers=h)
        keys = app.state.runtime.db[COLLECTION]
        stored = await keys.find_one({"key": "visit-0005"})
        assert stored["expires_at"] - stored["created_at"] == timedelta(hours=24)
        past = datetime.now(UTC) - timedelta(seconds=1)
        await keys.update_one({"_id": stored["_id"]}, {"$set": {"expires_at": past}})
        again = await client.post("/v1/visits", json={**VISIT, "people": 5}, headers=h)
        assert again.status_code == 201
        assert "idempotent-replayed" not in again.headers
        assert (first.json()["run"], again.json()["run"]) == (1, 2)

        await client.post("/v1/visits", json=VISIT, headers={**token(), "Idempotency-Key": '"visit-0006"'})
        await keys.update_one({"key": "visit-0005"}, {"$set": {"expires_at": past}})
        removed = await IdempotencyStore(keys).sweep()
        left = [d["key"] async for d in keys.find({})]
    assert removed == 1
    assert left == ["visit-0006"]


async def test_a_server_error_keeps_nothing_so_the_retry_runs(make_settings) -> None:
    app = build_app(make_settings(CounterSettings))
    # Not running_app: its transport re-raises the app's exception instead of giving the 500.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        h = {**token(), "Idempotency-Key": '"visit-0007"'}
        app.state.failures["left"] = 1
        failed = await client.post("/v1/visits", json=VISIT, headers=h)
        retry = await client.post("/v1/visits", json=VISIT, headers=h)
    assert failed.status_code == 500
    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers


async def test_an_invalid_key_is_a_400_problem_and_no_key_runs_every_time(make_settings) -> None:
    async with running_app(build_app(make_settings(CounterSettings))) as client:
        too_long = await client.post("/v1/visits", json=VISIT, headers={**token(), "Idempotency-Key": "k" * 256})
        empty = await client.post("/v1/visits", json=VISIT, headers={**token(), "Idempotency-Key": '""'})
        runs = [(await client.post("/v1/visits", json=VISIT, headers=token())).json()["run"] for _ in range(2)]
        unauthenticated = await client.post("/v1/visits", json=VISIT, headers={"Idempotency-Key": '"k"'})
    assert too_long.status_code == empty.status_code == 400
    assert too_long.json()["type"].endswith("/idempotency-key-invalid")
    assert runs == [1, 2]
    assert unauthenticated.status_code == 401


def test_parse_key_takes_structured_field_strings_and_bare_tokens() -> None:
    assert parse_key(b'"8e03978e-40d5-43e8-bc93-6894a57f9324"') == "8e03978e-40d5-43e8-bc93-6894a57f9324"
    assert parse_key(b"abc") == "abc"
    assert parse_key(b'"a\\"b"') == 'a"b'
    assert parse_key("khóa".encode()) is None
    assert parse_key(b'""') is None


async def test_the_header_is_documented_on_every_route_that_honours_it(make_settings) -> None:
    app = build_app(make_settings(CounterSettings))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        schema = (await client.get("/openapi.json")).json()
    op = schema["paths"]["/v1/visits"]["post"]
    assert op["operationId"] == "record_visit"
    assert [p["name"] for p in op["parameters"] if p["in"] == "header"] == ["Idempotency-Key"]
    assert "idempotency-key-reused" in op["responses"]["422"]["description"]
    assert "idempotency-request-in-flight" in op["responses"]["409"]["description"]
    assert "24 hours" in op["parameters"][0]["description"]


async def test_a_streamed_body_over_the_limit_is_a_413_problem_with_a_key(make_settings) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b" " * 600_000

    async with running_app(build_app(make_settings(CounterSettings))) as client:
        r = await client.post(
            "/v1/visits",
            content=chunks(),
            headers={**token(), "Idempotency-Key": '"visit-0008"', "Content-Type": "application/json"},
        )
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
