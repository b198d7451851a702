"""The metrics service end to end on the real broker and database: every indicator, scoping,
series, campaign progress, Prometheus gauges and a rebuild that equals the live projection."""

from __future__ import annotations

import asyncio
import time
from datetime import date
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metrics.app import MetricsSettings, build_app
from shared.testing import running_app, token

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

PROVINCE = ["QN"]
HALONG = ["QN", "QN-HALONG"]
VANDON = ["QN", "QN-VANDON"]
SCHOOL = ["QN", "QN-HALONG", "QN-HALONG-THPT"]
ADMIN = token("admin")
D = date


def scenario(ev) -> list[Any]:
    """Seven weeks in miniature, with duplicates, late records, corrections, voids and cancellations.

    Visits: VA remote, VB island (sent twice), VC rural corrected to border with other groups, VD
    urban voided, VE island arriving last, VG of an older producer (no area) recorded and voided.
    Teams: T1 permanent (V1, V2, V4; V2 leaves), T2 mobile in Vân Đồn (V3, V4) made a campaign team
    of Hạ Long with its 2 members and joined by V1 there, T3 mobile (V1, V4) deactivated with its 2
    members, T4 literacy (V4, the start sent twice). Volunteers: V1 union member and student (it,
    vneid), V2 youth (media) leaves, V3 youth and lecturer (teaching) moves to Hạ Long as a lecturer
    who also knows IT, V4 student (it) updated by an older producer.
    """
    a = ev.figures(
        HALONG,
        D(2025, 7, 2),
        households=1,
        people=3,
        vneid=2,
        l3=1,
        l4=0,
        area="remote",
        elderly=2,
        women=1,
        activated=1,
    )
    b = ev.figures(VANDON, D(2025, 7, 3), 1, 5, 1, 0, 2, area="island", elderly=1, women=2, veterans=1, activated=1)
    c = ev.figures(SCHOOL, D(2025, 7, 2), households=1, people=4, vneid=0, l3=2, l4=1, area="rural", elderly=1, women=2)
    c_fixed = ev.figures(
        SCHOOL, D(2025, 7, 5), 1, 6, 1, 3, 1, area="border", elderly=2, women=3, veterans=1, activated=1
    )
    d = ev.figures(HALONG, D(2025, 7, 4), 1, 2, 1, 0, 1, area="urban", elderly=1, women=1, activated=2)
    late = ev.figures(HALONG, D(2025, 6, 30), 1, 1, 1, 1, 1, area="island", elderly=1, veterans=1, activated=1)
    older = ev.figures(HALONG, D(2025, 7, 3), households=1, people=2, area=None, women=1)
    visit_b = ev.visit("VB", b)
    v1 = ev.volunteer("V1", HALONG, roles=("union_member", "student"), skills=("it", "vneid"))
    k1 = ev.course("K1", HALONG, "youth_children", D(2025, 7, 5), D(2025, 7, 20))
    k2 = ev.course("K2", VANDON, "elderly_middle_aged", D(2025, 7, 6), D(2025, 7, 6), mode="online")
    k3 = ev.course("K3", SCHOOL, "general", D(2025, 7, 8), D(2025, 7, 10), mode="online")
    k4 = ev.course("K4", HALONG, "elderly_middle_aged", D(2025, 7, 9), D(2025, 7, 12))
    enrol_k1 = ev.enrolled(k1, "p2", 1)
    joined_t4 = ev.member("T4", "V4", "literacy", SCHOOL)
    return [
        *(ev.unit(p) for p in (PROVINCE, HALONG, VANDON, SCHOOL)),
        ev.campaign(
            "PEAK90",
            D(2025, 7, 1),
            D(2025, 9, 28),
            [
                ("households_visited", "QN", 1440),
                ("people_supported", "QN-HALONG", 100),
                ("teams", "QN", 100),
                ("courses", "QN-VANDON", 10),
                ("people_supported_by_area", "QN", 94),
                ("team_members", "QN-HALONG", 10),
            ],
        ),
        ev.team("T1", "permanent", HALONG),
        ev.team("T2", "mobile", VANDON),
        ev.team("T3", "mobile", HALONG),
        ev.team("T4", "literacy", SCHOOL),
        ev.team("T5", "campaign", VANDON),
        v1,
        ev.volunteer("V2", HALONG, roles=("youth",), skills=("media",)),
        ev.volunteer("V3", VANDON, roles=("youth", "lecturer"), skills=("teaching",)),
        ev.volunteer("V4", SCHOOL, roles=("student",), skills=("it",)),
        v1,  # republished by the relay
        *(ev.member("T1", v, "permanent", HALONG) for v in ("V1", "V2", "V4")),
        *(ev.member("T2", v, "mobile", VANDON) for v in ("V3", "V4")),
        *(ev.member("T3", v, "mobile", HALONG) for v in ("V1", "V4")),
        joined_t4,
        joined_t4,  # republished by the relay
        ev.member("T5", "V3", None, None, team_active=None),  # an older producer's: counts nowhere
        ev.team_deactivated("T3", "mobile", HALONG, members=2),
        ev.member("T3", "V4", "mobile", HALONG, ended=True, team_active=False),  # already out with T3
        ev.team_moved("T2", "campaign", HALONG, "mobile", VANDON, members=2),
        ev.member("T2", "V1", "campaign", HALONG),
        ev.volunteer_left("V2", HALONG, roles=("youth",), skills=("media",)),
        ev.member("T1", "V2", "permanent", HALONG, ended=True),
        ev.volunteer_moved(
            "V3",
            HALONG,
            VANDON,
            roles=("lecturer",),
            skills=("teaching", "it"),
            previous_roles=("youth", "lecturer"),
            previous_skills=("teaching",),
        ),
        ev.volunteer_moved(
            "V4", SCHOOL, SCHOOL, roles=("student",), skills=("it",), previous_roles=None, previous_skills=None
        ),
        ev.visit("VA", a),
        visit_b,
        ev.visit("VC", c),
        ev.visit("VD", d),
        visit_b,  # the same record uploaded twice from an offline phone
        ev.visit_corrected("VC", c, c_fixed),
        ev.visit_voided("VD", d),
        ev.visit("VG", older),
        ev.visit_voided("VG", older),
        ev.post("P1", HALONG, "fanpage", D(2025, 7, 2)),
        ev.post("P2", HALONG, "newspaper", D(2025, 7, 3)),
        ev.post("P3", VANDON, "visual", D(2025, 7, 3)),
        ev.post("P4", VANDON, "visual", D(2025, 7, 4)),
        ev.post_voided("P4", VANDON, "visual", D(2025, 7, 4)),
        ev.scheduled(k1),
        ev.enrolled(k1, "p1", 0),
        enrol_k1,
        enrol_k1,
        ev.enrolled(k1, "p3", 2),
        ev.participant_completed(k1, "p1", 0),
        ev.participant_completed(k1, "p2", 1),
        ev.completed(k1, (3, 3), (2, 2)),
        ev.scheduled(k2),
        ev.session(k2, "s1", D(2025, 7, 6), 25, 0, 25),
        ev.session(k2, "s2", D(2025, 7, 6), 20, 25, 25),
        ev.completed(k2, (25, 30), (0, 27)),
        ev.scheduled(k3),
        ev.enrolled(k3, "p9", 0),
        ev.enrolled(k3, "p8", 1),
        ev.cancelled(k3, 2),
        ev.scheduled(k4),
        ev.visit("VE", late),  # captured offline during the typhoon, arrives last
    ]


