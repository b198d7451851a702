"""Figures follow the tree as it is now: a unit moved, three communes merged, one split, one closed.

The registry's events arrive as the registry publishes them (teams moved by ``team.updated``, targets
summed by ``campaign.targets_set``, then ``unit.merged``), on the real broker, into the real FerretDB.
Every unit's summary, time series, campaign progress and Prometheus gauge must count the history of
the units now under it, and again after a rebuild replays the topics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import date
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metrics.app import MetricsSettings, build_app
from shared.contracts import registry as reg
from shared.envelope import Envelope, make_event
from shared.testing import running_app, token

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

ADMIN = token("admin")
D = date
QN = ["QN"]
A, B, C, DD = ["QN", "QN-A"], ["QN", "QN-B"], ["QN", "QN-C"], ["QN", "QN-D"]
SCHOOL = ["QN", "QN-A", "QN-A-THPT"]
E, F = ["QN", "QN-E"], ["QN", "QN-F"]
NAMES = {
    "QN": ("Tỉnh Quảng Ninh", "province"),
    "QN-A": ("Phường Hạ Long", "ward"),
    "QN-B": ("Phường Hồng Gai", "ward"),
    "QN-C": ("Phường Bạch Đằng", "ward"),
    "QN-D": ("Phường Cao Xanh", "ward"),
    "QN-A-THPT": ("Trường THPT Hòn Gai", "school"),
    "QN-E": ("Đặc khu Vân Đồn", "special_zone"),
    "QN-E1": ("Đặc khu Vân Đồn Bắc", "special_zone"),
    "QN-E2": ("Đặc khu Vân Đồn Nam", "special_zone"),
    "QN-F": ("Xã Cái Chiên", "commune"),
}
CAMPAIGN = "CD90"


def unit(path: Sequence[str]) -> Envelope:
    name, kind = NAMES[path[-1]]
    payload = reg.UnitCreated(
        code=path[-1], name=name, kind=kind, parent_code=path[-2] if len(path) > 1 else None, path=list(path)
    )
    return make_event(reg.UNIT_CREATED, payload, source="/registry", key=path[-1])


def moved(path: Sequence[str], previous: Sequence[str]) -> Envelope:
    name, kind = NAMES[path[-1]]
    payload = reg.UnitUpdated(
        code=path[-1], name=name, kind=kind, parent_code=path[-2], path=list(path), previous_path=list(previous)
    )
    return make_event(reg.UNIT_UPDATED, payload, source="/registry", key=path[-1])


def merged(code: str, successor: Sequence[str]) -> Envelope:
    payload = reg.UnitMerged(
        code=code, successor_code=successor[-1], successor_path=list(successor), merged_on=D(2025, 7, 20)
    )
    return make_event(reg.UNIT_MERGED, payload, source="/registry", key=code)


def split(code: str, successors: list[str], teams: dict[str, str]) -> Envelope:
    payload = reg.UnitSplit(
        code=code,
        successors=successors,
        teams=[reg.TeamAssignment(team_code=t, unit_code=u) for t, u in teams.items()],
        split_on=D(2025, 7, 20),
    )
    return make_event(reg.UNIT_SPLIT, payload, source="/registry", key=code)


def closed(path: Sequence[str]) -> Envelope:
    payload = reg.UnitClosed(code=path[-1], path=list(path), reason="Sáp nhập địa giới", closed_on=D(2025, 7, 20))
    return make_event(reg.UNIT_CLOSED, payload, source="/registry", key=path[-1])


def targets(values: list[tuple[str, str, int, list[str]]]) -> Envelope:
    payload = reg.CampaignTargetsSet(
        code=CAMPAIGN,
        targets=[reg.Target(indicator=i, unit_code=u, value=v, merged_from=m) for i, u, v, m in values],
    )
    return make_event(reg.CAMPAIGN_TARGETS_SET, payload, source="/registry", key=CAMPAIGN)


def history(ev: Any) -> list[Envelope]:
    """Households: A 1, school 2, B 4, C 8, E 16, F 32 (visited 1-5 July); one team in each of A, B, C, E."""
    events = [unit(p) for p in (QN, A, B, C, DD, SCHOOL, E, F)]
    events.append(
        ev.campaign(
            CAMPAIGN,
            D(2025, 7, 1),
            D(2025, 7, 31),
            [
                ("households_visited", "QN-A", 10),
                ("households_visited", "QN-B", 20),
                ("households_visited", "QN-C", 30),
            ],
        )
    )
    for i, (path, households) in enumerate(((A, 1), (SCHOOL, 2), (B, 4), (C, 8), (E, 16), (F, 32))):
        figures = ev.figures(path, D(2025, 7, 1 + i % 5), households=households, people=households * 3)
        events.append(ev.visit(f"V-{path[-1]}", figures))
    events += [ev.team(f"T-{p[-1]}", "mobile", p) for p in (A, B, C, E)]
    return events


def reorganisation(ev: Any) -> list[Envelope]:
    a_school = ["QN", "QN-D", "QN-A-THPT"]
    return [
        # The school branch changes commune.
        moved(a_school, SCHOOL),
        # B and C merge into A: their teams move, their targets add into A's, then the merge itself.
        ev.team_moved("T-QN-B", "mobile", A, "mobile", B),
        ev.team_moved("T-QN-C", "mobile", A, "mobile", C),
        targets([("households_visited", "QN-A", 60, ["QN-B", "QN-C"])]),
        merged("QN-B", A),
        merged("QN-C", A),
        # E splits into E1 and E2; its team goes to E1.
        unit(["QN", "QN-E1"]),
        unit(["QN", "QN-E2"]),
        ev.team_moved("T-QN-E", "mobile", ["QN", "QN-E1"], "mobile", E),
        split("QN-E", ["QN-E1", "QN-E2"], {"T-QN-E": "QN-E1"}),
        closed(F),
        # An offline device's record for the merged B arrives late; visits has put it under A.
        ev.visit("V-LATE", ev.figures(A, D(2025, 7, 3), households=64, people=1)),
    ]


async def households(client: httpx.AsyncClient, code: str) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/v1/summary", params={"unit": code}, headers=ADMIN)
    if resp.status_code != 200:  # not known yet
        return -1, {}
    body = resp.json()
    return int(body["households_visited"]), body["scope"]


EXPECTED = {
    "QN": 1 + 2 + 4 + 8 + 16 + 32 + 64,
    "QN-A": 1 + 4 + 8 + 64,  # its own, B's and C's history, the late record; the school left
    "QN-B": 4,  # readable by its old code
    "QN-C": 8,
    "QN-D": 2,  # the school's history came with it
    "QN-A-THPT": 2,
    "QN-E": 16,  # history stays with the split unit
    "QN-E1": 0,
    "QN-F": 32,
}


async def settled(client: httpx.AsyncClient, timeout: float = 60.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    got: dict[str, int] = {}
    while time.monotonic() < deadline:
        got = {code: (await households(client, code))[0] for code in EXPECTED}
        if got == EXPECTED:
            break
        await asyncio.sleep(0.3)
    return got


def gauges(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "bridge_indicator_households_visited":
            for s in family.samples:
                out[(s.labels["unit"], s.labels["level"])] = s.value
    return out


async def check_every_view(client: httpx.AsyncClient) -> None:
    assert await settled(client) == EXPECTED
    _, scope_b = await households(client, "QN-B")
    assert (scope_b["unit_status"], scope_b["merged_into"]) == ("merged", "QN-A")
    _, scope_e = await households(client, "QN-E")
    assert (scope_e["unit_status"], scope_e["successors"]) == ("closed", ["QN-E1", "QN-E2"])
    assert (await households(client, "QN-F"))[1]["unit_status"] == "closed"
    assert (await households(client, "QN-A"))[1]["unit_status"] == "active"

    teams = (await client.get("/v1/summary", params={"unit": "QN-A"}, headers=ADMIN)).json()["teams"]
    assert teams["mobile"] == 3
    e1 = (await client.get("/v1/summary", params={"unit": "QN-E1"}, headers=ADMIN)).json()["teams"]
    assert e1["mobile"] == 1

    series = (
        await client.get(
            "/v1/timeseries",
            params={"indicator": "households_visited", "unit": "QN-A", "from": "2025-07-01", "to": "2025-07-05"},
            headers=ADMIN,
        )
    ).json()
    # A on 1 July, B on 3 July (+ the late record), C on 4 July; the school's 2 July left with it.
    assert [p["value"] for p in series["points"]] == [1, 0, 4 + 64, 8, 0]

    progress = (await client.get(f"/v1/campaigns/{CAMPAIGN}/progress", headers=ADMIN)).json()
    rows = {t["unit_code"]: t for t in progress["targets"]}
    assert set(rows) == {"QN-A"}
    assert (rows["QN-A"]["target"], rows["QN-A"]["actual"], rows["QN-A"]["merged_from"]) == (60, 77, ["QN-B", "QN-C"])

    deadline = time.monotonic() + 30
    want = {("QN", "province"): 127, ("QN-A", "commune"): 77, ("QN-D", "commune"): 2, ("QN-E", "commune"): 16}
    while True:
        got = gauges((await client.get("/metrics")).text)
        if all(got.get(k) == v for k, v in want.items()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert {k: got.get(k) for k in want} == want
    # Merged units now hang below their successor: they are not communes any more.
    assert ("QN-B", "commune") not in got
    assert ("QN-C", "commune") not in got


async def test_figures_follow_moves_merges_splits_and_closes_and_survive_a_rebuild(make_settings, ev, send) -> None:
    settings = make_settings(MetricsSettings, generation_poll_seconds=0.3, gauge_refresh_seconds=0.5)
    async with running_app(build_app(settings)) as client:
        await send(settings, history(ev))
        await send(settings, reorganisation(ev))
        await check_every_view(client)

        started = await client.post("/v1/admin/rebuild", headers=ADMIN)
        assert started.status_code == 202
        deadline = time.monotonic() + 90
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = (await client.get(started.json()["status_url"], headers=ADMIN)).json()
            if status["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.3)
        assert status["state"] == "done", status
        await asyncio.sleep(1.5)  # readers follow the switch within a second
        await check_every_view(client)


async def test_a_manager_of_the_successor_reads_the_merged_units_history(make_settings, ev, send) -> None:
    settings = make_settings(MetricsSettings)
    async with running_app(build_app(settings)) as client:
        await send(settings, history(ev))
        await send(settings, reorganisation(ev))
        assert await settled(client) == EXPECTED
        manager = token("manager", unit="QN-A")
        b = await client.get("/v1/summary", params={"unit": "QN-B"}, headers=manager)
        assert b.status_code == 200, b.text
        assert b.json()["households_visited"] == 4
        d = await client.get("/v1/summary", params={"unit": "QN-D"}, headers=manager)
        assert d.status_code == 403
        assert d.headers["content-type"].startswith("application/problem+json")
