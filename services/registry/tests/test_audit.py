"""The registry's audit trail: unit, team, volunteer and target changes with who made them, in scope."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared.testing import token

from .support import ADMIN, seed_tree, team_body, volunteer_body

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

PROVINCE_MANAGER = token("manager", unit="QN", sub="manager-qn")
HALONG_MANAGER = token("manager", unit="QN-HALONG", sub="manager-halong")
VANDON_MANAGER = token("manager", unit="QN-VANDON", sub="manager-vandon")
PEAK90 = {
    "code": "PEAK90",
    "name": "Cao điểm 90 ngày hỗ trợ dịch vụ công trực tuyến",
    "starts_on": "2025-07-01",
    "ends_on": "2025-09-28",
    "targets": [
        {"indicator": "households_visited", "unit_code": "QN-HALONG", "value": 1000},
        {"indicator": "people_supported", "unit_code": "QN-VANDON", "value": 12000},
    ],
}


async def audit(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/v1/audit", params=params, headers=headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_a_target_change_shows_the_changed_targets_once_to_province_readers_only(client) -> None:
    await seed_tree(client)
    assert (await client.post("/v1/campaigns", json=PEAK90, headers=ADMIN)).status_code == 201
    raised = [
        {"indicator": "households_visited", "unit_code": "QN-HALONG", "value": 1200},
        {"indicator": "people_supported", "unit_code": "QN-VANDON", "value": 12000},
        {"indicator": "courses", "unit_code": "QN", "value": 261},
    ]
    for _ in range(2):  # the same targets again change nothing and are not audited twice
        r = await client.put("/v1/campaigns/PEAK90/targets", json={"targets": raised}, headers=PROVINCE_MANAGER)
        assert r.status_code == 200, r.text

    entries = await audit(client, PROVINCE_MANAGER, entity="campaign")
    assert [e["action"] for e in entries] == ["campaign.created", "campaign.targets_set"]
    created, targets = entries
    assert created["actor"] == {"sub": "admin", "role": "admin"}
    assert created["after"]["name"] == PEAK90["name"]
    assert targets["actor"] == {"sub": "manager-qn", "role": "manager"}
    assert targets["unit_path"] == ["QN"]
    # Only what changed: Hạ Long's households raised, a courses target added; Vân Đồn's is untouched.
    assert targets["before"] == {
        "targets": [{"indicator": "households_visited", "unit_code": "QN-HALONG", "value": 1000, "merged_from": []}]
    }
    assert targets["after"] == {
        "targets": [
            {"indicator": "households_visited", "unit_code": "QN-HALONG", "value": 1200, "merged_from": []},
            {"indicator": "courses", "unit_code": "QN", "value": 261, "merged_from": []},
        ]
    }
    # Campaigns are organisation-wide: a commune's manager does not read their changes.
    assert await audit(client, HALONG_MANAGER, entity="campaign") == []


async def test_unit_team_and_volunteer_changes_are_audited_with_before_after_in_the_units_scope(client) -> None:
    await seed_tree(client)
    school = {"code": "QN-HALONG-THPT", "name": "Trường THPT Hạ Long", "kind": "school", "parent_code": "QN-HALONG"}
    assert (await client.post("/v1/units", json=school, headers=HALONG_MANAGER)).status_code == 201
    r = await client.patch("/v1/units/QN-HALONG-THPT", json={"name": "Trường THPT Chuyên Hạ Long"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert (await client.post("/v1/teams", json=team_body("HL-TT01"), headers=HALONG_MANAGER)).status_code == 201
    r = await client.patch("/v1/teams/HL-TT01", json={"kind": "mobile"}, headers=HALONG_MANAGER)
    assert r.status_code == 200, r.text
    vid = (await client.post("/v1/volunteers", json=volunteer_body(), headers=HALONG_MANAGER)).json()["id"]
    for _ in range(2):
        r = await client.patch(f"/v1/volunteers/{vid}", json={"phone": "+84 912 000 111"}, headers=HALONG_MANAGER)
        assert r.status_code == 200, r.text
    r = await client.post("/v1/units/QN-BINHLIEU:close", json={"reason": "Sáp nhập theo Nghị quyết"}, headers=ADMIN)
    assert r.status_code == 200, r.text

    halong = await audit(client, HALONG_MANAGER)
    assert [(e["action"], e["entity_id"]) for e in halong] == [
        ("unit.created", "QN-HALONG"),  # its own unit, created by the admin
        ("unit.created", "QN-HALONG-THPT"),
        ("unit.updated", "QN-HALONG-THPT"),
        ("team.created", "HL-TT01"),
        ("team.updated", "HL-TT01"),
        ("volunteer.registered", vid),
        ("volunteer.updated", vid),
    ]
    renamed = halong[2]
    assert renamed["actor"] == {"sub": "admin", "role": "admin"}
    assert (renamed["before"], renamed["after"]) == (
        {"name": "Trường THPT Hạ Long"},
        {"name": "Trường THPT Chuyên Hạ Long"},
    )
    assert (halong[4]["before"], halong[4]["after"]) == ({"kind": "permanent"}, {"kind": "mobile"})
    assert (halong[6]["before"], halong[6]["after"]) == ({"phone": "+84 912 345 678"}, {"phone": "+84 912 000 111"})
    assert halong[6]["actor"] == {"sub": "manager-halong", "role": "manager"}

    closed = await audit(client, ADMIN, action="unit.closed")
    assert len(closed) == 1
    assert closed[0]["entity_id"] == "QN-BINHLIEU"
    assert closed[0]["reason"] == "Sáp nhập theo Nghị quyết"
    assert (closed[0]["before"], closed[0]["after"]["status"]) == ({"status": "active"}, "closed")
    # Vân Đồn's manager reads only Vân Đồn's entries.
    assert [e["entity_id"] for e in await audit(client, VANDON_MANAGER)] == ["QN-VANDON"]
    assert [e["entity_id"] for e in await audit(client, ADMIN, actor="manager-halong", entity="team")] == [
        "HL-TT01",
        "HL-TT01",
    ]


async def test_a_move_and_a_merge_audit_every_document_they_write(client) -> None:
    await seed_tree(client)
    school = {"code": "QN-BL-THCS", "name": "Trường THCS Bình Liêu", "kind": "school", "parent_code": "QN-BINHLIEU"}
    assert (await client.post("/v1/units", json=school, headers=ADMIN)).status_code == 201
    assert (await client.post("/v1/teams", json=team_body("BL-01", "QN-BL-THCS"), headers=ADMIN)).status_code == 201
    merge = {"sources": ["QN-BINHLIEU"], "into": "QN-VANDON", "merged_on": "2025-07-01"}
    for _ in range(2):  # re-sending a finished merge writes nothing, so audits nothing
        r = await client.post("/v1/units:merge", json=merge, headers=ADMIN)
        assert r.status_code == 200, r.text

    entries = await audit(client, VANDON_MANAGER, since="2000-01-01T00:00:00Z")
    moved = [(e["action"], e["entity_id"]) for e in entries if e["action"] != "unit.created"]
    assert moved == [("unit.moved", "QN-BL-THCS"), ("team.moved", "BL-01")]
    school_moved = entries[[e["entity_id"] for e in entries].index("QN-BL-THCS")]
    assert school_moved["before"]["path"] == ["QN", "QN-BINHLIEU", "QN-BL-THCS"]
    assert school_moved["after"]["path"] == ["QN", "QN-VANDON", "QN-BL-THCS"]
    # Bình Liêu's manager reads what left their unit: the entries keep where it was.
    binhlieu = await audit(client, token("manager", unit="QN-BINHLIEU", sub="manager-binhlieu"), entity_id="QN-BL-THCS")
    assert [e["action"] for e in binhlieu] == ["unit.created", "unit.moved"]
    assert binhlieu[1]["previous_unit_path"] == ["QN", "QN-BINHLIEU", "QN-BL-THCS"]
    merged = await audit(client, ADMIN, action="unit.merged")
    assert len(merged) == 1
    assert merged[0]["after"]["successor_code"] == "QN-VANDON"


async def test_a_resent_roster_and_membership_changes_are_audited_once_each(client) -> None:
    await seed_tree(client)
    assert (await client.post("/v1/teams", json=team_body("HL-TT01"), headers=ADMIN)).status_code == 201
    row = {
        **volunteer_body(full_name="Trần Văn Đức"),
        "client_ref": "roster/1",
        "teams": [{"code": "HL-TT01", "since": "2025-07-01"}],
    }
    for _ in range(2):  # the re-sent roster finds its first copies
        r = await client.post("/v1/volunteers:import", json={"items": [row]}, headers=HALONG_MANAGER)
        assert r.status_code == 200, r.text
    vid = r.json()["items"][0]["id"]
    r = await client.delete(f"/v1/teams/HL-TT01/members/{vid}", params={"until": "2025-07-20"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    for _ in range(2):
        assert (await client.post("/v1/teams/HL-TT01:deactivate", headers=HALONG_MANAGER)).status_code == 200

    registered = await audit(client, HALONG_MANAGER, entity_id=vid)
    assert [e["action"] for e in registered] == ["volunteer.registered"]
    assert registered[0]["after"]["full_name"] == "Trần Văn Đức"
    assert registered[0]["actor"] == {"sub": "manager-halong", "role": "manager"}
    membership = await audit(client, HALONG_MANAGER, entity="membership")
    assert [e["action"] for e in membership] == ["membership.started", "membership.ended"]
    assert {e["entity_id"] for e in membership} == {f"HL-TT01/{vid}"}
    assert membership[1]["after"] == {"active": False, "until": "2025-07-20"}
    team = await audit(client, HALONG_MANAGER, entity_id="HL-TT01")
    assert [e["action"] for e in team] == ["team.created", "team.deactivated"]
    assert await audit(client, VANDON_MANAGER, entity="membership") == []