PROVINCE_ALL_TIME = {
    "teams": {"permanent": 1, "mobile": 0, "literacy": 1, "campaign": 2, "total": 4},
    "volunteers": 3,
    "households_visited": 4,
    "people_supported": 15,
    "vneid_installs": 5,
    "online_applications": {"l3": 5, "l4": 4, "total": 9},
    "courses": {"youth_children": 1, "elderly_middle_aged": 2, "general": 0, "total": 3},
    "course_participants": {"youth_children": 3, "elderly_middle_aged": 30, "general": 0, "total": 33},
    "course_completions": 29,
    "outreach_posts": {"fanpage": 1, "newspaper": 1, "visual": 1, "total": 3},
    # VA remote 3 people, VB island 5, VC as corrected border 6, VE island 1 (VD voided, VG without area).
    "people_supported_by_area": {"remote": 3, "border": 6, "island": 6, "rural": 0, "urban": 0, "total": 15},
    "households_by_area": {"remote": 1, "border": 1, "island": 2, "rural": 0, "urban": 0, "total": 4},
    # Elderly 2 + 1 + 2 + 1, women 1 + 2 + 3 + 0, veterans 0 + 1 + 1 + 1.
    "people_supported_by_group": {"elderly": 6, "women": 6, "veterans": 3, "total": 15},
    "vneid_activations": 4,
    "courses_by_mode": {"in_person": 2, "online": 1, "total": 3},  # K1, K4; K2 (K3 cancelled)
    "course_participants_by_mode": {"in_person": 3, "online": 30, "total": 33},
    # V1 union member and student, V3 lecturer, V4 student; skills it x3, vneid, teaching.
    "volunteers_by_role": {"union_member": 1, "youth": 0, "student": 2, "lecturer": 1, "total": 4},
    "volunteers_by_skill": {"it": 3, "vneid": 1, "teaching": 1, "media": 0, "total": 5},
    # T1: V1, V4; T2: V3, V4, V1; T4: V4 (T3 deactivated with its 2).
    "team_members": {"permanent": 2, "mobile": 0, "literacy": 1, "campaign": 3, "total": 6},
}
HALONG_FIRST_DAYS = {
    "teams": {"permanent": 1, "mobile": 0, "literacy": 1, "campaign": 1, "total": 3},
    "volunteers": 3,
    "households_visited": 1,
    "people_supported": 3,
    "vneid_installs": 2,
    "online_applications": {"l3": 1, "l4": 0, "total": 1},
    "courses": {"youth_children": 0, "elderly_middle_aged": 0, "general": 0, "total": 0},
    "course_participants": {"youth_children": 0, "elderly_middle_aged": 0, "general": 0, "total": 0},
    "course_completions": 0,
    "outreach_posts": {"fanpage": 1, "newspaper": 1, "visual": 0, "total": 2},
    # VA only: VC moved to 5 July, VD was voided.
    "people_supported_by_area": {"remote": 3, "border": 0, "island": 0, "rural": 0, "urban": 0, "total": 3},
    "households_by_area": {"remote": 1, "border": 0, "island": 0, "rural": 0, "urban": 0, "total": 1},
    "people_supported_by_group": {"elderly": 2, "women": 1, "veterans": 0, "total": 3},
    "vneid_activations": 1,
    "courses_by_mode": {"in_person": 0, "online": 0, "total": 0},
    "course_participants_by_mode": {"in_person": 0, "online": 0, "total": 0},
    "volunteers_by_role": {"union_member": 1, "youth": 0, "student": 2, "lecturer": 1, "total": 4},
    "volunteers_by_skill": {"it": 3, "vneid": 1, "teaching": 1, "media": 0, "total": 5},
    "team_members": {"permanent": 2, "mobile": 0, "literacy": 1, "campaign": 3, "total": 6},
}


