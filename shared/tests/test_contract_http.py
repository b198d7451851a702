"""``GET /v1/events/catalog``: every service serves its part of the event catalogue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from shared.catalog import asyncapi_document, catalog_router
from shared.contracts import TOPIC_OF_TYPE
from shared.testing import running_app
from shared.topics import EVENT_TOPICS, REGISTRY_TOPIC, TRAINING_TOPIC, VISITS_TOPIC

from .sample_app import SampleSettings, build_app


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolves(doc: dict[str, Any], ref: str) -> bool:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


async def _catalog_of(service: str) -> dict[str, Any]:
    app = FastAPI()
    app.include_router(catalog_router(service))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        r = await client.get("/v1/events/catalog")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    return body


@pytest.mark.parametrize(
    ("service", "topic"), [("registry", REGISTRY_TOPIC), ("visits", VISITS_TOPIC), ("training", TRAINING_TOPIC)]
)
async def test_a_producer_serves_only_its_own_topic_and_everything_it_references(service: str, topic: str) -> None:
    doc = await _catalog_of(service)
    assert [c["address"] for c in doc["channels"].values()] == [topic]
    assert set(doc["components"]["messages"]) == {t for t, tt in TOPIC_OF_TYPE.items() if tt == topic}
    assert len(doc["operations"]) == 1
    refs = list(_refs(doc))
    assert refs, "the document references its messages and schemas"
    assert [r for r in refs if not _resolves(doc, r)] == []
    full = asyncapi_document()
    assert len(doc["components"]["schemas"]) < len(full["components"]["schemas"])


async def test_metrics_consumes_everything_so_it_serves_the_whole_catalogue() -> None:
    doc = await _catalog_of("metrics")
    assert doc == asyncapi_document()
    assert {c["address"] for c in doc["channels"].values()} >= set(EVENT_TOPICS)


@pytest.mark.kafka
@pytest.mark.mongo
async def test_sample_service_serves_the_full_catalogue_without_a_token(make_settings) -> None:
    async with running_app(build_app(make_settings(SampleSettings))) as client:
        r = await client.get("/v1/events/catalog")
        openapi = (await client.get("/openapi.json")).json()
    assert r.status_code == 200
    assert r.json() == asyncapi_document()
    assert "/v1/events/catalog" in openapi["paths"]
