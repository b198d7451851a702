"""The weekly report by team, on the real broker and database.

A ward with four teams and a school below it, one week worked by hand: a visit corrected upwards,
one corrected from one team to another, one voided, one uploaded twice, one without a team (an
older producer), a course and a post of a team, a voided post, a team deactivated with no figures
(left out) and one deactivated after its visit (kept, marked inactive), and a team of another
commune (not in the ward's table).
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from datetime import date
from typing import Any

import openpyxl
import pytest

from metrics.app import MetricsSettings, build_app
from metrics.schemas import ReportTable
from metrics.spreadsheets import JSON_ROWS_PER_CHUNK
from shared.http import GZIP_MIN_BYTES
from shared.testing import running_app, token

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

ADMIN = token("admin")
D = date
QN = ["QN"]
HALONG = ["QN", "QN-HALONG"]
SCHOOL = ["QN", "QN-HALONG", "QN-HALONG-THPT"]
VANDON = ["QN", "QN-VANDON"]
WEEK = "from=2025-07-07&to=2025-07-13"


def scenario(ev: Any) -> list[Any]:
    a = ev.figures(HALONG, D(2025, 7, 8), households=1, people=3, team="T1")
    a_fixed = ev.figures(HALONG, D(2025, 7, 8), households=1, people=5, team="T1")
    b = ev.figures(HALONG, D(2025, 7, 9), households=1, people=2, team="T2")
    c = ev.figures(SCHOOL, D(2025, 7, 10), households=1, people=4, team="T2")
    d = ev.figures(SCHOOL, D(2025, 7, 2), households=2, people=6, team="T3")
    e = ev.figures(SCHOOL, D(2025, 7, 11), households=1, people=1, team="T3")
    f = ev.figures(HALONG, D(2025, 7, 9), households=1, people=4)  # no team: an older producer
    g = ev.figures(HALONG, D(2025, 7, 8), households=1, people=7, team="T5")
    h = ev.figures(VANDON, D(2025, 7, 9), households=1, people=10, team="T9")
    moved = ev.figures(HALONG, D(2025, 7, 12), households=1, people=1, team="T2")
    moved_fixed = ev.figures(HALONG, D(2025, 7, 12), households=1, people=1, team="T1")
    k1 = ev.course("K1", HALONG, "youth_children", D(2025, 7, 8), D(2025, 7, 12), team="T1")
    b_event = ev.visit("VB", b)
    return [
        *(ev.unit(p) for p in (QN, HALONG, SCHOOL, VANDON)),
        ev.team("T1", "permanent", HALONG),
        ev.team("T2", "mobile", HALONG),
        ev.team("T3", "mobile", SCHOOL),
        ev.team("T4", "literacy", HALONG),
        ev.team("T5", "campaign", HALONG),
        ev.team("T9", "mobile", VANDON),
        ev.team_deactivated("T4", "literacy", HALONG),
        ev.volunteer("V1", HALONG),
        ev.volunteer("V2", HALONG),
        ev.member("T1", "V1", "permanent", HALONG),
        ev.member("T1", "V2", "permanent", HALONG),
        ev.visit("VA", a),
        ev.visit_corrected("VA", a, a_fixed),
        b_event,
        b_event,  # uploaded twice
        ev.visit("VC", c),
        ev.visit_voided("VC", c),
        ev.visit("VD", d),
        ev.visit("VE", e),
        ev.visit("VF", f),
        ev.visit("VG", g),
        ev.team_deactivated("T5", "campaign", HALONG),
        ev.visit("VH", h),
        ev.visit("VM", moved),
        ev.visit_corrected("VM", moved, moved_fixed),
        ev.scheduled(k1),
        ev.enrolled(k1, "p1", 0),
        ev.enrolled(k1, "p2", 1),
        ev.participant_completed(k1, "p1", 0),
        ev.post("P1", SCHOOL, "fanpage", D(2025, 7, 9), team="T3"),
        ev.post("P2", HALONG, "visual", D(2025, 7, 10), team="T2"),
        ev.post_voided("P2", HALONG, "visual", D(2025, 7, 10), team="T2"),
    ]


def picked(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: row["figures"][k] for k in keys}


KEYS = (
    "people_supported",
    "households_visited",
    "courses.youth_children",
    "course_participants.total",
    "course_completions",
    "outreach_posts.total",
    "teams.total",
    "team_members.permanent",
    "volunteers",
)


async def test_team_rows_add_each_teams_records_and_the_rest_is_unattributed(make_settings, ev, send) -> None:
    settings = make_settings(MetricsSettings)
    async with running_app(build_app(settings)) as client:
        await send(settings, scenario(ev))
        query = f"/v1/reports/table?unit=QN-HALONG&{WEEK}&rows=teams"
        deadline = time.monotonic() + 60
        table: dict[str, Any] = {}
        while time.monotonic() < deadline:
            resp = await client.get(query, headers=ADMIN)
            if resp.status_code == 200:
                table = resp.json()
                rows = {r["team"]: r for r in table["rows"] if r["row"] == "team"}
                if rows.get("T1", {}).get("figures", {}).get("course_completions") == 1 and "T5" in rows:
                    if (
                        rows["T2"]["figures"]["outreach_posts.total"] == 0
                        and rows["T1"]["figures"]["people_supported"] == 6
                    ):
                        break
            await asyncio.sleep(0.25)
        assert table["rows_by"] == "teams"
        assert [(r["row"], r["team"], r["unit"], r["team_active"]) for r in table["rows"]] == [
            ("team", "T1", "QN-HALONG", True),
            ("team", "T2", "QN-HALONG", True),
            ("team", "T5", "QN-HALONG", False),  # inactive now, but it has figures this week
            ("team", "T3", "QN-HALONG-THPT", True),
            ("unattributed", None, "QN-HALONG", None),
        ]
        rows = {r["team"]: r for r in table["rows"]}
        assert rows["T1"]["name"] == "Đội hình T1"
        assert rows["T1"]["team_kind"] == "permanent"
        assert picked(rows["T1"], *KEYS) == dict(zip(KEYS, (6, 2, 1, 2, 1, 0, 1, 2, 0), strict=True))
        assert picked(rows["T2"], *KEYS) == dict(zip(KEYS, (2, 1, 0, 0, 0, 0, 1, 0, 0), strict=True))
        assert picked(rows["T5"], *KEYS) == dict(zip(KEYS, (7, 1, 0, 0, 0, 0, 0, 0, 0), strict=True))
        assert picked(rows["T3"], *KEYS) == dict(zip(KEYS, (1, 1, 0, 0, 0, 1, 1, 0, 0), strict=True))
        assert rows["T3"]["previous"]["people_supported"] == 6
        assert rows["T3"]["change"]["people_supported"] == -5
        assert rows["T3"]["previous"]["teams.total"] is None  # current state has no previous period
        # The visit without a team and the ward's volunteers belong to no team.
        assert picked(rows[None], *KEYS) == dict(zip(KEYS, (4, 1, 0, 0, 0, 0, 0, 0, 2), strict=True))

        summary = (await client.get(f"/v1/summary?unit=QN-HALONG&{WEEK}", headers=ADMIN)).json()
        assert table["totals"]["figures"]["people_supported"] == summary["people_supported"] == 20
        for key in table["totals"]["figures"]:
            assert sum(r["figures"][key] for r in table["rows"]) == table["totals"]["figures"][key], key

        # The province's table of teams has the other commune's team too; the ward's does not.
        province = (await client.get(f"/v1/reports/table?unit=QN&{WEEK}&rows=teams", headers=ADMIN)).json()
        assert [r["team"] for r in province["rows"] if r["row"] == "team"] == ["T1", "T2", "T5", "T3", "T9"]
        assert {r["team"]: r["figures"]["people_supported"] for r in province["rows"]}["T9"] == 10

        # CSV and XLSX carry the team code column and the same figures.
        resp = await client.get(f"{query}&format=csv", headers=ADMIN)
        lines = list(csv.reader(io.StringIO(resp.content.decode("utf-8-sig"), newline="")))
        assert lines[0][:3] == ["Mã đơn vị / Unit code", "Đội / Team", "Mã đội / Team code"]
        people = lines[0].index("Người dân được hỗ trợ / People supported")
        assert [(line[2], line[people]) for line in lines[1:]] == [
            ("T1", "6"),
            ("T2", "2"),
            ("T5", "7"),
            ("T3", "1"),
            ("", "4"),
            ("", "20"),
        ]
        resp = await client.get(f"{query}&format=xlsx", headers=ADMIN)
        sheet = openpyxl.load_workbook(io.BytesIO(resp.content)).active
        assert sheet is not None
        values = [list(r) for r in sheet.iter_rows(min_row=4, values_only=True)]
        assert values[0][:3] == ["Mã đơn vị / Unit code", "Đội / Team", "Mã đội / Team code"]
        assert [(r[2], r[people]) for r in values[1:]] == [
            ("T1", 6),
            ("T2", 2),
            ("T5", 7),
            ("T3", 1),
            (None, 4),
            (None, 20),
        ]

        # A manager of another commune may not read the ward's teams.
        other = await client.get(query, headers=token("manager", "QN-VANDON"))
        assert other.status_code == 403
        assert other.headers["content-type"].startswith("application/problem+json")


async def test_a_table_of_many_teams_is_streamed_as_one_valid_document(make_settings, ev, send) -> None:
    # More rows than fit in a few chunks, so that rows are joined across chunk boundaries.
    n = 3 * JSON_ROWS_PER_CHUNK + 5
    codes = [f"T{i:03d}" for i in range(n)]
    visits = [ev.figures(HALONG, D(2025, 7, 8), households=1, people=i % 5 + 1, team=c) for i, c in enumerate(codes)]
    events = [
        *(ev.unit(p) for p in (QN, HALONG)),
        *(ev.team(c, "mobile", HALONG) for c in codes),
        *(ev.visit(f"V{i}", v) for i, v in enumerate(visits[::2])),
        ev.visit("VX", ev.figures(HALONG, D(2025, 7, 9), households=1, people=9)),  # no team
    ]
    settings = make_settings(MetricsSettings)
    async with running_app(build_app(settings)) as client:
        await send(settings, events)
        expected_people = sum(v.people.total for v in visits[::2]) + 9
        deadline = time.monotonic() + 60
        resp = None
        while time.monotonic() < deadline:
            resp = await client.get(f"/v1/reports/table?unit=QN-HALONG&{WEEK}&rows=teams", headers=ADMIN)
            if resp.status_code == 200 and resp.json()["totals"]["figures"]["people_supported"] == expected_people:
                if len(resp.json()["rows"]) == n + 1:
                    break
            await asyncio.sleep(0.25)
        assert resp is not None
        assert resp.status_code == 200
        assert "content-length" not in resp.headers  # sent as the rows are made
        assert resp.headers["content-encoding"] == "gzip"  # streamed, so compressed for a client that accepts it
        small = await client.get(f"/v1/summary?unit=QN-HALONG&{WEEK}", headers=ADMIN)
        assert small.status_code == 200
        assert "content-encoding" not in small.headers
        xlsx = await client.get(f"/v1/reports/table?unit=QN-HALONG&{WEEK}&rows=teams&format=xlsx", headers=ADMIN)
        assert xlsx.status_code == 200
        assert len(xlsx.content) >= GZIP_MIN_BYTES
        assert "content-encoding" not in xlsx.headers  # a zip already
        table = resp.json()
        # One document of the declared schema, nothing more and nothing less ("from" is only the
        # serialised name of ``from_``).
        parsed = ReportTable.model_validate({**table, "from_": table["from"]})
        assert parsed.model_dump(mode="json", by_alias=True) == table
        assert [r["team"] for r in table["rows"]] == [*codes, None]
        people = {r["team"]: r["figures"]["people_supported"] for r in table["rows"]}
        assert people == {
            **{c: (i % 5 + 1 if i % 2 == 0 else 0) for i, c in enumerate(codes)},
            None: 9,
        }
        assert sum(people.values()) == table["totals"]["figures"]["people_supported"] == expected_people
