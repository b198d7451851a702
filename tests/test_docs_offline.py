"""Every service's ``/docs`` (Swagger UI) and ``/redoc`` load only what the service itself serves, and its
OpenAPI document names each operation and documents a body for each status it lists."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from metrics.app import build_app as metrics_app
from registry.app import build_app as registry_app
from training.app import build_app as training_app
from visits.app import build_app as visits_app

BUILDERS: dict[str, Callable[[], FastAPI]] = {
    "registry": registry_app,
    "visits": visits_app,
    "training": training_app,
    "metrics": metrics_app,
}
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


class _Refs(HTMLParser):
    """Every URL a page makes the browser fetch: src/href attributes and quoted URLs in inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        for name, value in attrs:
            if name in ("src", "href", "spec-url", "data") and value:
                self.urls.append(value)

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.urls += re.findall(r"""(?:url|href|src)['"]?\s*[:=]\s*['"]([^'"]+)['"]""", data)
            self.urls += re.findall(r"https?://[^\s'\"]+", data)


@pytest.fixture(params=sorted(BUILDERS))
async def service(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    # The pages and assets need no database: no lifespan, so no Kafka or FerretDB here.
    app: FastAPI = BUILDERS[request.param]()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        yield client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_only_same_origin_assets(service: httpx.AsyncClient, page: str) -> None:
    r = await service.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    parser = _Refs()
    parser.feed(r.text)
    urls = set(parser.urls)
    assert urls, "the page loads nothing: the parser missed its assets"
    outside = [u for u in urls if re.match(r"^(https?:)?//", u)]
    assert outside == [], f"{page} loads from outside the service: {outside}"
    assert "/openapi.json" in urls
    for url in urls:
        asset = await service.get(url)
        assert asset.status_code == 200, url
        suffix = re.search(r"\.[a-z]+$", url)
        assert suffix is not None, url
        assert CONTENT_TYPES[suffix.group()] in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert len(asset.content) > 1000, url


async def test_swagger_ui_sends_the_document_to_no_outside_validator(service: httpx.AsyncClient) -> None:
    page = (await service.get("/docs")).text
    assert '"validatorUrl": null' in page
    redoc = (await service.get("/redoc")).text
    assert "fonts.googleapis.com" not in redoc


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


async def test_operations_have_readable_ids_and_a_schema_for_every_status(service: httpx.AsyncClient) -> None:
    schema = (await service.get("/openapi.json")).json()
    ops = _operations(schema)
    ids = [op["operationId"] for _, _, op in ops]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", i) and "_v1_" not in i for i in ids), ids
    for path, method, op in ops:
        page = "text/html" in op["responses"].get("200", {}).get("content", {})
        for status, response in op["responses"].items():
            if status[0] == "3":
                continue
            assert status == "204" or response.get("content"), f"{method} {path} {status} documents no body"
            if status[0] in "45" and not page and not (path == "/readyz" and status == "503"):
                assert list(response["content"]) == ["application/problem+json"], (method, path, status)


async def test_every_authenticated_write_documents_the_idempotency_key(service: httpx.AsyncClient) -> None:
    schema = (await service.get("/openapi.json")).json()
    writes = [
        (p, m, op) for p, m, op in _operations(schema) if m in ("post", "put", "patch") and op.get("security") != []
    ]
    assert writes
    for path, method, op in writes:
        headers = [p["name"] for p in op.get("parameters", []) if p["in"] == "header"]
        assert headers == ["Idempotency-Key"], (method, path)
        assert {"400", "401", "409", "422"} <= set(op["responses"]), (method, path)
