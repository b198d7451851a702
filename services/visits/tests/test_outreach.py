"""Outreach posts: idempotent intake, batches, pending units and voids, with their events."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.contracts import visits as ev
from shared.testing import collect_events, token
from shared.topics import VISITS_TOPIC
from visits.schemas import local_today

from .conftest import Visits
from .factories import HL, VD, post_body, unit

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

ADMIN = token("admin")


async def test_outreach_posts_are_published_once_and_voided_once(seeded: Visits) -> None:
    body = post_body()
    first = await seeded.client.post("/v1/outreach", json=body, headers=ADMIN)
    assert first.status_code == 201, first.text
    post = first.json()
    assert post["status"] == "published"
    assert post["unit_path"] == HL
    assert post["title"] == body["title"]
    again = await seeded.client.post("/v1/outreach", json=body, headers=ADMIN)
    assert again.status_code == 200
    assert again.json()["id"] == post["id"]

    tomorrow = (local_today() + timedelta(days=1)).isoformat()
    newspaper = post_body(channel="newspaper", team_code=None, unit_code="QN-VD", url=None, title="Báo Quảng Ninh")
    items = [
        newspaper,
        post_body(channel="tiktok"),
        post_body(published_on=tomorrow),
        post_body(url="javascript:alert(1)"),
        post_body(team_code="VD-MOBILE"),  # a Vân Đồn team cannot post for Phường Hạ Long
        body,
    ]
    batch = await seeded.client.post("/v1/outreach:batch", json={"items": items}, headers=ADMIN)
    assert batch.status_code == 200, batch.text
    results = batch.json()["items"]
    assert [r["status"] for r in results] == ["created", "rejected", "rejected", "rejected", "rejected", "duplicate"]
    assert results[-1]["id"] == post["id"]
    assert [r["problem"]["errors"][0]["field"] for r in results[1:5]] == ["channel", "published_on", "url", "unit_code"]
    resent = await seeded.client.post("/v1/outreach:batch", json={"items": items}, headers=ADMIN)
    assert next(r["status"] for r in resent.json()["items"]) == "duplicate"

    void = await seeded.client.post(f"/v1/outreach/{post['id']}:void", json={"reason": "Bài đăng nhầm"}, headers=ADMIN)
    assert void.status_code == 200
    assert void.json()["status"] == "voided"
    twice = await seeded.client.post(f"/v1/outreach/{post['id']}:void", json={"reason": "lại"}, headers=ADMIN)
    assert twice.status_code == 200

    listed = await seeded.client.get("/v1/outreach?channel=newspaper&unit=QN-VD", headers=ADMIN)
    assert [p["id"] for p in listed.json()["items"]] == [results[0]["id"]]
    got = await seeded.client.get(f"/v1/outreach/{results[0]['id']}", headers=ADMIN)
    assert got.json()["unit_path"] == VD

    events = [
        r.envelope
        for r in await collect_events(
            seeded.settings.kafka_bootstrap, [seeded.settings.topic(VISITS_TOPIC)], count=3, timeout=30, settle=1.0
        )
    ]
    assert sorted(e.type for e in events) == sorted([ev.OUTREACH_PUBLISHED, ev.OUTREACH_PUBLISHED, ev.OUTREACH_VOIDED])
    voided = next(e for e in events if e.type == ev.OUTREACH_VOIDED)
    assert voided.key == post["id"]
    assert voided.data == {
        "post_id": post["id"],
        "reason": "Bài đăng nhầm",
        "unit_code": "QN-HL",
        "unit_path": HL,
        "team_code": body.get("team_code"),
        "channel": "fanpage",
        "published_on": body["published_on"],
    }
    published = {e.key: e.data for e in events if e.type == ev.OUTREACH_PUBLISHED}
    assert published[results[0]["id"]]["title"] == "Báo Quảng Ninh"
    assert published[results[0]["id"]]["team_code"] is None


async def test_a_post_for_a_unit_not_known_yet_is_published_when_the_unit_arrives(visits_app: Visits) -> None:
    body = post_body(unit_code="QN-CP", team_code=None, channel="visual", url=None)
    r = await visits_app.client.post("/v1/outreach", json=body, headers=ADMIN)
    assert r.status_code == 202
    assert r.json()["status"] == "pending"
    await visits_app.registry_sends(unit("QN-CP", "Phường Cẩm Phả", ["QN", "QN-CP"], kind="ward"))
    got = (await visits_app.client.get(f"/v1/outreach/{r.json()['id']}", headers=ADMIN)).json()
    assert got["status"] == "published"
    assert got["unit_path"] == ["QN", "QN-CP"]
    events = await collect_events(
        visits_app.settings.kafka_bootstrap, [visits_app.settings.topic(VISITS_TOPIC)], count=1, timeout=30, settle=1.0
    )
    assert [e.envelope.type for e in events] == [ev.OUTREACH_PUBLISHED]