def indicators(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("as_of", "scope")}


async def eventually(client: httpx.AsyncClient, url: str, expected: Any, *, timeout: float = 60.0) -> Any:
    """GET ``url`` until its indicators equal ``expected``; return the last body either way."""
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        resp = await client.get(url, headers=ADMIN)
        if resp.status_code == 200:
            body = resp.json()
            if indicators(body) == expected:
                return body
        await asyncio.sleep(0.2)
    return body


def gauge_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_every_indicator_is_exact_after_duplicates_late_events_corrections_and_voids(
    make_settings, ev, send
) -> None:
    settings = make_settings(MetricsSettings, gauge_refresh_seconds=0.2)
    async with running_app(build_app(settings)) as client:
        await send(settings, scenario(ev))
        body = await eventually(client, "/v1/summary", PROVINCE_ALL_TIME)
        assert indicators(body) == PROVINCE_ALL_TIME
        active = {"unit_status": "active", "merged_into": None, "successors": [], "known_at": None, "reported": None}
        assert body["scope"] == {"unit": "QN", "from": None, "to": None, "campaign": None, **active}

        ranged = await client.get("/v1/summary?unit=QN-HALONG&from=2025-07-01&to=2025-07-04", headers=ADMIN)
        assert ranged.status_code == 200
        assert indicators(ranged.json()) == HALONG_FIRST_DAYS

        school = (await client.get("/v1/summary?unit=QN-HALONG-THPT", headers=ADMIN)).json()
        assert school["households_visited"] == 1
        assert school["people_supported"] == 6
        assert school["courses"]["total"] == 0  # K3 was cancelled
        assert school["teams"]["literacy"] == 1
        assert school["people_supported_by_area"] == {
            "remote": 0,
            "border": 6,
            "island": 0,
            "rural": 0,  # VC was rural before its correction
            "urban": 0,
            "total": 6,
        }
        assert school["team_members"]["literacy"] == 1  # V4's start in T4 was sent twice
        assert school["volunteers_by_role"] == {"union_member": 0, "youth": 0, "student": 1, "lecturer": 0, "total": 1}
        vandon = (await client.get("/v1/summary?unit=QN-VANDON", headers=ADMIN)).json()
        assert vandon["team_members"]["total"] == 0  # T2 took its members to Hạ Long
        assert vandon["volunteers_by_skill"]["total"] == 0  # V3 moved away
        assert vandon["course_participants_by_mode"] == {"in_person": 0, "online": 30, "total": 30}

        campaign = (await client.get("/v1/summary?campaign=PEAK90", headers=ADMIN)).json()
        assert campaign["scope"] == {
            "unit": "QN",
            "from": "2025-07-01",
            "to": "2025-09-28",
            "campaign": "PEAK90",
            **active,
        }
        assert campaign["households_visited"] == 3  # the late visit of 30 June is outside the window
        assert campaign["households_by_area"] == {
            "remote": 1,
            "border": 1,
            "island": 1,
            "rural": 0,
            "urban": 0,
            "total": 3,
        }
        assert campaign["team_members"] == PROVINCE_ALL_TIME["team_members"]  # current state, whatever the window

        series = await client.get(
            "/v1/timeseries?indicator=households_visited&unit=QN-HALONG&from=2025-06-30&to=2025-07-05",
            headers=ADMIN,
        )
        assert series.status_code == 200
        assert [(p["start"], p["value"]) for p in series.json()["points"]] == [
            ("2025-06-30", 1),
            ("2025-07-01", 0),
            ("2025-07-02", 1),
            ("2025-07-03", 0),
            ("2025-07-04", 0),
            ("2025-07-05", 1),
        ]
        weekly = await client.get(
            "/v1/timeseries?indicator=online_applications&interval=week&from=2025-06-30&to=2025-07-13",
            headers=ADMIN,
        )
        assert [(p["start"], p["value"], p["by"]) for p in weekly.json()["points"]] == [
            ("2025-06-30", 9, {"l3": 5, "l4": 4}),
            ("2025-07-07", 0, {"l3": 0, "l4": 0}),
        ]
        state_series = await client.get("/v1/timeseries?indicator=teams", headers=ADMIN)
        assert state_series.status_code == 422
        areas = await client.get(
            "/v1/timeseries?indicator=people_supported_by_area&interval=week&from=2025-06-30&to=2025-07-13",
            headers=ADMIN,
        )
        assert [(p["start"], p["value"], p["by"]) for p in areas.json()["points"]] == [
            ("2025-06-30", 15, {"remote": 3, "border": 6, "island": 6, "rural": 0, "urban": 0}),
            ("2025-07-07", 0, {"remote": 0, "border": 0, "island": 0, "rural": 0, "urban": 0}),
        ]
        modes = await client.get(
            "/v1/timeseries?indicator=courses_by_mode&from=2025-07-05&to=2025-07-09", headers=ADMIN
        )
        assert [(p["start"], p["by"]) for p in modes.json()["points"]] == [
            ("2025-07-05", {"in_person": 1, "online": 0}),
            ("2025-07-06", {"in_person": 0, "online": 1}),
            ("2025-07-07", {"in_person": 0, "online": 0}),
            ("2025-07-08", {"in_person": 0, "online": 0}),  # K3 was cancelled
            ("2025-07-09", {"in_person": 1, "online": 0}),
        ]
        activations = await client.get(
            "/v1/timeseries?indicator=vneid_activations&interval=week&from=2025-06-30&to=2025-07-06", headers=ADMIN
        )
        assert [(p["start"], p["value"]) for p in activations.json()["points"]] == [("2025-06-30", 4)]
        for current_state in ("volunteers_by_role", "volunteers_by_skill", "team_members"):
            resp = await client.get(f"/v1/timeseries?indicator={current_state}", headers=ADMIN)
            assert resp.status_code == 422, current_state

        progress = await client.get("/v1/campaigns/PEAK90/progress", headers=ADMIN)
        assert progress.status_code == 200
        rows = {(t["indicator"], t["unit_code"]): t for t in progress.json()["targets"]}
        assert rows[("households_visited", "QN")]["actual"] == 3
        assert rows[("people_supported", "QN-HALONG")]["actual"] == 9
        assert rows[("people_supported", "QN-HALONG")]["percent"] == 9.0
        assert rows[("teams", "QN")]["actual"] == 4
        assert rows[("teams", "QN")]["projected"] == 4.0
        assert rows[("courses", "QN-VANDON")]["actual"] == 1
        # VA, VB and VC as corrected; the late VE of 30 June is outside the window.
        assert rows[("people_supported_by_area", "QN")]["actual"] == 14
        assert rows[("people_supported_by_area", "QN")]["percent"] == 14.9
        assert rows[("team_members", "QN-HALONG")]["actual"] == 6
        assert rows[("team_members", "QN-HALONG")]["projected"] == 6.0

        risk = await client.get("/v1/campaigns/PEAK90/risk?as_of=2025-07-10", headers=ADMIN)
        assert risk.status_code == 200
        risks = {(t["indicator"], t["unit_code"]): t for t in risk.json()["targets"]}
        fields = ("actual", "pace_needed", "pace_last_7_days", "projected", "projected_ratio", "status")
        # 10 of 90 days gone; 6 people (VC, 5 July) in the last 7 days: 14 + 6/7 * 80 = 82.6 of 94.
        assert tuple(risks[("people_supported_by_area", "QN")][f] for f in fields) == (
            14,
            1.0,
            0.86,
            82.6,
            0.878,
            "at_risk",
        )
        # Current state projects as it stands: 6 of 10.
        assert tuple(risks[("team_members", "QN-HALONG")][f] for f in fields) == (6, 0.05, None, 6.0, 0.6, "behind")

        fresh = await client.get("/v1/freshness", headers=token("viewer", "QN-VANDON"))
        assert fresh.status_code == 200
        topics = {t["topic"]: t for t in fresh.json()["topics"]}
        assert set(topics) == {"registry.events.v1", "visits.events.v1", "training.events.v1"}
        assert topics["visits.events.v1"]["last_event_time"] is not None

        # The gauges come from the background refresh, not from the scrape.
        await asyncio.sleep(0.6)
        samples = gauge_samples((await client.get("/metrics")).text)
        assert [name for name, _ in samples if name.endswith("_created")] == []

        def indicator(name: str, key: str, unit: str, level: str) -> float | None:
            labels = (("key", key), ("level", level), ("unit", unit))
            return samples.get((f"bridge_indicator_{name}", labels))

        assert indicator("households_visited", "total", "QN", "province") == 4.0
        assert indicator("households_visited", "total", "QN-HALONG", "commune") == 3.0
        assert indicator("teams", "campaign", "QN", "province") == 2.0
        assert indicator("course_participants", "elderly_middle_aged", "QN-VANDON", "commune") == 30.0
        assert indicator("online_applications", "total", "QN", "province") == 9.0
        assert indicator("people_supported_by_area", "island", "QN-VANDON", "commune") == 5.0
        assert indicator("people_supported_by_group", "women", "QN", "province") == 6.0
        assert indicator("vneid_activations", "total", "QN", "province") == 4.0
        assert indicator("courses_by_mode", "online", "QN", "province") == 1.0
        assert indicator("volunteers_by_skill", "it", "QN-HALONG", "commune") == 3.0
        assert indicator("team_members", "campaign", "QN", "province") == 3.0
        assert indicator("team_members", "total", "QN-VANDON", "commune") == 0.0
        assert not any(
            name.startswith("bridge_indicator_") and ("unit", "QN-HALONG-THPT") in labels for name, labels in samples
        )
        target_labels = (("campaign", "PEAK90"), ("indicator", "people_supported"), ("unit", "QN-HALONG"))
        assert samples[("bridge_campaign_target", target_labels)] == 100.0
        assert samples[("bridge_campaign_actual", target_labels)] == 9.0
        assert samples[("bridge_campaign_progress_ratio", target_labels)] == pytest.approx(0.09)
        assert samples[("bridge_projector_events_applied_total", (("topic", "visits.events.v1"),))] >= 8
        # A poller can ask for named series only (what the bench does while a drain is measured).
        only = gauge_samples(
            (await client.get("/metrics", params={"name[]": "bridge_projector_events_applied_total"})).text
        )
        assert {name for name, _ in only} == {"bridge_projector_events_applied_total"}
        assert only == {k: v for k, v in samples.items() if k[0] == "bridge_projector_events_applied_total"}


