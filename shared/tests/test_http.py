"""The shared HTTP layer: problem+json, limits, idempotency keys, auth and readiness."""

from __future__ import annotations

import pytest

from shared.infra import FerretDB, KafkaBroker
from shared.testing import running_app, token, wait_until

from .sample_app import SampleSettings, build_app

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]


async def test_problem_json_for_validation_unknown_route_oversize_and_auth(make_settings) -> None:
    async with running_app(build_app(make_settings(SampleSettings))) as client:
        r = await client.post("/v1/units", json={"code": ""}, headers=token())
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        fields = {e["field"] for e in r.json()["errors"]}
        assert fields == {"code", "name"}

        r = await client.get("/v1/nowhere")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 404

        r = await client.post("/v1/units", content=b"x" * (1024 * 1024 + 1), headers=token())
        assert r.status_code == 413
        assert r.json()["title"] == "Request body too large"

        r = await client.post("/v1/units", json={"code": "QN", "name": "Quảng Ninh"})
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"

        r = await client.post("/v1/units", json={"code": "QN", "name": "Quảng Ninh"}, headers=token("viewer", "QN"))
        assert r.status_code == 403
        assert "admin" in r.json()["detail"]

        r = await client.post(
            "/v1/units", json={"code": "QN", "name": "Quảng Ninh"}, headers={"Authorization": "Bearer not-a-jwt"}
        )
        assert r.status_code == 401


async def test_idempotency_key_replays_and_rejects_a_different_body(make_settings) -> None:
    async with running_app(build_app(make_settings(SampleSettings))) as client:
        h = {**token(), "Idempotency-Key": "k-1"}
        first = await client.post("/v1/units", json={"code": "QN", "name": "Tỉnh Quảng Ninh"}, headers=h)
        again = await client.post("/v1/units", json={"code": "QN", "name": "Tỉnh Quảng Ninh"}, headers=h)
        other = await client.post("/v1/units", json={"code": "QN2", "name": "Khác"}, headers=h)
    assert first.status_code == 201
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert other.status_code == 422
    assert other.json()["type"].endswith("idempotency-key-reused")


async def test_readyz_follows_the_database(kafka: KafkaBroker, own_ferretdb: FerretDB, run_id: str) -> None:
    settings = SampleSettings(
        kafka_bootstrap=kafka.bootstrap, mongo_url=own_ferretdb.url, mongo_db=f"r_{run_id}", log_json=False
    )
    async with running_app(build_app(settings)) as client:

        async def status(code: int) -> bool:
            return (await client.get("/readyz")).status_code == code

        await wait_until(lambda: status(200))
        own_ferretdb.stop()
        await wait_until(lambda: status(503))
        body = (await client.get("/readyz")).json()
        assert body["checks"] == {"mongo": "down", "kafka": "ok"}
        own_ferretdb.start()
        await wait_until(lambda: status(200), timeout=30)
        assert (await client.get("/healthz")).status_code == 200
