"""The event catalogue is a valid AsyncAPI 3.0.0 document, by the official JSON Schema.

The schema comes from npm's ``@asyncapi/specs`` (the AsyncAPI Initiative's own package), fetched and
checksummed by ``make setup`` into the cache; the test itself never goes to the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from shared.catalog import events_dir

REPO = Path(__file__).resolve().parents[1]


def _pinned(name: str) -> str:
    match = re.search(rf"^export {name}=(\S+)$", (REPO / "scripts/versions.sh").read_text(), re.MULTILINE)
    assert match, f"{name} is not pinned in scripts/versions.sh"
    return match.group(1)


def _no_network(uri: str) -> Any:
    raise AssertionError(f"the schema refers outside itself ({uri}): the test must stay offline")


@pytest.fixture(scope="module")
def validator() -> Any:
    cache = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "digital-bridge"
    path = cache / f"asyncapi-specs-{_pinned('ASYNCAPI_SPECS_VERSION')}" / "3.0.0.json"
    assert path.exists(), f"{path} is missing: run `make setup` (it fetches the schema with npm)"
    raw = path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == _pinned("ASYNCAPI_SCHEMA_SHA256")
    return jsonschema_rs.Draft7Validator(json.loads(raw), retriever=_no_network)


def _as_json(doc: Any) -> Any:
    # YAML turns unquoted dates into date objects; JSON Schema sees the text a JSON reader would.
    return json.loads(json.dumps(doc, default=str))


def test_committed_catalogue_is_valid_asyncapi_3(validator: Any) -> None:
    doc = _as_json(yaml.safe_load((events_dir() / "asyncapi.yaml").read_text(encoding="utf-8")))
    assert doc["asyncapi"] == "3.0.0"
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors[:10]


def test_the_schema_rejects_what_asyncapi_3_forbids(validator: Any) -> None:
    doc = _as_json(yaml.safe_load((events_dir() / "asyncapi.yaml").read_text(encoding="utf-8")))
    channel = next(iter(doc["channels"]))
    broken = [
        {k: v for k, v in doc.items() if k != "info"},
        {**doc, "channels": {**doc["channels"], channel: {**doc["channels"][channel], "address": 42}}},
        {**doc, "operations": {"publish": {"action": "publish", "channel": {"$ref": "#/channels/x"}}}},
    ]
    for bad in broken:
        assert not validator.is_valid(bad)


@pytest.mark.parametrize("service", [None, "registry", "visits", "training", "metrics"])
def test_each_served_catalogue_is_valid_asyncapi_3(validator: Any, service: str | None) -> None:
    """``GET /v1/events/catalog`` serves a producing service's part of the document: still valid."""
    from shared.catalog import asyncapi_document

    doc = _as_json(asyncapi_document(service))
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors[:10]