async def test_units_are_scoped_to_the_callers_subtree(make_settings, ev, send) -> None:
    settings = make_settings(MetricsSettings)
    async with running_app(build_app(settings)) as client:
        await send(settings, scenario(ev))
        await eventually(client, "/v1/summary", PROVINCE_ALL_TIME)
        vandon = token("manager", "QN-VANDON")
        other = await client.get("/v1/summary?unit=QN-HALONG", headers=vandon)
        assert other.status_code == 403
        assert other.json()["type"].endswith("out-of-scope")
        assert (await client.get("/v1/summary?unit=QN", headers=vandon)).status_code == 403
        assert (
            await client.get("/v1/timeseries?indicator=people_supported&unit=QN-HALONG", headers=vandon)
        ).status_code == 403
        own = (await client.get("/v1/summary", headers=vandon)).json()
        assert own["scope"]["unit"] == "QN-VANDON"
        assert own["people_supported"] == 5
        subtree = await client.get("/v1/summary?unit=QN-HALONG-THPT", headers=token("viewer", "QN-HALONG"))
        assert subtree.status_code == 200
        mine = (await client.get("/v1/campaigns/PEAK90/progress", headers=vandon)).json()
        assert [(t["indicator"], t["unit_code"], t["actual"]) for t in mine["targets"]] == [("courses", "QN-VANDON", 1)]
        assert (await client.get("/v1/summary")).status_code == 401
        assert (await client.post("/v1/admin/rebuild", headers=vandon)).status_code == 403
        assert (await client.get("/v1/summary?unit=NOWHERE", headers=ADMIN)).status_code == 404


