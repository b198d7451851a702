"""Campaigns and their targets."""

from __future__ import annotations

import pytest

from shared.contracts import registry as ev

from .support import ADMIN, assert_cloudevent, assert_problem, registry_events, seed_tree

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

PEAK90 = {
    "code": "PEAK90",
    "name": "Cao điểm 90 ngày hỗ trợ dịch vụ công trực tuyến",
    "starts_on": "2025-07-01",
    "ends_on": "2025-09-28",
    "targets": [
        {"indicator": "households_visited", "unit_code": "QN", "value": 1440},
        {"indicator": "people_supported", "unit_code": "QN-HALONG", "value": 12000},
    ],
}
# As answered and published: every target says which merged units it absorbed (none here).
PEAK90_OUT = {**PEAK90, "targets": [{**t, "merged_from": []} for t in PEAK90["targets"]]}
PEAK30 = {
    "code": "PEAK30",
    "name": "Cao điểm 30 ngày bình dân học vụ số",
    "starts_on": "2025-07-15",
    "ends_on": "2025-08-13",
}


async def test_campaign_create_read_list_and_replace_targets_emit_their_events(client, settings) -> None:
    events = await seed_tree(client)
    r = await client.post("/v1/campaigns", json=PEAK90, headers=ADMIN)
    assert r.status_code == 201
    assert r.json() == PEAK90_OUT
    r = await client.post("/v1/campaigns", json=PEAK30, headers=ADMIN)
    assert r.json()["targets"] == []
    events += 2
    assert (await client.get("/v1/campaigns/PEAK30", headers=ADMIN)).json()["name"] == PEAK30["name"]

    listed = (await client.get("/v1/campaigns", headers=ADMIN)).json()
    assert [c["code"] for c in listed["items"]] == ["PEAK30", "PEAK90"]
    assert listed["next_cursor"] is None
    first = (await client.get("/v1/campaigns", params={"limit": 1}, headers=ADMIN)).json()
    assert [c["code"] for c in first["items"]] == ["PEAK30"]
    rest = (await client.get("/v1/campaigns", params={"cursor": first["next_cursor"]}, headers=ADMIN)).json()
    assert [c["code"] for c in rest["items"]] == ["PEAK90"]
    on = (await client.get("/v1/campaigns", params={"active_on": "2025-09-01"}, headers=ADMIN)).json()
    assert [c["code"] for c in on["items"]] == ["PEAK90"]
    on = (await client.get("/v1/campaigns", params={"active_on": "2025-08-13"}, headers=ADMIN)).json()
    assert [c["code"] for c in on["items"]] == ["PEAK30", "PEAK90"]

    targets = [
        {"indicator": "courses", "unit_code": "QN", "value": 261},
        {"indicator": "course_participants", "unit_code": "QN-VANDON", "value": 17000},
    ]
    r = await client.put("/v1/campaigns/PEAK30/targets", json={"targets": targets}, headers=ADMIN)
    assert r.status_code == 200
    targets_out = [{**t, "merged_from": []} for t in targets]
    assert r.json()["targets"] == targets_out
    same = await client.put("/v1/campaigns/PEAK30/targets", json={"targets": targets_out}, headers=ADMIN)
    assert same.json()["targets"] == targets_out  # what GET answers can be PUT back unchanged: no second event
    events += 1
    assert (await client.get("/v1/campaigns/PEAK30", headers=ADMIN)).json()["targets"] == targets_out

    got = await registry_events(settings, count=events)
    assert len(got) == events
    by = {(e.envelope.type, e.envelope.key): e for e in got if ".campaign." in e.envelope.type}
    assert set(by) == {
        (ev.CAMPAIGN_CREATED, "PEAK90"),
        (ev.CAMPAIGN_CREATED, "PEAK30"),
        (ev.CAMPAIGN_TARGETS_SET, "PEAK30"),
    }
    for (kind, key), received in by.items():
        assert_cloudevent(received, kind, key)
    assert by[(ev.CAMPAIGN_CREATED, "PEAK90")].envelope.data == PEAK90_OUT
    assert by[(ev.CAMPAIGN_TARGETS_SET, "PEAK30")].envelope.data == {"code": "PEAK30", "targets": targets_out}


async def test_bad_campaigns_and_targets_are_rejected_with_nothing_written(client, settings) -> None:
    events = await seed_tree(client)
    assert (await client.post("/v1/campaigns", json=PEAK90, headers=ADMIN)).status_code == 201
    events += 1

    def target(**overrides: object) -> dict[str, object]:
        return {"indicator": "households_visited", "unit_code": "QN", "value": 10, **overrides}

    bad_creates = [
        ({**PEAK30, "ends_on": "2025-07-14"}, 422, "ends_on"),
        ({**PEAK30, "targets": [target(indicator="likes")]}, 422, "indicator"),
        ({**PEAK30, "targets": [target(unit_code="QN-NOWHERE")]}, 422, "QN-NOWHERE"),
        ({**PEAK30, "targets": [target(value=-1)]}, 422, "value"),
        ({**PEAK30, "targets": [target(), target(value=20)]}, 422, "twice"),
        ({**PEAK30, "starts_on": "2025-13-01"}, 422, "starts_on"),
        ({**PEAK90, "code": "PEAK90"}, 409, "PEAK90"),
    ]
    for body, status, says in bad_creates:
        assert_problem(await client.post("/v1/campaigns", json=body, headers=ADMIN), status, says=says)

    put = "/v1/campaigns/PEAK90/targets"
    assert_problem(await client.put(put, json={"targets": [target(indicator="likes")]}, headers=ADMIN), 422)
    problem = assert_problem(
        await client.put(put, json={"targets": [target(unit_code="QN-NO")]}, headers=ADMIN), 422, says="QN-NO"
    )
    assert problem["units"] == ["QN-NO"]
    assert_problem(await client.put("/v1/campaigns/NOPE/targets", json={"targets": []}, headers=ADMIN), 404)

    listed = (await client.get("/v1/campaigns", headers=ADMIN)).json()["items"]
    assert listed == [PEAK90_OUT]
    got = await registry_events(settings, count=events)
    assert len(got) == events
    assert [e.envelope.type for e in got].count(ev.CAMPAIGN_CREATED) == 1
