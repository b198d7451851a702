"""Who may write where, who sees personal data, and that personal data never leaves in an event."""

from __future__ import annotations

import pytest

from shared.contracts import registry as ev
from shared.testing import token

from .support import ADMIN, assert_problem, registry_events, seed_tree, team_body, volunteer_body

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

HALONG_MANAGER = token("manager", "QN-HALONG", sub="manager-halong")
BINHLIEU_MANAGER = token("manager", "QN-BINHLIEU", sub="manager-binhlieu")
PROVINCE_MANAGER = token("manager", "QN", sub="manager-qn")
READERS = {role: token(role, "QN", sub=role) for role in ("viewer", "field", "integrator")}
CAMPAIGN = {"code": "PEAK30", "name": "Cao điểm 30 ngày", "starts_on": "2025-07-15", "ends_on": "2025-08-13"}


async def test_a_commune_manager_writes_only_inside_its_subtree_and_readers_only_read(client, settings) -> None:
    events = await seed_tree(client)
    for code, unit in (("HL-TT01", "QN-HALONG"), ("BL-TT01", "QN-BINHLIEU")):
        assert (await client.post("/v1/teams", json=team_body(code, unit), headers=ADMIN)).status_code == 201
    other = (await client.post("/v1/volunteers", json=volunteer_body("QN-BINHLIEU"), headers=ADMIN)).json()["id"]
    assert (await client.post("/v1/campaigns", json=CAMPAIGN, headers=ADMIN)).status_code == 201
    events += 4

    # allowed inside the subtree
    school = {"code": "QN-HALONG-TH", "name": "Trường Tiểu học Hạ Long", "kind": "school", "parent_code": "QN-HALONG"}
    assert (await client.post("/v1/units", json=school, headers=HALONG_MANAGER)).status_code == 201
    assert (await client.post("/v1/teams", json=team_body("HL-LD02"), headers=HALONG_MANAGER)).status_code == 201
    mine = await client.post("/v1/volunteers", json=volunteer_body("QN-HALONG-TH"), headers=HALONG_MANAGER)
    assert mine.status_code == 201
    own = mine.json()["id"]
    r = await client.post(
        "/v1/teams/HL-LD02/members", json={"volunteer_id": own, "since": "2025-07-01"}, headers=HALONG_MANAGER
    )
    assert r.status_code == 201
    assert (
        await client.patch("/v1/units/QN-HALONG", json={"name": "Phường Hạ Long"}, headers=HALONG_MANAGER)
    ).status_code == 200
    events += 4  # the rename changed nothing

    member = {"volunteer_id": own, "since": "2025-07-01"}
    denied = [
        ("POST", "/v1/teams", team_body("BL-LD09", "QN-BINHLIEU")),
        ("PATCH", "/v1/teams/BL-TT01", {"name": "Đội mới"}),
        ("PATCH", "/v1/teams/HL-TT01", {"unit_code": "QN-BINHLIEU"}),
        ("POST", "/v1/teams/BL-TT01:deactivate", None),
        ("POST", "/v1/units", {**school, "code": "QN-BL-TH", "parent_code": "QN-BINHLIEU"}),
        ("PATCH", "/v1/units/QN-BINHLIEU", {"name": "Xã khác"}),
        ("PATCH", "/v1/units/QN-HALONG-TH", {"parent_code": "QN-BINHLIEU"}),
        ("PATCH", "/v1/units/QN", {"name": "Tỉnh khác"}),
        ("POST", "/v1/volunteers", volunteer_body("QN-BINHLIEU")),
        ("PATCH", f"/v1/volunteers/{other}", {"skills": ["media"]}),
        ("PATCH", f"/v1/volunteers/{own}", {"unit_code": "QN-BINHLIEU"}),
        ("POST", f"/v1/volunteers/{other}:leave", None),
        ("POST", "/v1/teams/BL-TT01/members", member),
        ("DELETE", f"/v1/teams/BL-TT01/members/{own}", None),
        ("POST", "/v1/campaigns", {**CAMPAIGN, "code": "LOCAL"}),
        ("PUT", "/v1/campaigns/PEAK30/targets", {"targets": []}),
    ]
    for method, url, body in denied:
        r = await client.request(method, url, json=body, headers=HALONG_MANAGER)
        problem = assert_problem(r, 403)
        assert "outside your unit scope (QN-HALONG)" in problem["detail"], (method, url, problem)
        assert problem["type"].endswith("out-of-scope")
    province = {"code": "HN", "name": "Thành phố Hà Nội", "kind": "province", "parent_code": None}
    assert_problem(await client.post("/v1/units", json=province, headers=PROVINCE_MANAGER), 403, says="admin")

    for role, headers in READERS.items():
        for method, url, body in [*denied[:4], ("POST", "/v1/teams", team_body("HL-X", "QN-HALONG"))]:
            r = await client.request(method, url, json=body, headers=headers)
            assert_problem(r, 403, says=f"role '{role}' may not do this")
        assert (await client.get("/v1/teams", headers=headers)).status_code == 200
        assert (await client.get("/v1/units/QN", headers=headers)).status_code == 200
        assert (await client.get("/v1/campaigns/PEAK30", headers=headers)).status_code == 200
        assert (await client.get("/v1/teams/HL-LD02/members", headers=headers)).status_code == 200
    assert_problem(await client.get("/v1/teams"), 401)
    assert_problem(await client.get("/v1/volunteers", headers={"Authorization": "Bearer forged"}), 401)

    # the province's manager covers every commune and may run campaigns
    r = await client.post("/v1/campaigns", json={**CAMPAIGN, "code": "PEAK90"}, headers=PROVINCE_MANAGER)
    assert r.status_code == 201
    assert (
        await client.patch("/v1/teams/BL-TT01", json={"kind": "mobile"}, headers=PROVINCE_MANAGER)
    ).status_code == 200
    events += 2

    teams = (await client.get("/v1/teams", headers=ADMIN)).json()["items"]
    assert [(t["code"], t["unit_code"], t["active"]) for t in teams] == [
        ("BL-TT01", "QN-BINHLIEU", True),
        ("HL-LD02", "QN-HALONG", True),
        ("HL-TT01", "QN-HALONG", True),
    ]
    assert len((await client.get("/v1/volunteers", headers=ADMIN)).json()["items"]) == 2
    got = await registry_events(settings, count=events)
    assert len(got) == events


