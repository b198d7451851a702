"""Closing the week on the real broker and database.

Week 2025-W28 (7-13 July 2025): two wards report, the province approves them and closes, an admin
approves the province. Then late records arrive for the closed week: a new visit, a correction, a
void, a redelivered copy, and the first record of a team that had sent nothing. Reported figures
stay; revised figures move by exactly the adjustments listed; completeness says who reported on
time, late or not at all; ``known_at`` answers what a client saw before the late records; a reopen
needs an admin and a reason and is kept in the history.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from metrics.app import MetricsSettings, build_app
from shared.testing import collect_events, running_app, token, wait_until
from shared.topics import REPORTING_TOPIC

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

ADMIN = token("admin")
PROVINCE = token("manager", "QN")
HALONG_MANAGER = token("manager", "QN-HALONG")
VANDON_MANAGER = token("manager", "QN-VANDON")
D = date
QN = ["QN"]
HALONG = ["QN", "QN-HALONG"]
VANDON = ["QN", "QN-VANDON"]
WEEK = "from=2025-07-07&to=2025-07-13"
W28 = "/v1/periods/2025-W28"


async def people(client: httpx.AsyncClient, unit: str = "QN", query: str = WEEK) -> int:
    resp = await client.get(f"/v1/summary?unit={unit}&{query}", headers=ADMIN)
    return int(resp.json()["people_supported"]) if resp.status_code == 200 else -1


async def until(client: httpx.AsyncClient, expected: int, unit: str = "QN") -> None:
    async def reached() -> bool:
        return await people(client, unit) == expected

    await wait_until(reached, timeout=60, interval=0.2)


async def post(client: httpx.AsyncClient, path: str, headers: dict[str, str], body: Any = None) -> httpx.Response:
    return await client.post(f"{W28}/units/{path}", headers=headers, json=body)


async def test_close_approve_then_late_records_are_adjustments_and_reported_figures_stay(
    make_settings, ev, send
) -> None:
    settings = make_settings(MetricsSettings)
    va = ev.figures(HALONG, D(2025, 7, 8), households=1, people=3, team="T1")
    va_fixed = ev.figures(HALONG, D(2025, 7, 8), households=1, people=6, team="T1")
    vb = ev.figures(VANDON, D(2025, 7, 9), households=2, people=5, team="T3")
    vc = ev.figures(HALONG, D(2025, 7, 10), households=1, people=4, team="T1")
    vd = ev.figures(VANDON, D(2025, 7, 11), households=1, people=2, team="T4")
    late_visit = ev.visit("VC", vc)
    async with running_app(build_app(settings)) as client:
        await send(
            settings,
            [
                *(ev.unit(p) for p in (QN, HALONG, VANDON)),
                ev.team("T1", "mobile", HALONG),
                ev.team("T2", "permanent", HALONG),
                ev.team("T3", "mobile", VANDON),
                ev.team("T4", "campaign", VANDON),
                ev.visit("VA", va),
                ev.visit("VB", vb),
                ev.visit("VZ", ev.figures(HALONG, D(2025, 7, 2), people=9, team="T2")),  # the week before
            ],
        )
        await until(client, 8)
        seen_at = datetime.now(UTC)
        await asyncio.sleep(0.05)

        # Bottom up: the wards close, the province may not close before approving them.
        closed = await post(client, "QN-HALONG:close", HALONG_MANAGER, {"note": "Đã rà soát / Checked"})
        assert closed.status_code == 200, closed.text
        assert (closed.json()["status"], closed.json()["reported"]["people_supported"]) == ("closed", 3)
        assert (await post(client, "QN-HALONG:close", HALONG_MANAGER)).json()["type"].endswith("period-not-open")
        assert (await post(client, "QN-VANDON:close", HALONG_MANAGER)).status_code == 403
        assert (await post(client, "QN-VANDON:close", VANDON_MANAGER)).status_code == 200
        early = await post(client, "QN:close", PROVINCE)
        assert early.status_code == 409
        assert early.json()["units"] == ["QN-HALONG", "QN-VANDON"]
        assert (await post(client, "QN-HALONG:approve", HALONG_MANAGER)).status_code == 403  # not its own
        for ward in ("QN-HALONG", "QN-VANDON"):
            approved = await post(client, f"{ward}:approve", PROVINCE)
            assert approved.status_code == 200, approved.text
            assert approved.json()["approved_by"]["sub"]
        assert (await post(client, "QN:close", PROVINCE)).status_code == 200
        assert (await post(client, "QN:approve", PROVINCE)).status_code == 403  # the root: admins only
        assert (await post(client, "QN:approve", ADMIN)).json()["status"] == "approved"
        status = (await client.get(f"{W28}?unit=QN", headers=ADMIN)).json()
        assert [(u["unit"], u["status"]) for u in status["units"]] == [
            ("QN", "approved"),
            ("QN-HALONG", "approved"),
            ("QN-VANDON", "approved"),
        ]
        assert status["not_closed"] == []

        # Late data for the closed week.
        await send(
            settings,
            [
                late_visit,
                ev.visit_corrected("VA", va, va_fixed),
                ev.visit_voided("VB", vb),
                late_visit,  # redelivered
                ev.visit("VD", vd),
            ],
        )
        await until(client, 3 + 3 + 4 + 2)

        figures = (await client.get(f"{W28}/units/QN/figures", headers=ADMIN)).json()
        assert figures["status"] == "approved"
        assert figures["reported"]["people_supported"] == 8
        assert figures["revised"]["people_supported"] == 12
        assert figures["difference"]["people_supported"] == 4
        adjustments = figures["adjustments"]
        # One per record event (the redelivered copy is not one), in the order they reached the log.
        assert sorted((a["subject"], a["changes"].get("people_supported")) for a in adjustments) == [
            ("VA", 3),
            ("VB", -5),
            ("VC", 4),
            ("VD", 2),
        ]
        assert [a["arrived_at"] for a in adjustments] == sorted(a["arrived_at"] for a in adjustments)
        assert all(a["arrived_at"] > figures["closed_at"] for a in adjustments)
        for key, reported in figures["reported"].items():
            moved = sum(a["changes"].get(key, 0) for a in adjustments)
            if key.startswith(("teams", "volunteers", "team_members")):
                continue
            assert figures["revised"][key] == reported + moved, key
        live = (await client.get(f"/v1/summary?unit=QN&{WEEK}", headers=ADMIN)).json()
        assert figures["revised"]["households_visited"] == live["households_visited"] == 3
        ward = (await client.get(f"{W28}/units/QN-HALONG/figures", headers=HALONG_MANAGER)).json()
        assert (ward["reported"]["people_supported"], ward["revised"]["people_supported"]) == (3, 10)
        assert (await client.get(f"{W28}/units/QN-VANDON/figures", headers=HALONG_MANAGER)).status_code == 403

        # As reported, and as known before the late records.
        reported = (await client.get(f"/v1/summary?unit=QN&{WEEK}&reported=true", headers=ADMIN)).json()
        assert (reported["people_supported"], reported["scope"]["reported"]) == (8, "2025-W28")
        then = await client.get(f"/v1/summary?unit=QN&{WEEK}&known_at={quote(seen_at.isoformat())}", headers=ADMIN)
        assert then.json()["people_supported"] == 8
        now = await client.get(
            f"/v1/summary?unit=QN&{WEEK}&known_at={quote(datetime.now(UTC).isoformat())}", headers=ADMIN
        )
        assert now.json()["people_supported"] == 12
        table = (
            await client.get(f"/v1/reports/table?unit=QN&{WEEK}&known_at={quote(seen_at.isoformat())}", headers=ADMIN)
        ).json()
        assert {r["unit"]: r["figures"]["people_supported"] for r in table["rows"]} == {"QN-HALONG": 3, "QN-VANDON": 5}
        assert (table["totals"]["figures"]["people_supported"], table["totals"]["previous"]["people_supported"]) == (
            8,
            9,
        )
        assert table["known_at"] is not None
        teams = (
            await client.get(
                f"/v1/reports/table?unit=QN&{WEEK}&rows=teams&known_at={quote(seen_at.isoformat())}", headers=ADMIN
            )
        ).json()
        assert {r["team"]: r["figures"]["people_supported"] for r in teams["rows"]} == {
            "T1": 3,
            "T2": 0,
            "T3": 5,
            "T4": 0,
            None: 0,
        }
        open_week = await client.get("/v1/summary?unit=QN&from=2025-06-30&to=2025-07-06&reported=true", headers=ADMIN)
        assert open_week.status_code == 409
        assert (
            await client.get(f"/v1/summary?unit=QN&known_at={seen_at.isoformat()}", headers=ADMIN)
        ).status_code == 422

        # Completeness: T2 sent nothing this week, T4 only after the close.
        complete = (await client.get(f"{W28}/units/QN/completeness", headers=ADMIN)).json()
        assert {t["team"]: t["status"] for t in complete["teams"]} == {
            "T1": "on_time",
            "T2": "silent",
            "T3": "on_time",
            "T4": "late",
        }
        assert (complete["teams_expected"], complete["teams_reported"], complete["teams_late"]) == (4, 3, 1)
        assert complete["silent_teams"] == ["T2"]
        assert complete["units_not_closed"] == []
        next_week = (await client.get("/v1/periods/2025-W29/units/QN/completeness", headers=ADMIN)).json()
        assert next_week["units_not_closed"] == ["QN", "QN-HALONG", "QN-VANDON"]

        # The narrative.
        md = await client.get(f"{W28}/units/QN/narrative?format=md", headers=ADMIN)
        assert md.headers["content-type"].startswith("text/markdown")
        assert md.text.startswith("# Báo cáo tuần 2025-W28 / Weekly report 2025-W28: Tỉnh Quảng Ninh")
        assert "## Số liệu đến muộn / Late data received" in md.text
        assert "4 bản ghi đến hoặc thay đổi sau khi chốt" in md.text
        assert "| Người dân được hỗ trợ / People supported | 8 | 12 | +4 |" in md.text
        assert "Đơn vị chưa chốt" not in md.text
        page = await client.get(f"{W28}/units/QN/narrative?format=html", headers=ADMIN)
        assert page.text.startswith("<!doctype html>")
        assert "<h2>Số liệu đến muộn / Late data received</h2>" in page.text

        # Next week's narrative lists what reached the closed week late.
        following = await client.get("/v1/periods/2025-W29/units/QN/narrative", headers=ADMIN)
        assert "- Tuần 2025-W28 (đã chốt / closed): 4 bản ghi đến muộn / late records:" in following.text
        assert "Người dân được hỗ trợ / People supported +4" in following.text
        assert "Tuần chưa được chốt" in following.text  # W29 itself is open

        # Reopening: an admin, with a reason, top down; kept in the history.
        assert (await post(client, "QN:reopen", PROVINCE, {"reason": "số liệu bão"})).status_code == 403
        assert (await post(client, "QN:reopen", ADMIN, {})).status_code == 422
        assert (
            (await post(client, "QN-HALONG:reopen", ADMIN, {"reason": "số liệu bão"}))
            .json()["type"]
            .endswith("parent-closed")
        )
        reopened = await post(client, "QN:reopen", ADMIN, {"reason": "Số liệu bão về muộn"})
        assert reopened.status_code == 200, reopened.text
        history = reopened.json()["history"]
        assert [(h["action"], h["before"]["status"], h["after"]["status"]) for h in history] == [
            ("period.closed", "open", "closed"),
            ("period.approved", "closed", "approved"),
            ("period.reopened", "approved", "open"),
        ]
        assert history[-1]["reason"] == "Số liệu bão về muộn"
        assert history[-1]["actor"]["role"] == "admin"
        # The same entries through the audit trail, in the caller's scope.
        audit = (await client.get("/v1/audit?entity=period", headers=ADMIN)).json()["items"]
        assert [(a["entity_id"], a["action"]) for a in audit if a["entity_id"] == "2025-W28/QN"] == [
            ("2025-W28/QN", "period.closed"),
            ("2025-W28/QN", "period.approved"),
            ("2025-W28/QN", "period.reopened"),
        ]
        ward_view = (await client.get("/v1/audit?entity=period", headers=HALONG_MANAGER)).json()["items"]
        assert {a["entity_id"] for a in ward_view} == {"2025-W28/QN-HALONG"}
        assert reopened.json()["reported"] is None
        # Closed again, it reports what is known now.
        again = await post(client, "QN:close", PROVINCE)
        assert again.json()["reported"]["people_supported"] == 12
        assert (await client.get("/v1/periods/2025-W99", headers=ADMIN)).status_code == 422

        # Integrators see the cycle on the reporting topic, in order per unit.
        got = await collect_events(settings.kafka_bootstrap, [settings.topic(REPORTING_TOPIC)], count=8, settle=1.0)
        of_province = [
            (e.type.rsplit(".", 2)[-2], e.data.get("version"))
            for e in (r.envelope for r in got)
            if e.key == "2025-W28/QN"
        ]
        assert of_province == [("closed", 1), ("approved", 1), ("reopened", 1), ("closed", 2)]
        closed = next(
            e.data for e in (r.envelope for r in got) if e.key == "2025-W28/QN-HALONG" and e.type.endswith("closed.v1")
        )
        assert closed["reported"]["people_supported"] == 3
        assert closed["period"] == {
            "period": "2025-W28",
            "first": "2025-07-07",
            "last": "2025-07-13",
            "unit_code": "QN-HALONG",
            "unit_path": HALONG,
        }
        assert len(got) == 8
