"""Who may record and read what, and the filtered, paginated lists."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from shared.testing import token
from visits.schemas import local_today

from .conftest import Visits
from .factories import visit_body

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

ADMIN = token("admin")


def hl_visit(**overrides: object) -> dict[str, object]:
    return visit_body(
        team_code="HL-PERM",
        unit_code="QN-HL",
        setting="service_centre",
        area="urban",
        household_ref=None,
        households=0,
        volunteer_ids=["vol-lan"],
        **overrides,
    )


async def test_field_users_record_only_for_their_teams(seeded: Visits) -> None:
    post = seeded.client.post
    by_token = await post("/v1/visits", json=visit_body(), headers=token("field", teams=["VD-MOBILE"], sub="u1"))
    assert by_token.status_code == 201
    # No team claim, but the read model knows vol-huong is a current member of VD-MOBILE.
    by_membership = await post("/v1/visits", json=visit_body(), headers=token("field", sub="vol-huong"))
    assert by_membership.status_code == 201
    for headers in (token("field", teams=["HL-PERM"], sub="vol-lan"), token("field", sub="vol-ended")):
        r = await post("/v1/visits", json=visit_body(), headers=headers)
        assert r.status_code == 403, r.text
        assert r.json()["type"].endswith("/out-of-scope")
    stranger = token("field", teams=["HL-PERM"], sub="vol-lan")
    vid = by_token.json()["id"]
    assert (await post(f"/v1/visits/{vid}:void", json={"reason": "x"}, headers=stranger)).status_code in (403, 404)
    assert await seeded.visits().count_documents({}) == 2


async def test_managers_work_within_their_subtree_and_readers_cannot_write(seeded: Visits) -> None:
    post = seeded.client.post
    vd_manager = token("manager", unit="QN-VD", sub="manager-vd")
    hl_manager = token("manager", unit="QN-HL", sub="manager-hl")
    assert (await post("/v1/visits", json=visit_body(unit_code="QN-VD-QL"), headers=vd_manager)).status_code == 201
    assert (await post("/v1/visits", json=visit_body(), headers=hl_manager)).status_code == 403
    batch = await post("/v1/visits:batch", json={"items": [hl_visit(), visit_body()]}, headers=hl_manager)
    assert [i["status"] for i in batch.json()["items"]] == ["created", "rejected"]
    assert batch.json()["items"][1]["problem"]["status"] == 403
    for role in ("viewer", "integrator"):
        headers = token(role, unit="QN")
        assert (await post("/v1/visits", json=visit_body(), headers=headers)).status_code == 403
        assert (await post("/v1/visits:batch", json={"items": [visit_body()]}, headers=headers)).status_code == 403
    assert (await post("/v1/visits", json=visit_body())).status_code == 401
    assert await seeded.visits().count_documents({}) == 2

    hl_id = batch.json()["items"][0]["id"]
    assert (await seeded.client.get(f"/v1/visits/{hl_id}", headers=vd_manager)).status_code == 404
    assert (await seeded.client.get(f"/v1/visits/{hl_id}", headers=token("viewer", unit="QN"))).status_code == 200
    assert (await post(f"/v1/visits/{hl_id}:void", json={"reason": "x"}, headers=vd_manager)).status_code == 404
    listed = await seeded.client.get("/v1/visits", headers=hl_manager)
    assert [v["id"] for v in listed.json()["items"]] == [hl_id]


async def test_visit_list_filters_by_subtree_team_dates_and_setting_and_pages(seeded: Visits) -> None:
    today = local_today()

    def ago(days: int) -> str:
        return (today - timedelta(days=days)).isoformat()

    items = [
        visit_body(visited_on=ago(10)),
        visit_body(visited_on=ago(20), unit_code="QN-VD-QL"),
        visit_body(visited_on=ago(5), setting="service_centre", household_ref=None, households=0),
        hl_visit(visited_on=ago(3)),
    ]
    r = await seeded.client.post("/v1/visits:batch", json={"items": items}, headers=ADMIN)
    ids = [i["id"] for i in r.json()["items"]]

    async def listed(query: str) -> set[str]:
        got = await seeded.client.get(f"/v1/visits?{query}", headers=ADMIN)
        assert got.status_code == 200, got.text
        return {v["id"] for v in got.json()["items"]}

    assert await listed("unit=QN-VD") == set(ids[:3])
    assert await listed("unit=QN-VD-QL") == {ids[1]}
    assert await listed("unit=QN") == set(ids)
    assert await listed("team=HL-PERM") == {ids[3]}
    assert await listed(f"from={ago(12)}&to={ago(4)}") == {ids[0], ids[2]}
    assert await listed("setting=service_centre") == {ids[2], ids[3]}
    assert await listed("setting=service_centre&unit=QN-VD") == {ids[2]}
    assert await listed("status=voided") == set()
    assert (await seeded.client.get("/v1/visits?setting=market", headers=ADMIN)).status_code == 422

    seen: list[str] = []
    cursor = None
    for _ in range(3):
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await seeded.client.get(f"/v1/visits?{query}", headers=ADMIN)).json()
        seen += [v["id"] for v in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert cursor is None
    assert (await seeded.client.get(f"/v1/visits/{uuid.uuid4()}", headers=ADMIN)).status_code == 404
