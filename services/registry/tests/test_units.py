"""The organisation tree: creating, reading, listing and moving units, and the rules that guard it."""

from __future__ import annotations

import unicodedata

import pytest

from shared.contracts import registry as ev

from .support import (
    ADMIN,
    assert_cloudevent,
    assert_problem,
    registry_events,
    seed_tree,
    team_body,
    volunteer_body,
)

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]


async def test_created_units_are_readable_listable_page_by_page_and_each_emits_one_unit_created(
    client, settings
) -> None:
    await seed_tree(client)
    school = {"code": "QN-HALONG-THPT", "name": "Trường THPT Hòn Gai", "kind": "school", "parent_code": "QN-HALONG"}
    r = await client.post("/v1/units", json=school, headers=ADMIN)
    assert r.status_code == 201
    assert r.json() == {
        **school,
        "path": ["QN", "QN-HALONG", "QN-HALONG-THPT"],
        "status": "active",
        "successor_code": None,
        "successors": [],
        "closed_on": None,
    }

    r = await client.get("/v1/units/QN-VANDON", headers=ADMIN)
    assert r.json()["name"] == "Đặc khu Vân Đồn"
    assert r.json()["path"] == ["QN", "QN-VANDON"]

    r = await client.get("/v1/units", params={"parent_code": "QN"}, headers=ADMIN)
    assert [u["code"] for u in r.json()["items"]] == ["QN-BINHLIEU", "QN-HALONG", "QN-VANDON"]
    r = await client.get("/v1/units", params={"kind": "school"}, headers=ADMIN)
    assert [u["code"] for u in r.json()["items"]] == ["QN-HALONG-THPT"]

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/units", params=params, headers=ADMIN)).json()
        assert len(page["items"]) <= 2
        seen += [u["code"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(["QN", "QN-HALONG", "QN-VANDON", "QN-BINHLIEU", "QN-HALONG-THPT"])

    assert_problem(await client.get("/v1/units/QN-NOWHERE", headers=ADMIN), 404)
    assert_problem(await client.get("/v1/units", params={"limit": 201}, headers=ADMIN), 422)
    assert_problem(await client.get("/v1/units"), 401)

    got = await registry_events(settings, count=5)
    assert len(got) == 5
    by_key = {e.envelope.key: e for e in got}
    for code in by_key:
        assert_cloudevent(by_key[code], ev.UNIT_CREATED, code)
    assert by_key["QN-HALONG-THPT"].envelope.data == {
        "code": "QN-HALONG-THPT",
        "name": "Trường THPT Hòn Gai",
        "kind": "school",
        "parent_code": "QN-HALONG",
        "path": ["QN", "QN-HALONG", "QN-HALONG-THPT"],
    }
    assert by_key["QN"].envelope.data["parent_code"] is None


async def test_names_are_stored_in_nfc(client) -> None:
    await seed_tree(client)
    decomposed = unicodedata.normalize("NFD", "Phường Cẩm Phả")
    r = await client.post(
        "/v1/units", json={"code": "QN-CAMPHA", "name": decomposed, "kind": "ward", "parent_code": "QN"}, headers=ADMIN
    )
    assert r.json()["name"] == unicodedata.normalize("NFC", "Phường Cẩm Phả")
    assert r.json()["name"] != decomposed


async def test_tree_violations_are_rejected_with_problem_json_and_nothing_written(client, settings) -> None:
    events = await seed_tree(client)
    unit = {"code": "QN-X", "name": "Xã Quảng Tân", "kind": "commune", "parent_code": "QN"}

    body = assert_problem(
        await client.post("/v1/units", json={**unit, "parent_code": "QN-NOWHERE"}, headers=ADMIN),
        422,
        says="QN-NOWHERE",
    )
    assert body["type"].endswith("unknown-unit")
    assert_problem(await client.post("/v1/units", json={**unit, "code": "QN-HALONG"}, headers=ADMIN), 409)
    assert_problem(await client.post("/v1/units", json={**unit, "kind": "district"}, headers=ADMIN), 422, says="kind")
    assert_problem(await client.post("/v1/units", json={**unit, "parent_code": None}, headers=ADMIN), 422)
    assert_problem(await client.post("/v1/units", json={**unit, "code": "QN/X"}, headers=ADMIN), 422)
    assert_problem(await client.post("/v1/units", json={**unit, "name": "   "}, headers=ADMIN), 422)
    second_root = {"code": "HN", "name": "Thành phố Hà Nội", "kind": "province", "parent_code": None}
    assert_problem(await client.post("/v1/units", json=second_root, headers=ADMIN), 409, says="one root")
    assert_problem(await client.post("/v1/units", json={**second_root, "parent_code": "QN"}, headers=ADMIN), 422)
    r = await client.post("/v1/units", content=b"{" + b" " * (1024 * 1024) + b"}", headers=ADMIN)
    assert_problem(r, 413)

    # PATCHes that would break the tree
    school = {"code": "QN-HALONG-TH", "name": "Trường Tiểu học Hạ Long", "kind": "school", "parent_code": "QN-HALONG"}
    assert (await client.post("/v1/units", json=school, headers=ADMIN)).status_code == 201
    events += 1
    body = assert_problem(
        await client.patch("/v1/units/QN-HALONG", json={"parent_code": "QN-HALONG-TH"}, headers=ADMIN), 422
    )
    assert "cycle" in body["detail"]
    assert_problem(await client.patch("/v1/units/QN-HALONG", json={"parent_code": "QN-HALONG"}, headers=ADMIN), 422)
    assert_problem(await client.patch("/v1/units/QN", json={"kind": "ward"}, headers=ADMIN), 422)
    assert_problem(await client.patch("/v1/units/QN-HALONG", json={"parent_code": None}, headers=ADMIN), 422)
    assert_problem(await client.patch("/v1/units/QN-HALONG", json={"kind": "province"}, headers=ADMIN), 422)
    assert_problem(await client.patch("/v1/units/QN-HALONG", json={"name": None}, headers=ADMIN), 422)
    assert_problem(await client.patch("/v1/units/QN-HALONG", json={"parent_code": "QN-NO"}, headers=ADMIN), 422)
    assert_problem(await client.patch("/v1/units/QN-NO", json={"name": "Không có"}, headers=ADMIN), 404)

    units = (await client.get("/v1/units", headers=ADMIN)).json()["items"]
    assert [u["code"] for u in units] == ["QN", "QN-BINHLIEU", "QN-HALONG", "QN-HALONG-TH", "QN-VANDON"]
    assert next(u for u in units if u["code"] == "QN-HALONG")["path"] == ["QN", "QN-HALONG"]
    got = await registry_events(settings, count=events)
    assert len(got) == events
    assert {e.envelope.type for e in got} == {ev.UNIT_CREATED}


async def test_moving_a_unit_repaths_its_subtree_teams_and_volunteers_with_one_event_each(client, settings) -> None:
    await seed_tree(client)
    for unit in (
        {"code": "QN-TIENYEN", "name": "Xã Tiên Yên", "kind": "commune", "parent_code": "QN"},
        {"code": "QN-TIENYEN-THCS", "name": "Trường THCS Tiên Yên", "kind": "school", "parent_code": "QN-TIENYEN"},
    ):
        assert (await client.post("/v1/units", json=unit, headers=ADMIN)).status_code == 201
    team = await client.post("/v1/teams", json=team_body("TY-01", "QN-TIENYEN-THCS"), headers=ADMIN)
    vol = await client.post("/v1/volunteers", json=volunteer_body("QN-TIENYEN-THCS"), headers=ADMIN)
    assert team.status_code == vol.status_code == 201
    volunteer_id = vol.json()["id"]
    created = 4 + 2 + 2

    r = await client.patch("/v1/units/QN-TIENYEN", json={"parent_code": "QN-BINHLIEU"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == ["QN", "QN-BINHLIEU", "QN-TIENYEN"]
    school = (await client.get("/v1/units/QN-TIENYEN-THCS", headers=ADMIN)).json()
    assert school["path"] == ["QN", "QN-BINHLIEU", "QN-TIENYEN", "QN-TIENYEN-THCS"]
    moved_team = (await client.get("/v1/teams/TY-01", headers=ADMIN)).json()
    assert moved_team["unit_path"] == school["path"]
    moved_vol = (await client.get(f"/v1/volunteers/{volunteer_id}", headers=ADMIN)).json()
    assert moved_vol["unit_path"] == school["path"]
    in_binhlieu = (await client.get("/v1/teams", params={"unit": "QN-BINHLIEU"}, headers=ADMIN)).json()
    assert [t["code"] for t in in_binhlieu["items"]] == ["TY-01"]

    # Repeating the move, or a PATCH that changes nothing, writes nothing and emits nothing.
    again = await client.patch("/v1/units/QN-TIENYEN", json={"parent_code": "QN-BINHLIEU"}, headers=ADMIN)
    assert again.json() == r.json()
    same = await client.patch("/v1/units/QN-TIENYEN", json={"name": "Xã Tiên Yên"}, headers=ADMIN)
    assert same.status_code == 200
    renamed = await client.patch("/v1/units/QN-VANDON", json={"name": "Đặc khu Vân Đồn mới"}, headers=ADMIN)
    assert renamed.json()["name"] == "Đặc khu Vân Đồn mới"

    got = await registry_events(settings, count=created + 5)
    assert len(got) == created + 5
    changed = [e for e in got if e.envelope.type in (ev.UNIT_UPDATED, ev.TEAM_UPDATED, ev.VOLUNTEER_UPDATED_V2)]
    assert len(changed) == 5
    updates = {(e.envelope.type, e.envelope.key): e for e in changed}
    assert set(updates) == {
        (ev.UNIT_UPDATED, "QN-TIENYEN"),
        (ev.UNIT_UPDATED, "QN-TIENYEN-THCS"),
        (ev.TEAM_UPDATED, "TY-01"),
        (ev.VOLUNTEER_UPDATED_V2, volunteer_id),
        (ev.UNIT_UPDATED, "QN-VANDON"),
    }
    moved = updates[(ev.UNIT_UPDATED, "QN-TIENYEN")].envelope.data
    assert moved["previous_path"] == ["QN", "QN-TIENYEN"]
    assert moved["parent_code"] == "QN-BINHLIEU"
    child = updates[(ev.UNIT_UPDATED, "QN-TIENYEN-THCS")].envelope.data
    assert child["previous_path"] == ["QN", "QN-TIENYEN", "QN-TIENYEN-THCS"]
    assert child["path"] == school["path"]
    team_event = updates[(ev.TEAM_UPDATED, "TY-01")].envelope.data
    assert team_event["previous_unit_path"] == ["QN", "QN-TIENYEN", "QN-TIENYEN-THCS"]
    assert team_event["unit_path"] == school["path"]
    assert team_event["previous_kind"] == team_event["kind"] == "permanent"
    assert (team_event["members"], team_event["previous_active"], team_event["active"]) == (0, True, True)
    vol_event = updates[(ev.VOLUNTEER_UPDATED_V2, volunteer_id)].envelope.data
    assert vol_event["unit_path"] == school["path"]
    assert vol_event["active"] is True
    assert (vol_event["previous_roles"], vol_event["previous_skills"]) == (vol_event["roles"], vol_event["skills"])
    rename = updates[(ev.UNIT_UPDATED, "QN-VANDON")].envelope.data
    assert rename["path"] == rename["previous_path"] == ["QN", "QN-VANDON"]
