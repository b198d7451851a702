"""Recording visits one at a time and in offline batches, against the real Kafka and FerretDB."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from shared.contracts import visits as ev
from shared.testing import collect_events, token
from shared.topics import VISITS_TOPIC
from visits.schemas import local_today

from .conftest import Visits
from .factories import QL, VD, visit_body

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

ADMIN = token("admin")


async def visit_events(app: Visits, count: int, settle: float = 1.0) -> list[ev.Contract]:
    got = await collect_events(
        app.settings.kafka_bootstrap, [app.settings.topic(VISITS_TOPIC)], count=count, timeout=30, settle=settle
    )
    return [r.envelope for r in got]  # type: ignore[misc]


async def test_a_visit_is_recorded_once_and_a_resend_returns_the_first_copy(seeded: Visits) -> None:
    body = visit_body()
    first = await seeded.client.post("/v1/visits", json=body, headers=ADMIN)
    assert first.status_code == 201, first.text
    visit = first.json()
    assert visit["status"] == "recorded"
    assert visit["unit_path"] == VD
    assert visit["notes"] == body["notes"]

    again = await seeded.client.post("/v1/visits", json={**body, "notes": "gửi lại"}, headers=ADMIN)
    assert again.status_code == 200
    assert again.json()["id"] == visit["id"]
    assert again.json()["notes"] == body["notes"]

    got = await seeded.client.get(f"/v1/visits/{visit['id']}", headers=ADMIN)
    assert got.status_code == 200
    assert got.json()["status"] == "recorded"

    events = await visit_events(seeded, 1)
    assert len(events) == 1
    (event,) = events
    assert event.type == ev.VISIT_RECORDED
    assert event.key == visit["id"]
    data = event.data
    assert data["client_ref"] == body["client_ref"]
    assert data["figures"] == {
        "unit_code": "QN-VD",
        "unit_path": VD,
        "visited_on": body["visited_on"],
        "households": 1,
        "people": body["people"],
        "services": {
            "vneid_installed": 2,
            "vneid_activated": 1,
            "online_applications_l3": 1,
            "online_applications_l4": 0,
            "digital_skills_guidance": 0,
        },
        "area": "island",
        "team_code": body["team_code"],  # so team rows follow corrections and voids
    }
    assert "notes" not in data
    assert "Hương" not in event.value().decode()


async def test_a_batch_sent_twice_creates_each_record_exactly_once(seeded: Visits) -> None:
    today = local_today()
    # Weeks late, at a centre and in households below the team's unit: each counts on its own date.
    items = [
        visit_body(visited_on=(today - timedelta(days=30 + i)).isoformat(), unit_code="QN-VD-QL" if i % 2 else "QN-VD")
        for i in range(25)
    ]
    items[3] = visit_body(setting="service_centre", household_ref=None, households=0, area="urban")
    first = await seeded.client.post("/v1/visits:batch", json={"items": items}, headers=ADMIN)
    assert first.status_code == 200, first.text
    results = first.json()["items"]
    assert [r["client_ref"] for r in results] == [i["client_ref"] for i in items]
    assert {r["status"] for r in results} == {"created"}
    ids = [r["id"] for r in results]
    assert len(set(ids)) == 25

    second = await seeded.client.post("/v1/visits:batch", json={"items": items}, headers=ADMIN)
    assert second.status_code == 200
    assert [r["status"] for r in second.json()["items"]] == ["duplicate"] * 25
    assert [r["id"] for r in second.json()["items"]] == ids

    assert await seeded.visits().count_documents({}) == 25
    events = await visit_events(seeded, 25, settle=1.5)
    assert len(events) == 25
    assert sorted(e.key for e in events) == sorted(ids)
    by_id = {e.key: e.data for e in events}
    assert by_id[ids[1]]["figures"]["unit_path"] == QL
    assert by_id[ids[1]]["figures"]["visited_on"] == items[1]["visited_on"]
    assert by_id[ids[3]]["figures"]["area"] == "urban"
    assert by_id[ids[1]]["figures"]["area"] == "island"
    assert by_id[ids[3]]["figures"]["households"] == 0


async def test_a_record_repeated_inside_one_batch_is_a_duplicate_of_the_first(seeded: Visits) -> None:
    body = visit_body()
    r = await seeded.client.post("/v1/visits:batch", json={"items": [body, body]}, headers=ADMIN)
    first, second = r.json()["items"]
    assert first["status"] == "created"
    assert second == {
        "client_ref": body["client_ref"],
        "status": "duplicate",
        "id": first["id"],
        "problem": None,
        "resolved_from": None,
    }
    assert await seeded.visits().count_documents({}) == 1


async def test_a_partial_batch_saves_the_good_records_and_reports_each_bad_one(seeded: Visits) -> None:
    tomorrow = (local_today() + timedelta(days=1)).isoformat()
    good = [visit_body(), visit_body(volunteer_ids=["vol-huong"])]
    bad = [
        visit_body(people={"total": 2, "elderly": 3}),
        visit_body(services={"vneid_installed": -1}),
        visit_body(visited_on=tomorrow),
        visit_body(setting="service_centre"),  # keeps its household_ref
        visit_body(area="mountain"),
        visit_body(client_ref="not-a-uuid"),
        visit_body(volunteer_ids=["vol-left"]),
        visit_body(team_code="VD-OLD"),
        "not an object",
    ]
    items = [good[0], *bad[:4], good[1], *bad[4:]]
    r = await seeded.client.post("/v1/visits:batch", json={"items": items}, headers=ADMIN)
    assert r.status_code == 200, r.text
    results = r.json()["items"]
    assert [x["status"] for x in results] == ["created"] + ["rejected"] * 4 + ["created"] + ["rejected"] * 5
    problems = [x["problem"] for x in results if x["status"] == "rejected"]
    assert all(p["status"] == 422 and p["title"] and p["detail"] for p in problems)
    fields = [[e["field"] for e in p["errors"]] for p in problems]
    assert fields[0] == ["people"]
    assert "people.elderly (3) cannot exceed people.total (2)" in problems[0]["detail"]
    assert fields[1] == ["services.vneid_installed"]
    assert fields[2] == ["visited_on"]
    assert "future" in problems[2]["detail"]
    assert "household_ref" in problems[3]["detail"]
    assert fields[4] == ["area"]
    assert fields[5] == ["client_ref"]
    assert results[7]["client_ref"] == "not-a-uuid"
    assert "vol-left has left" in problems[6]["detail"]
    assert "VD-OLD is not active" in problems[7]["detail"]
    assert results[-1]["client_ref"] is None
    assert all(x["id"] is None for x in results if x["status"] == "rejected")

    stored = await seeded.visits().find({}, {"client_ref": 1}).to_list()
    assert sorted(d["client_ref"] for d in stored) == sorted(g["client_ref"] for g in good)
    assert len(await visit_events(seeded, 2)) == 2


async def test_a_batch_over_500_records_is_refused_whole(seeded: Visits) -> None:
    items = [visit_body() for _ in range(501)]
    r = await seeded.client.post("/v1/visits:batch", json={"items": items}, headers=ADMIN)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "items"
    assert await seeded.visits().count_documents({}) == 0


async def test_bad_single_records_get_problem_details_and_write_nothing(seeded: Visits) -> None:
    tomorrow = (local_today() + timedelta(days=1)).isoformat()
    cases = {
        "people.elderly": visit_body(people={"total": 1, "elderly": 2}),
        "people.total": visit_body(people={"total": -1}),
        "visited_on": visit_body(visited_on=tomorrow),
        "household_ref": visit_body(setting="service_centre", area="urban"),
        "setting": visit_body(setting="market"),
        "client_ref": visit_body(client_ref="1234"),
        "notes": visit_body(notes="x" * 501),
    }
    for name, body in cases.items():
        r = await seeded.client.post("/v1/visits", json=body, headers=ADMIN)
        assert r.status_code == 422, name
        assert r.headers["content-type"].startswith("application/problem+json")
        assert name.split(".")[0] in r.text, name
    assert await seeded.visits().count_documents({}) == 0


async def test_read_model_rejects_volunteers_who_left_or_ended_membership_and_bad_units(seeded: Visits) -> None:
    cases = {
        "vol-left has left": visit_body(volunteer_ids=["vol-huong", "vol-left"]),
        "vol-ended is no longer a member of team VD-MOBILE": visit_body(volunteer_ids=["vol-ended"]),
        "team VD-OLD is not active": visit_body(team_code="VD-OLD"),
        "unit QN-HL is not team VD-MOBILE's unit (QN-VD) or below it": visit_body(unit_code="QN-HL"),
    }
    for message, body in cases.items():
        r = await seeded.client.post("/v1/visits", json=body, headers=ADMIN)
        assert r.status_code == 422, r.text
        assert message in r.json()["detail"]
        assert r.json()["type"].endswith("/invalid-reference")
    assert await seeded.visits().count_documents({}) == 0


async def test_a_resent_record_stays_a_duplicate_after_its_volunteer_left(seeded: Visits) -> None:
    from .factories import volunteer_left

    body = visit_body(volunteer_ids=["vol-binh"])
    first = await seeded.client.post("/v1/visits", json=body, headers=ADMIN)
    assert first.status_code == 201
    await seeded.registry_sends(volunteer_left("vol-binh", VD))
    again = await seeded.client.post("/v1/visits", json=body, headers=ADMIN)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    batch = await seeded.client.post("/v1/visits:batch", json={"items": [body]}, headers=ADMIN)
    assert batch.json()["items"][0]["status"] == "duplicate"
    fresh = await seeded.client.post("/v1/visits", json={**body, "client_ref": str(uuid.uuid4())}, headers=ADMIN)
    assert fresh.status_code == 422