async def test_rebuild_replays_every_topic_into_figures_equal_to_the_live_ones(make_settings, ev, send) -> None:
    settings = make_settings(MetricsSettings, generation_poll_seconds=0.3)
    async with running_app(build_app(settings)) as client:
        await send(settings, scenario(ev))
        await eventually(client, "/v1/summary", PROVINCE_ALL_TIME)
        urls = [
            "/v1/summary?unit=QN-HALONG&from=2025-07-01&to=2025-07-04",
            "/v1/summary?unit=QN-VANDON&to=2025-07-31",
            "/v1/summary?unit=QN-HALONG-THPT",
            "/v1/timeseries?indicator=course_completions&from=2025-07-01&to=2025-07-31&interval=week",
        ]
        live = [(await client.get(u, headers=ADMIN)).json() for u in urls]

        started = await client.post("/v1/admin/rebuild", headers=ADMIN)
        assert started.status_code == 202
        assert started.json()["generation"] == 2
        # Events published while the rebuild runs must reach the rebuilt generation exactly once.
        extra = ev.figures(VANDON, D(2025, 8, 1), households=2, people=7)
        late_visit = ev.visit("VX", extra)
        await send(settings, [late_visit, late_visit])

        deadline = time.monotonic() + 90
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = (await client.get(started.json()["status_url"], headers=ADMIN)).json()
            if status["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.3)
        assert status["state"] == "done", status
        assert status["active_generation"] == 2

        expected = {
            **PROVINCE_ALL_TIME,
            "households_visited": 6,
            "people_supported": 22,
            # VX: 2 island households, 7 people, 1 of them elderly.
            "people_supported_by_area": {"remote": 3, "border": 6, "island": 13, "rural": 0, "urban": 0, "total": 22},
            "households_by_area": {"remote": 1, "border": 1, "island": 4, "rural": 0, "urban": 0, "total": 6},
            "people_supported_by_group": {"elderly": 7, "women": 6, "veterans": 3, "total": 16},
        }
        body = await eventually(client, "/v1/summary", expected)
        assert indicators(body) == expected
        rebuilt = [(await client.get(u, headers=ADMIN)).json() for u in urls]
        for before, after in zip(live, rebuilt, strict=True):
            assert indicators(after) == indicators(before)
        fresh = (await client.get("/v1/freshness", headers=ADMIN)).json()
        assert fresh["generation"] == 2
        # The live projector now runs in the rebuilt generation's group and keeps counting.
        await send(settings, [ev.post("P9", VANDON, "fanpage", D(2025, 8, 2))])
        final = {**expected, "outreach_posts": {"fanpage": 2, "newspaper": 1, "visual": 1, "total": 4}}
        assert indicators(await eventually(client, "/v1/summary", final)) == final
