"""The audit trail of records: who recorded, corrected, voided or accepted what, in the reader's scope."""

from __future__ import annotations

from typing import Any

import pytest

from shared.testing import token, wait_until

from .conftest import Visits
from .factories import QL, VD, joined, post_body, team, unit, visit_body, volunteer

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

ADMIN = token("admin", sub="admin")
VANDON_MANAGER = token("manager", unit="QN-VD", sub="manager-vandon")
HALONG_MANAGER = token("manager", unit="QN-HL", sub="manager-halong")
HUONG = token("field", teams=["VD-MOBILE"], sub="vol-huong")


async def audit(app: Visits, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = await app.client.get("/v1/audit", params=params, headers=headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_a_correction_shows_before_and_after_and_who_made_it_to_managers_in_scope_only(seeded: Visits) -> None:
    body = visit_body(households=1, people={"total": 3, "elderly": 2, "women": 2, "veterans": 1})
    created = await seeded.client.post("/v1/visits", json=body, headers=HUONG)
    assert created.status_code == 201, created.text
    vid = created.json()["id"]
    assert (await seeded.client.post("/v1/visits", json=body, headers=HUONG)).status_code == 200  # a re-send

    corrected = {**body, "households": 2, "people": {"total": 5, "elderly": 2, "women": 3, "veterans": 1}}
    for _ in range(2):  # the retried correction changes nothing and is not audited twice
        r = await seeded.client.post(f"/v1/visits/{vid}:correct", json=corrected, headers=VANDON_MANAGER)
        assert r.status_code == 200, r.text

    entries = await audit(seeded, VANDON_MANAGER, entity_id=vid)
    assert [e["action"] for e in entries] == ["visit.recorded", "visit.corrected"]
    recorded, correction = entries
    assert recorded["actor"] == {"sub": "vol-huong", "role": "field"}
    assert recorded["before"] is None
    assert recorded["after"] == {"status": "recorded"}
    assert correction["actor"] == {"sub": "manager-vandon", "role": "manager"}
    assert correction["entity"] == "visit"
    assert correction["unit_path"] == VD
    assert correction["before"] == {"households": 1, "people": {"total": 3, "elderly": 2, "women": 2, "veterans": 1}}
    assert correction["after"] == {"households": 2, "people": {"total": 5, "elderly": 2, "women": 3, "veterans": 1}}

    assert await audit(seeded, HALONG_MANAGER, entity_id=vid) == []
    assert [e["action"] for e in await audit(seeded, ADMIN, entity_id=vid)] == ["visit.recorded", "visit.corrected"]
    # A field user reads the changes they made themselves, not the manager's correction of them.
    assert [e["action"] for e in await audit(seeded, HUONG)] == ["visit.recorded"]
    assert [e["entity_id"] for e in await audit(seeded, ADMIN, actor="manager-vandon")] == [vid]
    viewer = await seeded.client.get("/v1/audit", headers=token("viewer", unit="QN"))
    assert viewer.status_code == 403


async def test_voids_appear_once_with_their_reason_for_visits_and_posts(seeded: Visits) -> None:
    vid = (await seeded.client.post("/v1/visits", json=visit_body(), headers=ADMIN)).json()["id"]
    pid = (await seeded.client.post("/v1/outreach", json=post_body(), headers=ADMIN)).json()["id"]
    reason = "Nhập trùng với phiếu của đội Vân Đồn"
    for _ in range(2):  # voiding twice is one change
        r = await seeded.client.post(f"/v1/visits/{vid}:void", json={"reason": reason}, headers=VANDON_MANAGER)
        assert r.status_code == 200, r.text
        r = await seeded.client.post(f"/v1/outreach/{pid}:void", json={"reason": reason}, headers=ADMIN)
        assert r.status_code == 200, r.text

    voids = await audit(seeded, ADMIN, action="visit.voided")
    assert len(voids) == 1
    assert voids[0]["entity_id"] == vid
    assert voids[0]["reason"] == reason
    assert voids[0]["before"] == {"status": "recorded"}
    assert voids[0]["after"] == {"status": "voided"}
    assert voids[0]["actor"]["sub"] == "manager-vandon"
    posts = await audit(seeded, ADMIN, entity="outreach_post")
    assert [e["action"] for e in posts] == ["outreach_post.published", "outreach_post.voided"]
    assert posts[1]["reason"] == reason
    # The post is Hạ Long's: its manager sees it, Vân Đồn's does not.
    assert len(await audit(seeded, HALONG_MANAGER, entity_id=pid)) == 2
    assert await audit(seeded, VANDON_MANAGER, entity_id=pid) == []


async def test_a_pending_record_accepted_later_is_audited_as_the_service_deciding(visits_app: Visits) -> None:
    body = visit_body(team_code="VD-NEW", volunteer_ids=["vol-hoa"])
    r = await visits_app.client.post("/v1/visits", json=body, headers=ADMIN)
    assert r.status_code == 202, r.text
    vid = r.json()["id"]
    await visits_app.registry_sends(
        unit("QN", "Tỉnh Quảng Ninh", ["QN"], kind="province"),
        unit("QN-VD", "Đặc khu Vân Đồn", VD, kind="special_zone"),
        team("VD-NEW", VD),
        volunteer("vol-hoa", VD),
        joined("VD-NEW", "vol-hoa"),
    )

    async def accepted() -> bool:
        return len(await audit(visits_app, ADMIN, entity_id=vid)) == 2

    await wait_until(accepted, timeout=20)
    held, decided = await audit(visits_app, ADMIN, entity_id=vid)
    assert held["action"] == "visit.held_pending"
    assert held["actor"] == {"sub": "admin", "role": "admin"}
    assert decided["action"] == "visit.recorded"
    assert decided["actor"] == {"sub": "visits", "role": "system"}
    assert decided["before"]["status"] == "pending"
    assert decided["after"]["status"] == "recorded"
    assert decided["unit_path"] == VD
    # Paged: one entry per page, in order, then no cursor.
    first = await visits_app.client.get("/v1/audit", params={"entity_id": vid, "limit": 1}, headers=ADMIN)
    cursor = first.json()["next_cursor"]
    assert cursor is not None
    second = await visits_app.client.get(
        "/v1/audit", params={"entity_id": vid, "limit": 1, "cursor": cursor}, headers=ADMIN
    )
    assert [e["id"] for e in first.json()["items"] + second.json()["items"]] == [held["id"], decided["id"]]
    assert second.json()["next_cursor"] is None


async def test_a_correction_that_moves_a_visit_shows_to_the_managers_of_both_units(seeded: Visits) -> None:
    body = visit_body(unit_code="QN-VD-QL")
    vid = (await seeded.client.post("/v1/visits", json=body, headers=ADMIN)).json()["id"]
    r = await seeded.client.post(f"/v1/visits/{vid}:correct", json={**body, "unit_code": "QN-VD"}, headers=ADMIN)
    assert r.status_code == 200, r.text

    quan_lan = token("manager", unit="QN-VD-QL", sub="manager-quanlan")
    entries = await audit(seeded, quan_lan, entity_id=vid)
    assert [e["action"] for e in entries] == ["visit.recorded", "visit.corrected"]
    moved = entries[1]
    assert moved["unit_path"] == VD
    assert moved["previous_unit_path"] == QL
    assert moved["before"]["unit_code"] == "QN-VD-QL"
    assert moved["after"]["unit_code"] == "QN-VD"
    assert entries[0]["previous_unit_path"] is None
    assert await audit(seeded, HALONG_MANAGER, entity_id=vid) == []


async def test_audit_times_are_iso_8601_text_only(seeded: Visits) -> None:
    # Read as seconds since 1970 before; the OpenAPI says date-time (schemathesis found it).
    for bad in ("89", "1720000000", "hôm qua"):
        r = await seeded.client.get("/v1/audit", params={"until": bad}, headers=token("admin"))
        assert r.status_code == 422, (bad, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    ok = await seeded.client.get("/v1/audit", params={"until": "2025-07-14T09:00:00+07:00"}, headers=token("admin"))
    assert ok.status_code == 200, ok.text