async def test_personal_data_is_masked_for_others_and_never_in_an_event(client, settings) -> None:
    events = await seed_tree(client)
    huong = volunteer_body("QN-HALONG", full_name="Nguyễn Thị Hương", phone="0912345678", email="huong@doan.vn")
    tuan = volunteer_body("QN-BINHLIEU", full_name="Hoàng Minh Tuấn", phone="0987654321", email="tuan@doan.vn")
    huong_id = (await client.post("/v1/volunteers", json=huong, headers=ADMIN)).json()["id"]
    r = await client.post("/v1/volunteers", json=tuan, headers=BINHLIEU_MANAGER)
    assert r.status_code == 201
    assert r.json()["phone"] == "0987654321"  # the registering manager sees it
    tuan_id = r.json()["id"]
    assert (await client.post("/v1/teams", json=team_body("HL-TT01"), headers=ADMIN)).status_code == 201
    joined = await client.post(
        "/v1/teams/HL-TT01/members", json={"volunteer_id": huong_id, "since": "2025-07-01"}, headers=ADMIN
    )
    assert joined.status_code == 201
    r = await client.patch(
        f"/v1/volunteers/{huong_id}",
        json={"phone": "0911222333", "full_name": "Nguyễn Thị Thu Hương"},
        headers=HALONG_MANAGER,
    )
    assert r.json()["phone"] == "0911222333"
    assert r.json()["full_name"] == "Nguyễn Thị Thu Hương"
    assert (await client.post(f"/v1/volunteers/{tuan_id}:leave", headers=BINHLIEU_MANAGER)).status_code == 200
    events += 6
    secrets = ["Nguyễn Thị Hương", "Nguyễn Thị Thu Hương", "Hoàng Minh Tuấn", "0912345678", "0911222333", "0987654321"]
    secrets += ["huong@doan.vn", "tuan@doan.vn"]

    def shows(v: dict[str, object], full_name: str, phone: str, email: str) -> None:
        assert (v["full_name"], v["phone"], v["email"], v["personal_data_masked"]) == (full_name, phone, email, False)

    def masked(v: dict[str, object]) -> None:
        assert (v["full_name"], v["phone"], v["email"], v["personal_data_masked"]) == ("***", "***", "***", True)
        assert v["skills"]  # the rest stays readable
        assert v["birth_year"] == 2001

    for headers in (ADMIN, HALONG_MANAGER, PROVINCE_MANAGER):
        shows(
            (await client.get(f"/v1/volunteers/{huong_id}", headers=headers)).json(),
            "Nguyễn Thị Thu Hương",
            "0911222333",
            "huong@doan.vn",
        )
    for headers in (ADMIN, BINHLIEU_MANAGER, PROVINCE_MANAGER):
        shows(
            (await client.get(f"/v1/volunteers/{tuan_id}", headers=headers)).json(),
            "Hoàng Minh Tuấn",
            "0987654321",
            "tuan@doan.vn",
        )
    masked((await client.get(f"/v1/volunteers/{huong_id}", headers=BINHLIEU_MANAGER)).json())
    masked((await client.get(f"/v1/volunteers/{tuan_id}", headers=HALONG_MANAGER)).json())
    for headers in READERS.values():
        for vid in (huong_id, tuan_id):
            r = await client.get(f"/v1/volunteers/{vid}", headers=headers)
            masked(r.json())
            assert not any(s in r.text for s in secrets)
        r = await client.get("/v1/volunteers", headers=headers)
        assert len(r.json()["items"]) == 2
        for v in r.json()["items"]:
            masked(v)
        assert not any(s in r.text for s in secrets)
        r = await client.get("/v1/volunteers", params={"team": "HL-TT01"}, headers=headers)
        assert [v["id"] for v in r.json()["items"]] == [huong_id]
        assert not any(s in r.text for s in secrets)
    listed = (await client.get("/v1/volunteers", headers=HALONG_MANAGER)).json()["items"]
    assert {v["id"]: v["personal_data_masked"] for v in listed} == {huong_id: False, tuan_id: True}

    # An unset contact field stays null when masked, so nothing is suggested that is not there.
    r = await client.post("/v1/volunteers", json=volunteer_body(phone=None, email=None), headers=ADMIN)
    events += 1
    bare = (await client.get(f"/v1/volunteers/{r.json()['id']}", headers=READERS["viewer"])).json()
    assert (bare["full_name"], bare["phone"], bare["email"]) == ("***", None, None)

    got = await registry_events(settings, count=events)
    assert len(got) == events
    volunteer_events = [e for e in got if ".volunteer." in e.envelope.type]
    assert {e.envelope.type for e in volunteer_events} == {
        ev.VOLUNTEER_REGISTERED_V2,
        ev.VOLUNTEER_UPDATED_V2,
        ev.VOLUNTEER_LEFT,
    }
    for e in got:
        raw = e.envelope.value().decode()
        assert not any(s in raw for s in secrets), raw
    allowed = {
        "volunteer_id",
        "unit_code",
        "unit_path",
        "roles",
        "skills",
        "age_band",  # never the birth year (contract v2)
        "active",
        "previous_unit_path",
        "previous_roles",
        "previous_skills",
    }
    for e in volunteer_events:
        assert set(e.envelope.data) <= allowed, e.envelope.data
        assert e.envelope.data.get("age_band", "16_30") in {"under_16", "16_30", "31_45", "46_60", "over_60"}
