"""Reorganising the tree: merging units (the 2025 pattern), splitting one, closing one, and the
records a merged or closed unit refuses afterwards."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import httpx
import pytest
from pymongo.errors import AutoReconnect

from registry.app import build_app
from shared.auth import Principal
from shared.contracts import registry as ev
from shared.outbox import outbox_fields
from shared.testing import running_app, token
from shared.testing.support import Received

from .support import ADMIN, assert_cloudevent, assert_problem, registry_events, seed_tree, team_body, volunteer_body

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

HALONG_MANAGER = token("manager", "QN-HALONG", sub="manager-halong")

WARDS = [
    {"code": "QN-HONGGAI", "name": "Phường Hồng Gai", "kind": "ward", "parent_code": "QN"},
    {"code": "QN-BACHDANG", "name": "Phường Bạch Đằng", "kind": "ward", "parent_code": "QN"},
    {"code": "QN-HONGHA", "name": "Phường Hồng Hà", "kind": "ward", "parent_code": "QN"},
    {"code": "QN-HG-THPT", "name": "Trường THPT Hòn Gai", "kind": "school", "parent_code": "QN-HONGGAI"},
]
PEAK90 = {
    "code": "PEAK90",
    "name": "Cao điểm 90 ngày hỗ trợ dịch vụ công trực tuyến",
    "starts_on": "2025-07-01",
    "ends_on": "2025-09-28",
    "targets": [
        {"indicator": "households_visited", "unit_code": "QN-HALONG", "value": 1000},
        {"indicator": "households_visited", "unit_code": "QN-HONGGAI", "value": 300},
        {"indicator": "households_visited", "unit_code": "QN-BACHDANG", "value": 200},
        {"indicator": "people_supported", "unit_code": "QN-HONGHA", "value": 50},
        {"indicator": "courses", "unit_code": "QN-VANDON", "value": 6},
    ],
}
PEAK30 = {"code": "PEAK30", "name": "Cao điểm 30 ngày", "starts_on": "2025-07-15", "ends_on": "2025-08-13"}
MERGE = {
    "sources": ["QN-HONGGAI", "QN-BACHDANG", "QN-HONGHA", "QN-HALONG"],
    "into": "QN-HALONG",
    "merged_on": "2025-07-01",
}


def types_by_key(events: list[Received]) -> dict[str, list[str]]:
    """Each key's event types in the order a consumer of its partition receives them."""
    out: dict[str, list[str]] = defaultdict(list)
    for e in sorted(events, key=lambda e: (e.partition, e.offset)):
        out[e.envelope.key].append(e.envelope.type)
    return dict(out)


