"""Shared test data and helpers for the registry tests."""

from __future__ import annotations

from datetime import date
from typing import Any

import httpx

from registry.app import RegistrySettings
from shared.testing import collect_events, token
from shared.testing.support import Received
from shared.topics import REGISTRY_TOPIC

ADMIN = token("admin", sub="admin")
PROBLEM_JSON = "application/problem+json"

TREE = [
    {"code": "QN", "name": "Tỉnh Quảng Ninh", "kind": "province", "parent_code": None},
    {"code": "QN-HALONG", "name": "Phường Hạ Long", "kind": "ward", "parent_code": "QN"},
    {"code": "QN-VANDON", "name": "Đặc khu Vân Đồn", "kind": "special_zone", "parent_code": "QN"},
    {"code": "QN-BINHLIEU", "name": "Xã Bình Liêu", "kind": "commune", "parent_code": "QN"},
]


async def seed_tree(client: httpx.AsyncClient) -> int:
    """The province and three communes/wards; returns how many events that caused."""
    for unit in TREE:
        r = await client.post("/v1/units", json=unit, headers=ADMIN)
        assert r.status_code == 201, r.text
    return len(TREE)


def volunteer_body(unit_code: str = "QN-HALONG", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "full_name": "Nguyễn Thị Hương",
        "birth_year": 2001,
        "unit_code": unit_code,
        "roles": ["union_member", "student"],
        "skills": ["it", "vneid"],
        "phone": "+84 912 345 678",
        "email": "huong.nguyen@example.vn",
    }
    body.update(overrides)
    return body


def team_body(code: str, unit_code: str = "QN-HALONG", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": code,
        "name": "Đội thanh niên tình nguyện thường trực",
        "kind": "permanent",
        "unit_code": unit_code,
        "base": "Trung tâm Phục vụ hành chính công",
    }
    body.update(overrides)
    return body


async def registry_events(settings: RegistrySettings, count: int, settle: float = 1.0) -> list[Received]:
    """Every registry event of this test run; with ``settle`` it proves no extra event follows."""
    return await collect_events(
        settings.kafka_bootstrap, [settings.topic(REGISTRY_TOPIC)], count=count, timeout=30, settle=settle
    )


def assert_problem(r: httpx.Response, status: int, *, says: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    if says is not None:
        assert says in body["detail"], body["detail"]
    return body


def assert_cloudevent(received: Received, event_type: str, key: str) -> None:
    h = received.headers
    assert received.envelope.type == event_type
    assert received.envelope.key == key
    assert h["ce_specversion"] == b"1.0"
    assert h["ce_type"] == event_type.encode()
    assert h["ce_source"] == b"/registry"
    assert h["ce_id"]
    assert h["ce_time"].endswith(b"Z")
    assert h["content-type"] == b"application/json"
    assert h["ce_dataschema"] == f"https://digital-bridge.youthunion.vn/events/schemas/{event_type}.json".encode()


def this_year() -> int:
    return date.today().year  # noqa: DTZ011 - only the year matters to these tests