async def post_all(client: httpx.AsyncClient, path: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for body in bodies:
        r = await client.post(path, json=body, headers=ADMIN)
        assert r.status_code == 201, r.text
        out.append(r.json())
    return out


async def seed_communes(client: httpx.AsyncClient) -> tuple[int, dict[str, str]]:
    """Three wards about to merge into Hạ Long, with teams, volunteers, a school and campaign targets."""
    events = await seed_tree(client)
    await post_all(client, "/v1/units", WARDS)
    await post_all(
        client,
        "/v1/teams",
        [
            team_body("HG-TT01", "QN-HONGGAI", name="Đội thường trực Hồng Gai"),
            team_body("BD-LD01", "QN-BACHDANG", name="Đội lưu động Bạch Đằng", kind="mobile", base=None),
            team_body("HH-CU", "QN-HONGHA", name="Đội cũ Hồng Hà"),
            team_body("THPT-01", "QN-HG-THPT", name="Đội tình nguyện Trường THPT Hòn Gai", kind="mobile", base=None),
        ],
    )
    assert (await client.post("/v1/teams/HH-CU:deactivate", headers=ADMIN)).status_code == 200
    people = await post_all(
        client,
        "/v1/volunteers",
        [
            volunteer_body("QN-HONGGAI", full_name="Nguyễn Thị Hương"),
            volunteer_body("QN-HONGHA", full_name="Trần Văn Đức"),
            volunteer_body("QN-HG-THPT", full_name="Lê Thị Ngọc Ánh", roles=["student"]),
        ],
    )
    ids = {"honggai": people[0]["id"], "hongha": people[1]["id"], "school": people[2]["id"]}
    assert (await client.post(f"/v1/volunteers/{ids['hongha']}:leave", headers=ADMIN)).status_code == 200
    await post_all(client, "/v1/campaigns", [PEAK90, PEAK30])
    return events + len(WARDS) + 4 + 1 + 3 + 1 + 2, ids


async def test_merging_three_wards_moves_children_teams_volunteers_and_sums_targets_then_a_resend_is_a_no_op(
    client, settings
) -> None:
    events, ids = await seed_communes(client)
    joined = await client.post(
        "/v1/teams/HG-TT01/members", json={"volunteer_id": ids["honggai"], "since": "2025-06-20"}, headers=ADMIN
    )
    assert joined.status_code == 201, joined.text
    events += 1

    r = await client.post("/v1/units:merge", json=MERGE, headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["successor"] == {
        "code": "QN-HALONG",
        "name": "Phường Hạ Long",
        "kind": "ward",
        "parent_code": "QN",
        "path": ["QN", "QN-HALONG"],
        "status": "active",
        "successor_code": None,
        "successors": [],
        "closed_on": None,
    }
    assert [(u["code"], u["name"], u["status"], u["successor_code"], u["closed_on"]) for u in body["merged"]] == [
        ("QN-HONGGAI", "Phường Hồng Gai", "merged", "QN-HALONG", "2025-07-01"),
        ("QN-BACHDANG", "Phường Bạch Đằng", "merged", "QN-HALONG", "2025-07-01"),
        ("QN-HONGHA", "Phường Hồng Hà", "merged", "QN-HALONG", "2025-07-01"),
    ]

    # The old codes stay readable; the school hangs under Hạ Long now.
    old = (await client.get("/v1/units/QN-HONGGAI", headers=ADMIN)).json()
    assert (old["status"], old["successor_code"], old["path"]) == ("merged", "QN-HALONG", ["QN", "QN-HONGGAI"])
    school = (await client.get("/v1/units/QN-HG-THPT", headers=ADMIN)).json()
    assert (school["parent_code"], school["path"]) == ("QN-HALONG", ["QN", "QN-HALONG", "QN-HG-THPT"])
    teams = {t["code"]: t for t in (await client.get("/v1/teams", headers=ADMIN)).json()["items"]}
    assert {c: (t["unit_code"], t["unit_path"], t["active"]) for c, t in teams.items()} == {
        "HG-TT01": ("QN-HALONG", ["QN", "QN-HALONG"], True),
        "BD-LD01": ("QN-HALONG", ["QN", "QN-HALONG"], True),
        "HH-CU": ("QN-HONGHA", ["QN", "QN-HONGHA"], False),  # a closed team stays where its history is
        "THPT-01": ("QN-HG-THPT", school["path"], True),
    }
    for key, unit, path in (
        ("honggai", "QN-HALONG", ["QN", "QN-HALONG"]),
        ("hongha", "QN-HALONG", ["QN", "QN-HALONG"]),
        ("school", "QN-HG-THPT", school["path"]),
    ):
        v = (await client.get(f"/v1/volunteers/{ids[key]}", headers=ADMIN)).json()
        assert (v["unit_code"], v["unit_path"]) == (unit, path), key
    targets = (await client.get("/v1/campaigns/PEAK90", headers=ADMIN)).json()["targets"]
    assert targets == [
        {
            "indicator": "households_visited",
            "unit_code": "QN-HALONG",
            "value": 1500,
            "merged_from": ["QN-HONGGAI", "QN-BACHDANG"],
        },
        {"indicator": "courses", "unit_code": "QN-VANDON", "value": 6, "merged_from": []},
        {"indicator": "people_supported", "unit_code": "QN-HALONG", "value": 50, "merged_from": ["QN-HONGHA"]},
    ]

    async def listed(**params: str) -> list[str]:
        r = await client.get("/v1/units", params=params, headers=ADMIN)
        assert r.status_code == 200, r.text
        return [u["code"] for u in r.json()["items"]]

    assert await listed(status="merged") == ["QN-BACHDANG", "QN-HONGGAI", "QN-HONGHA"]
    assert await listed(status="active") == ["QN", "QN-BINHLIEU", "QN-HALONG", "QN-HG-THPT", "QN-VANDON"]
    assert await listed(status="closed") == []
    assert await listed(parent_code="QN-HALONG") == ["QN-HG-THPT"]
    assert_problem(await client.get("/v1/units", params={"status": "gone"}, headers=ADMIN), 422)

    # Re-sending the finished merge answers the same and writes nothing.
    again = await client.post("/v1/units:merge", json=MERGE, headers=ADMIN)
    assert again.status_code == 200, again.text
    assert again.json() == body

    merge_events = 1 + 1 + 1 + 2 + 2 + 1 + 3  # school, its team and volunteer; 2 teams; 2 volunteers; targets; marks
    got = await registry_events(settings, count=events + merge_events, settle=2.0)
    assert len(got) == events + merge_events
    order = types_by_key(got)
    assert order["QN-HONGGAI"] == [ev.UNIT_CREATED, ev.UNIT_MERGED]
    assert order["QN-HONGHA"] == [ev.UNIT_CREATED, ev.UNIT_MERGED]
    assert order["QN-HALONG"] == [ev.UNIT_CREATED]
    assert order["QN-HG-THPT"] == [ev.UNIT_CREATED, ev.UNIT_UPDATED]
    assert order["HG-TT01"] == order["THPT-01"] == [ev.TEAM_CREATED, ev.TEAM_UPDATED]
    assert order["HH-CU"] == [ev.TEAM_CREATED, ev.TEAM_DEACTIVATED]
    assert order[ids["hongha"]] == [ev.VOLUNTEER_REGISTERED_V2, ev.VOLUNTEER_LEFT, ev.VOLUNTEER_UPDATED_V2]
    assert order[ids["school"]] == [ev.VOLUNTEER_REGISTERED_V2, ev.VOLUNTEER_UPDATED_V2]
    assert order["PEAK90"] == [ev.CAMPAIGN_CREATED, ev.CAMPAIGN_TARGETS_SET]
    assert order["PEAK30"] == [ev.CAMPAIGN_CREATED]  # no target on a merged unit: untouched

    last = {(e.envelope.type, e.envelope.key): e for e in got}
    merged = last[(ev.UNIT_MERGED, "QN-BACHDANG")]
    assert_cloudevent(merged, ev.UNIT_MERGED, "QN-BACHDANG")
    assert merged.envelope.data == {
        "code": "QN-BACHDANG",
        "successor_code": "QN-HALONG",
        "successor_path": ["QN", "QN-HALONG"],
        "merged_on": "2025-07-01",
    }
    team = last[(ev.TEAM_UPDATED, "HG-TT01")].envelope.data
    assert (team["previous_unit_path"], team["unit_path"], team["unit_code"]) == (
        ["QN", "QN-HONGGAI"],
        ["QN", "QN-HALONG"],
        "QN-HALONG",
    )
    # Its current member moves with it to Hạ Long; the school's team moves with none.
    assert (team["members"], team["previous_active"]) == (1, True)
    assert last[(ev.TEAM_UPDATED, "THPT-01")].envelope.data["members"] == 0
    unit = last[(ev.UNIT_UPDATED, "QN-HG-THPT")].envelope.data
    assert (unit["previous_path"], unit["path"], unit["parent_code"]) == (
        ["QN", "QN-HONGGAI", "QN-HG-THPT"],
        ["QN", "QN-HALONG", "QN-HG-THPT"],
        "QN-HALONG",
    )
    left = last[(ev.VOLUNTEER_UPDATED_V2, ids["hongha"])].envelope.data
    assert (left["unit_path"], left["active"]) == (["QN", "QN-HALONG"], False)
    assert last[(ev.CAMPAIGN_TARGETS_SET, "PEAK90")].envelope.data == {"code": "PEAK90", "targets": targets}


async def test_a_merge_interrupted_halfway_through_a_subtree_is_finished_by_resending_it(settings) -> None:
    app = build_app(settings)
    async with running_app(app) as client:
        events, ids = await seed_communes(client)
        service = app.state.registry
        original = service._move_subtree
        calls = 0

        async def crash_once(principal: Principal, code: str, path: list[str]) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:  # the school has its new parent, its team and volunteer not yet
                raise AutoReconnect("connection lost (simulated)")
            await original(principal, code, path)

        service._move_subtree = crash_once
        assert_problem(await client.post("/v1/units:merge", json=MERGE, headers=ADMIN), 503)
        school = (await client.get("/v1/units/QN-HG-THPT", headers=ADMIN)).json()
        assert school["path"] == ["QN", "QN-HALONG", "QN-HG-THPT"]
        stale = (await client.get("/v1/teams/THPT-01", headers=ADMIN)).json()
        assert stale["unit_path"] == ["QN", "QN-HONGGAI", "QN-HG-THPT"]
        assert (await client.get("/v1/units/QN-HONGGAI", headers=ADMIN)).json()["status"] == "active"

        r = await client.post("/v1/units:merge", json=MERGE, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert (await client.get("/v1/teams/THPT-01", headers=ADMIN)).json()["unit_path"] == school["path"]
        volunteer = (await client.get(f"/v1/volunteers/{ids['school']}", headers=ADMIN)).json()
        assert volunteer["unit_path"] == school["path"]
        assert (await client.get("/v1/units/QN-HONGGAI", headers=ADMIN)).json()["status"] == "merged"

        got = await registry_events(settings, count=events + 11, settle=2.0)
        assert len(got) == events + 11  # every change once, none lost and none twice
        order = types_by_key(got)
        assert order["QN-HG-THPT"] == [ev.UNIT_CREATED, ev.UNIT_UPDATED]
        assert order["THPT-01"] == [ev.TEAM_CREATED, ev.TEAM_UPDATED]


async def test_a_merge_finishes_when_an_office_edits_a_moving_team_and_volunteer_at_the_same_moment(settings) -> None:
    app = build_app(settings)
    async with running_app(app) as client:
        _, ids = await seed_communes(client)
        repo = app.state.registry._repo
        original = repo.update
        raced: list[str] = []

        async def racing_update(collection: str, current: Any, changes: Any, events: Any, audit: Any = ()) -> bool:
            if "unit_path" in changes and current["_id"] in (ids["honggai"], "BD-LD01") and current["_id"] not in raced:
                raced.append(current["_id"])
                # The office's own edit wins the compare-and-set between the merge's read and its write.
                await repo._db[collection].update_one(
                    {"_id": current["_id"]}, {"$set": {"name_note": "sửa cùng lúc"}, "$inc": {"rev": 1}}
                )
            return bool(await original(collection, current, changes, events, audit))

        repo.update = racing_update
        r = await client.post("/v1/units:merge", json=MERGE, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert sorted(raced) == sorted([ids["honggai"], "BD-LD01"])
        volunteer = (await client.get(f"/v1/volunteers/{ids['honggai']}", headers=ADMIN)).json()
        assert volunteer["unit_path"] == ["QN", "QN-HALONG"]
        assert (await client.get("/v1/teams/BD-LD01", headers=ADMIN)).json()["unit_path"] == ["QN", "QN-HALONG"]
        for collection, key in (("volunteers", ids["honggai"]), ("teams", "BD-LD01")):
            doc = await repo._db[collection].find_one({"_id": key})
            assert doc["name_note"] == "sửa cùng lúc"  # both changes kept
            assert [e["action"] for e in doc["audit"]][-1].endswith(".moved")


async def test_merging_into_a_new_unit_creates_it_first_and_the_merged_units_refuse_new_records(
    client, settings
) -> None:
    events = await seed_tree(client)
    coto = {"code": "QN-COTO", "name": "Đặc khu Cô Tô", "kind": "special_zone", "parent_code": "QN"}
    await post_all(client, "/v1/units", [coto])
    await post_all(client, "/v1/teams", [team_body("VD-TT01", "QN-VANDON", name="Đội thường trực Vân Đồn")])
    events += 2
    merge = {"sources": ["QN-VANDON", "QN-COTO"], "into": "QN-VDCT", "merged_on": "2025-07-01"}

    problem = assert_problem(await client.post("/v1/units:merge", json=merge, headers=ADMIN), 422, says="new_unit")
    assert problem["type"].endswith("unknown-unit")
    new_unit = {"name": "Đặc khu Vân Đồn - Cô Tô", "kind": "special_zone", "parent_code": "QN"}
    r = await client.post("/v1/units:merge", json={**merge, "new_unit": new_unit}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["successor"]["path"] == ["QN", "QN-VDCT"]
    assert r.json()["successor"]["name"] == "Đặc khu Vân Đồn - Cô Tô"
    assert [u["successor_code"] for u in r.json()["merged"]] == ["QN-VDCT", "QN-VDCT"]
    assert (await client.get("/v1/teams/VD-TT01", headers=ADMIN)).json()["unit_path"] == ["QN", "QN-VDCT"]
    again = await client.post("/v1/units:merge", json={**merge, "new_unit": new_unit}, headers=ADMIN)
    assert again.json() == r.json()
    other = {**new_unit, "name": "Đặc khu khác"}
    assert_problem(await client.post("/v1/units:merge", json={**merge, "new_unit": other}, headers=ADMIN), 409)
    events += 1 + 1 + 2  # created, the team moved, two merged

    # The merged codes stay readable and point at their successor; new records there are refused.
    assert (await client.get("/v1/units/QN-VANDON", headers=ADMIN)).json()["successor_code"] == "QN-VDCT"
    refused = [
        ("POST", "/v1/teams", team_body("VD-TT02", "QN-VANDON")),
        ("POST", "/v1/volunteers", volunteer_body("QN-VANDON", full_name="Phạm Thị Lan")),
        ("PATCH", "/v1/units/QN-VANDON", {"name": "Đặc khu Vân Đồn"}),
        ("PATCH", "/v1/units/QN-BINHLIEU", {"parent_code": "QN-COTO"}),
        (
            "POST",
            "/v1/units",
            {"code": "QN-VD-TH", "name": "Trường Tiểu học Vân Đồn", "kind": "school", "parent_code": "QN-VANDON"},
        ),
        ("PATCH", "/v1/teams/VD-TT01", {"unit_code": "QN-COTO"}),
        ("PUT", "/v1/campaigns/PEAK30/targets", None),
    ]
    await post_all(client, "/v1/campaigns", [PEAK30])
    events += 1
    for method, path, body in refused:
        if body is None:
            body = {"targets": [{"indicator": "courses", "unit_code": "QN-COTO", "value": 3}]}
        problem = assert_problem(await client.request(method, path, json=body, headers=ADMIN), 409)
        assert problem["type"].endswith("/unit-merged"), (method, path)
        assert "QN-VDCT" in problem["detail"], (method, path)
        assert problem["successor_code"] == "QN-VDCT"
    roster = {
        "items": [
            {
                "client_ref": "roster-2025/0001",
                **volunteer_body("QN-COTO", full_name="Vũ Minh Khoa"),
                "teams": [],
            },
            {"client_ref": "roster-2025/0002", **volunteer_body("QN-VDCT", full_name="Đỗ Thu Trang"), "teams": []},
        ]
    }
    rows = (await client.post("/v1/volunteers:import", json=roster, headers=ADMIN)).json()["items"]
    assert [row["status"] for row in rows] == ["rejected", "created"]
    assert rows[0]["problem"]["status"] == 409
    assert "QN-VDCT" in rows[0]["problem"]["detail"]
    events += 1

    got = await registry_events(settings, count=events, settle=2.0)
    assert len(got) == events
    order = types_by_key(got)
    assert order["QN-VDCT"] == [ev.UNIT_CREATED]
    assert order["QN-VANDON"] == order["QN-COTO"] == [ev.UNIT_CREATED, ev.UNIT_MERGED]
    created = next(e for e in got if e.envelope.key == "QN-VDCT").envelope.data
    assert created == {
        "code": "QN-VDCT",
        "name": "Đặc khu Vân Đồn - Cô Tô",
        "kind": "special_zone",
        "parent_code": "QN",
        "path": ["QN", "QN-VDCT"],
    }


async def test_bad_merges_are_problems_and_write_nothing(client, settings) -> None:
    events = await seed_tree(client)
    school = {"code": "QN-HL-TH", "name": "Trường Tiểu học Hạ Long", "kind": "school", "parent_code": "QN-HALONG"}
    await post_all(client, "/v1/units", [school])
    events += 1

    def merge(sources: list[str], into: str, **extra: object) -> dict[str, object]:
        return {"sources": sources, "into": into, **extra}

    bad = [
        (merge(["QN-NOWHERE", "QN-VANDON"], "QN-HALONG"), 422, "QN-NOWHERE"),
        (merge(["QN"], "QN-HALONG"), 422, "province"),
        (merge(["QN-HALONG"], "QN-HL-TH"), 422, "subtree"),
        (merge(["QN-HALONG"], "QN-HALONG"), 422, "nothing to merge"),
        (merge([], "QN-HALONG"), 422, "sources"),
        (merge([f"QN-{i}" for i in range(51)], "QN-HALONG"), 422, "sources"),
        (merge(["QN-VANDON"], "QN-HALONG", merged_on="2025-02-30"), 422, "merged_on"),
        (merge(["QN-VANDON"], "QN-HALONG", extra=1), 422, "extra"),
        (
            merge(["QN-VANDON"], "QN-NEW", new_unit={"name": "Tỉnh mới", "kind": "province", "parent_code": "QN"}),
            422,
            "province",
        ),
        (
            merge(["QN-VANDON"], "QN-NEW", new_unit={"name": "Xã Mới", "kind": "commune", "parent_code": "QN-NO"}),
            422,
            "QN-NO",
        ),
    ]
    for body, status, says in bad:
        assert_problem(await client.post("/v1/units:merge", json=body, headers=ADMIN), status, says=says)

    # A unit already merged into another one cannot be merged again.
    assert (
        await client.post("/v1/units:merge", json=merge(["QN-VANDON"], "QN-HALONG"), headers=ADMIN)
    ).status_code == 200
    events += 1
    problem = assert_problem(
        await client.post("/v1/units:merge", json=merge(["QN-VANDON"], "QN-BINHLIEU"), headers=ADMIN), 409
    )
    assert problem["type"].endswith("/unit-merged")
    problem = assert_problem(
        await client.post("/v1/units:merge", json=merge(["QN-BINHLIEU"], "QN-VANDON"), headers=ADMIN),
        409,
        says="QN-HALONG",
    )
    assert problem["type"].endswith("/unit-merged")

    units = (await client.get("/v1/units", headers=ADMIN)).json()["items"]
    assert {u["code"]: u["status"] for u in units} == {
        "QN": "active",
        "QN-BINHLIEU": "active",
        "QN-HALONG": "active",
        "QN-HL-TH": "active",
        "QN-VANDON": "merged",
    }
    got = await registry_events(settings, count=events, settle=1.0)
    assert len(got) == events


async def test_a_commune_manager_merges_inside_its_subtree_only(client, settings) -> None:
    events = await seed_tree(client)
    school = {"code": "QN-HL-TH", "name": "Trường Tiểu học Hạ Long", "kind": "school", "parent_code": "QN-HALONG"}
    await post_all(client, "/v1/units", [school])
    events += 1

    for body in (
        {"sources": ["QN-BINHLIEU"], "into": "QN-HALONG"},  # a source outside
        {"sources": ["QN-HL-TH"], "into": "QN-BINHLIEU"},  # the successor outside
        {
            "sources": ["QN-HL-TH"],
            "into": "QN-HL-NEW",
            "new_unit": {"name": "Xã Mới", "kind": "commune", "parent_code": "QN"},
        },
    ):
        problem = assert_problem(await client.post("/v1/units:merge", json=body, headers=HALONG_MANAGER), 403)
        assert problem["type"].endswith("/out-of-scope")
    viewer = token("viewer", "QN", sub="viewer")
    assert_problem(
        await client.post("/v1/units:merge", json={"sources": ["QN-HL-TH"], "into": "QN-HALONG"}, headers=viewer), 403
    )
    assert (await client.get("/v1/units/QN-BINHLIEU", headers=ADMIN)).json()["status"] == "active"

    r = await client.post(
        "/v1/units:merge", json={"sources": ["QN-HL-TH"], "into": "QN-HALONG"}, headers=HALONG_MANAGER
    )
    assert r.status_code == 200, r.text
    assert r.json()["merged"][0]["status"] == "merged"
    events += 1
    got = await registry_events(settings, count=events, settle=1.0)
    assert len(got) == events


async def test_splitting_a_zone_assigns_each_team_explicitly_and_closes_it(client, settings) -> None:
    events = await seed_tree(client)
    branch = {"code": "QN-VD-TH", "name": "Trường Tiểu học Vân Đồn", "kind": "school", "parent_code": "QN-VANDON"}
    await post_all(client, "/v1/units", [branch])
    await post_all(
        client,
        "/v1/teams",
        [
            team_body("VD-TT01", "QN-VANDON", name="Đội thường trực Vân Đồn"),
            team_body("VD-LD02", "QN-VANDON", name="Đội lưu động Quan Lạn", kind="mobile", base=None),
        ],
    )
    people = await post_all(client, "/v1/volunteers", [volunteer_body("QN-VANDON", full_name="Ngô Thị Thùy Dương")])
    events += 1 + 2 + 1
    into = [
        {"code": "QN-VD-BAC", "name": "Đặc khu Vân Đồn Bắc", "kind": "special_zone"},
        {"code": "QN-VD-NAM", "name": "Đặc khu Vân Đồn Nam", "kind": "special_zone"},
    ]
    teams = [
        {"team_code": "VD-TT01", "unit_code": "QN-VD-BAC"},
        {"team_code": "VD-LD02", "unit_code": "QN-VD-NAM"},
    ]
    split = {"into": into, "teams": teams, "volunteers_to": "QN-VD-BAC", "split_on": "2025-07-01"}
    url = "/v1/units/QN-VANDON:split"

    problem = assert_problem(
        await client.post(url, json={**split, "teams": teams[:1]}, headers=ADMIN), 422, says="VD-LD02"
    )
    assert problem["teams"] == ["VD-LD02"]
    assert problem["type"].endswith("/unassigned-teams")
    assert_problem(
        await client.post(url, json={**split, "volunteers_to": None}, headers=ADMIN), 422, says="volunteers_to"
    )
    assert_problem(
        await client.post(
            url, json={**split, "teams": [*teams[:1], {"team_code": "VD-LD02", "unit_code": "QN-X"}]}, headers=ADMIN
        ),
        422,
        says="QN-X",
    )
    assert_problem(await client.post(url, json={**split, "into": []}, headers=ADMIN), 422, says="into")
    assert_problem(await client.post("/v1/units/QN:split", json=split, headers=ADMIN), 422, says="province")
    assert_problem(await client.post("/v1/units/QN-NO:split", json=split, headers=ADMIN), 404)
    assert_problem(await client.post(url, json=split, headers=HALONG_MANAGER), 403)
    problem = assert_problem(await client.post(url, json=split, headers=ADMIN), 409, says="QN-VD-TH")
    assert problem["units"] == ["QN-VD-TH"]
    assert (await client.get("/v1/units/QN-VD-BAC", headers=ADMIN)).status_code == 404  # nothing created yet

    moved = await client.patch("/v1/units/QN-VD-TH", json={"parent_code": "QN-HALONG"}, headers=ADMIN)
    assert moved.status_code == 200
    events += 1
    r = await client.post(url, json=split, headers=ADMIN)
    assert r.status_code == 200, r.text
    closed = r.json()["closed"]
    assert (closed["status"], closed["successors"], closed["closed_on"]) == (
        "closed",
        ["QN-VD-BAC", "QN-VD-NAM"],
        "2025-07-01",
    )
    assert [(u["code"], u["name"], u["path"], u["status"]) for u in r.json()["successors"]] == [
        ("QN-VD-BAC", "Đặc khu Vân Đồn Bắc", ["QN", "QN-VD-BAC"], "active"),
        ("QN-VD-NAM", "Đặc khu Vân Đồn Nam", ["QN", "QN-VD-NAM"], "active"),
    ]
    assert (await client.get("/v1/teams/VD-LD02", headers=ADMIN)).json()["unit_path"] == ["QN", "QN-VD-NAM"]
    assert (await client.get("/v1/teams/VD-TT01", headers=ADMIN)).json()["unit_code"] == "QN-VD-BAC"
    assert (await client.get(f"/v1/volunteers/{people[0]['id']}", headers=ADMIN)).json()["unit_code"] == "QN-VD-BAC"
    assert (await client.get("/v1/units/QN-VANDON", headers=ADMIN)).json() == closed
    again = await client.post(url, json=split, headers=ADMIN)
    assert again.json() == r.json()
    events += 2 + 2 + 1 + 1

    problem = assert_problem(await client.post("/v1/teams", json=team_body("VD-X", "QN-VANDON"), headers=ADMIN), 409)
    assert problem["type"].endswith("/unit-closed")
    assert "QN-VD-BAC, QN-VD-NAM" in problem["detail"]

    got = await registry_events(settings, count=events, settle=2.0)
    assert len(got) == events
    order = types_by_key(got)
    assert order["QN-VANDON"] == [ev.UNIT_CREATED, ev.UNIT_SPLIT]
    assert order["QN-VD-BAC"] == order["QN-VD-NAM"] == [ev.UNIT_CREATED]
    assert order["VD-LD02"] == [ev.TEAM_CREATED, ev.TEAM_UPDATED]
    assert order[people[0]["id"]] == [ev.VOLUNTEER_REGISTERED_V2, ev.VOLUNTEER_UPDATED_V2]
    split_event = next(e for e in got if e.envelope.type == ev.UNIT_SPLIT)
    assert_cloudevent(split_event, ev.UNIT_SPLIT, "QN-VANDON")
    assert split_event.envelope.data == {
        "code": "QN-VANDON",
        "successors": ["QN-VD-BAC", "QN-VD-NAM"],
        "teams": teams,
        "split_on": "2025-07-01",
    }


async def test_closing_a_unit_needs_its_teams_gone_and_repeating_it_changes_nothing(client, settings) -> None:
    events = await seed_tree(client)
    await post_all(client, "/v1/teams", [team_body("BL-TT01", "QN-BINHLIEU", name="Đội thường trực Bình Liêu")])
    events += 1
    url = "/v1/units/QN-BINHLIEU:close"
    reason = "Sáp nhập địa giới hành chính, dừng hoạt động"

    problem = assert_problem(await client.post(url, json={"reason": reason}, headers=ADMIN), 409, says="BL-TT01")
    assert (problem["type"].rsplit("/", 1)[1], problem["teams"]) == ("unit-not-empty", ["BL-TT01"])
    assert_problem(await client.post(url, json={"reason": "  "}, headers=ADMIN), 422, says="reason")
    assert_problem(await client.post(url, json={"reason": "x" * 501}, headers=ADMIN), 422, says="reason")
    assert_problem(await client.post("/v1/units/QN:close", json={"reason": reason}, headers=ADMIN), 422)
    assert_problem(await client.post(url, json={"reason": reason}, headers=HALONG_MANAGER), 403)

    assert (await client.post("/v1/teams/BL-TT01:deactivate", headers=ADMIN)).status_code == 200
    r = await client.post(url, json={"reason": reason, "closed_on": "2025-07-01"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["closed_on"], r.json()["successors"]) == ("closed", "2025-07-01", [])
    assert (await client.post(url, json={"reason": reason}, headers=ADMIN)).json() == r.json()
    problem = assert_problem(await client.post(url, json={"reason": "Lý do khác"}, headers=ADMIN), 409)
    assert problem["type"].endswith("/unit-closed")
    events += 2

    for method, path, body in (
        ("POST", "/v1/volunteers", volunteer_body("QN-BINHLIEU", full_name="Hoàng Văn Sơn")),
        ("POST", "/v1/teams", team_body("BL-TT02", "QN-BINHLIEU")),
        ("PATCH", "/v1/units/QN-BINHLIEU", {"name": "Xã Bình Liêu mới"}),
    ):
        problem = assert_problem(await client.request(method, path, json=body, headers=ADMIN), 409, says="closed")
        assert problem["type"].endswith("/unit-closed")
    assert (await client.get("/v1/units", params={"status": "closed"}, headers=ADMIN)).json()["items"] == [r.json()]

    got = await registry_events(settings, count=events, settle=1.5)
    assert len(got) == events
    closed = next(e for e in got if e.envelope.type == ev.UNIT_CLOSED)
    assert_cloudevent(closed, ev.UNIT_CLOSED, "QN-BINHLIEU")
    assert closed.envelope.data == {
        "code": "QN-BINHLIEU",
        "path": ["QN", "QN-BINHLIEU"],
        "reason": reason,
        "closed_on": "2025-07-01",
    }


async def test_units_stored_before_reorganisation_existed_count_as_active_and_can_be_closed(settings) -> None:
    app = build_app(settings)
    async with running_app(app) as client:
        await seed_tree(client)
        legacy = {"_id": "QN-CU", "name": "Xã Đồng Cũ", "kind": "commune", "parent_code": "QN", "path": ["QN", "QN-CU"]}
        await app.state.runtime.db["units"].insert_one({**legacy, **outbox_fields([])})

        r = await client.get("/v1/units/QN-CU", headers=ADMIN)
        assert (r.json()["status"], r.json()["closed_on"]) == ("active", None)
        active = (await client.get("/v1/units", params={"status": "active"}, headers=ADMIN)).json()["items"]
        assert [u["code"] for u in active] == ["QN", "QN-BINHLIEU", "QN-CU", "QN-HALONG", "QN-VANDON"]
        r = await client.post("/v1/units/QN-CU:close", json={"reason": "Giải thể"}, headers=ADMIN)
        assert r.json()["status"] == "closed"
        closed = (await client.get("/v1/units", params={"status": "closed"}, headers=ADMIN)).json()["items"]
        assert [u["code"] for u in closed] == ["QN-CU"]
