"""The weekly report in one call, and targets at risk, on the real broker and database.

Two weeks of records, worked by hand: report week 7-13 July 2025, previous week 30 June-6 July.
A visit is corrected across the week boundary, one is voided, one is uploaded twice, one arrives
late into the previous week, one course enrolment is sent twice and a post is voided. The table's
rows must equal ``/v1/summary`` of each child unit, the totals the province's summary, and the CSV
and XLSX must hold exactly the JSON's figures.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
from collections.abc import Sequence
from datetime import date
from typing import Any

import httpx
import openpyxl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metrics.app import MetricsSettings, build_app
from metrics.projection import CATALOGUE
from shared.contracts import registry as reg
from shared.envelope import Envelope, make_event
from shared.testing import running_app, token

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

ADMIN = token("admin")
D = date
QN = ["QN"]
HALONG = ["QN", "QN-HALONG"]
SCHOOL = ["QN", "QN-HALONG", "QN-HALONG-THPT"]
VANDON = ["QN", "QN-VANDON"]
CAICHIEN = ["QN", "QN-CAICHIEN"]
WEEK = "from=2025-07-07&to=2025-07-13"
PREVIOUS_WEEK = "from=2025-06-30&to=2025-07-06"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def caichien() -> Envelope:
    payload = reg.UnitCreated(code="QN-CAICHIEN", name="Xã Cái Chiên", kind="commune", parent_code="QN", path=CAICHIEN)
    return make_event(reg.UNIT_CREATED, payload, source="/registry", key="QN-CAICHIEN")


def first_batch(ev: Any) -> list[Envelope]:
    # Island visits with one elderly person each, unless they say otherwise.
    va = ev.figures(HALONG, D(2025, 7, 8), households=1, people=3, vneid=2, l3=1, l4=0, area="remote", activated=1)
    vb = ev.figures(HALONG, D(2025, 7, 2), households=1, people=2, vneid=1, l3=0, l4=1)
    vc = ev.figures(SCHOOL, D(2025, 7, 3), households=1, people=4, vneid=0, l3=2, l4=1, area="rural", women=2)
    vc_fixed = ev.figures(SCHOOL, D(2025, 7, 9), 1, 6, 1, 3, 1, area="border", veterans=2)
    vd = ev.figures(HALONG, D(2025, 7, 10), households=1, people=5, area="urban", activated=4)
    vf = ev.figures(VANDON, D(2025, 7, 11), households=2, people=7, vneid=3, l3=0, l4=2, women=3, activated=2)
    vg = ev.figures(VANDON, D(2025, 7, 4), households=1, people=2, area="urban")
    vg_fixed = ev.figures(VANDON, D(2025, 7, 4), households=1, people=3, area="urban")
    k1 = ev.course("K1", HALONG, "youth_children", D(2025, 7, 8), D(2025, 7, 12))
    k2 = ev.course("K2", VANDON, "elderly_middle_aged", D(2025, 7, 6), D(2025, 7, 6), mode="online")
    enrol_p2 = ev.enrolled(k1, "p2", 1)
    visit_b = ev.visit("VB", vb)
    return [
        *(ev.unit(p) for p in (QN, HALONG, SCHOOL, VANDON)),
        caichien(),
        ev.campaign(
            "CD30",
            D(2025, 7, 1),
            D(2025, 7, 30),
            [
                ("households_visited", "QN-VANDON", 1),
                ("people_supported", "QN-HALONG", 20),
                ("households_visited", "QN-HALONG", 12),
                ("vneid_installs", "QN", 30),
                ("teams", "QN", 5),
            ],
        ),
        ev.team("T1", "permanent", HALONG),
        ev.team("T2", "mobile", SCHOOL),
        ev.team("T3", "mobile", VANDON),
        ev.team("T4", "campaign", QN),
        ev.volunteer("V1", HALONG, roles=("union_member", "student"), skills=("it",)),
        ev.volunteer("V2", HALONG),
        ev.member("T1", "V1", "permanent", HALONG),
        ev.member("T1", "V2", "permanent", HALONG),
        ev.volunteer_left("V2", HALONG),
        ev.member("T1", "V2", "permanent", HALONG, ended=True),
        ev.visit("VA", va),
        visit_b,
        visit_b,  # uploaded twice from an offline phone
        ev.visit("VC", vc),
        ev.visit_corrected("VC", vc, vc_fixed),  # moved from the previous week into the report week
        ev.visit("VD", vd),
        ev.visit_voided("VD", vd),
        ev.visit("VF", vf),
        ev.visit("VG", vg),
        ev.visit_corrected("VG", vg, vg_fixed),
        ev.visit("VX", ev.figures(VANDON, D(2025, 6, 20), households=5, people=5)),  # before both weeks
        ev.visit("VY", ev.figures(VANDON, D(2025, 7, 14), households=4, people=4)),  # after the report week
        ev.post("P1", HALONG, "fanpage", D(2025, 7, 7)),
        ev.post("P2", HALONG, "newspaper", D(2025, 7, 5)),
        ev.post("P3", VANDON, "visual", D(2025, 7, 12)),
        ev.post("P4", VANDON, "visual", D(2025, 7, 12)),
        ev.post_voided("P4", VANDON, "visual", D(2025, 7, 12)),
        ev.post("P5", QN, "newspaper", D(2025, 7, 9)),  # the province's own record
        ev.scheduled(k1),
        ev.enrolled(k1, "p1", 0),
        enrol_p2,
        enrol_p2,
        ev.participant_completed(k1, "p1", 0),
        ev.scheduled(k2),
        ev.session(k2, "s1", D(2025, 7, 6), 20, 0, 20),
        ev.completed(k2, (20, 22), (0, 18)),
    ]


def late_batch(ev: Any, first: Sequence[Envelope]) -> list[Envelope]:
    """Captured offline in the previous week, arriving after everything else; and a redelivery."""
    late = ev.figures(HALONG, D(2025, 7, 1), households=1, people=1, vneid=1, l3=1, l4=1)
    redelivered = next(e for e in first if e.key == "VA")
    return [ev.visit("VE", late), redelivered]


def zeros() -> dict[str, int]:
    """Every flattened summary key, in the summary's order, at zero."""
    kinds = ("permanent", "mobile", "literacy", "campaign")
    areas = ("remote", "border", "island", "rural", "urban")
    splits = {
        "teams": kinds,
        "online_applications": ("l3", "l4"),
        "courses": ("youth_children", "elderly_middle_aged", "general"),
        "course_participants": ("youth_children", "elderly_middle_aged", "general"),
        "outreach_posts": ("fanpage", "newspaper", "visual"),
        "people_supported_by_area": areas,
        "households_by_area": areas,
        "people_supported_by_group": ("elderly", "women", "veterans"),
        "courses_by_mode": ("in_person", "online"),
        "course_participants_by_mode": ("in_person", "online"),
        "volunteers_by_role": ("union_member", "youth", "student", "lecturer"),
        "volunteers_by_skill": ("it", "vneid", "teaching", "media"),
        "team_members": kinds,
    }
    names = ["teams", "volunteers", "households_visited", "people_supported", "vneid_installs"]
    names += ["online_applications", "courses", "course_participants", "course_completions", "outreach_posts"]
    names += ["people_supported_by_area", "households_by_area", "people_supported_by_group", "vneid_activations"]
    names += ["courses_by_mode", "course_participants_by_mode", "volunteers_by_role", "volunteers_by_skill"]
    names += ["team_members"]
    keys: list[str] = []
    for name in names:
        keys += [f"{name}.{s}" for s in (*splits[name], "total")] if name in splits else [name]
    return dict.fromkeys(keys, 0)


STATE = ("teams.", "volunteers", "team_members.")
STATE_KEYS = {k for k in zeros() if k.startswith(STATE)}


def figures(**values: int) -> dict[str, int]:
    out = zeros()
    out.update({k.replace("__", "."): v for k, v in values.items()})
    return out


# Worked by hand from the batches above.
HALONG_WEEK = figures(
    teams__permanent=1,
    teams__mobile=1,
    teams__total=2,
    volunteers=1,
    households_visited=2,  # VA, VC as corrected (VD voided)
    people_supported=9,
    vneid_installs=3,
    online_applications__l3=4,
    online_applications__l4=1,
    online_applications__total=5,
    courses__youth_children=1,
    courses__total=1,
    course_participants__youth_children=2,  # p2's enrolment sent twice counts once
    course_participants__total=2,
    course_completions=1,
    outreach_posts__fanpage=1,
    outreach_posts__total=1,
    people_supported_by_area__remote=3,  # VA
    people_supported_by_area__border=6,  # VC as corrected (it was rural, and in the previous week)
    people_supported_by_area__total=9,
    households_by_area__remote=1,
    households_by_area__border=1,
    households_by_area__total=2,
    people_supported_by_group__elderly=2,
    people_supported_by_group__veterans=2,
    people_supported_by_group__total=4,
    vneid_activations=1,  # VD's 4 were voided
    courses_by_mode__in_person=1,
    courses_by_mode__total=1,
    course_participants_by_mode__in_person=2,
    course_participants_by_mode__total=2,
    volunteers_by_role__union_member=1,
    volunteers_by_role__student=1,
    volunteers_by_role__total=2,  # one volunteer with two roles
    volunteers_by_skill__it=1,
    volunteers_by_skill__total=1,
    team_members__permanent=1,  # V2 left T1 with the union
    team_members__total=1,
)
HALONG_PREVIOUS = figures(
    households_visited=2,  # VB (uploaded twice) and the late VE; VC left for the report week
    people_supported=3,
    vneid_installs=2,
    online_applications__l3=1,
    online_applications__l4=2,
    online_applications__total=3,
    outreach_posts__newspaper=1,
    outreach_posts__total=1,
    people_supported_by_area__island=3,
    people_supported_by_area__total=3,
    households_by_area__island=2,
    households_by_area__total=2,
    people_supported_by_group__elderly=2,
    people_supported_by_group__total=2,
)
TOTALS_WEEK = figures(
    teams__permanent=1,
    teams__mobile=2,
    teams__campaign=1,
    teams__total=4,
    volunteers=1,
    households_visited=4,
    people_supported=16,
    vneid_installs=6,
    online_applications__l3=4,
    online_applications__l4=3,
    online_applications__total=7,
    courses__youth_children=1,
    courses__total=1,
    course_participants__youth_children=2,
    course_participants__total=2,
    course_completions=1,
    outreach_posts__fanpage=1,
    outreach_posts__newspaper=1,
    outreach_posts__visual=1,
    outreach_posts__total=3,
    people_supported_by_area__remote=3,
    people_supported_by_area__border=6,
    people_supported_by_area__island=7,  # VF
    people_supported_by_area__total=16,
    households_by_area__remote=1,
    households_by_area__border=1,
    households_by_area__island=2,
    households_by_area__total=4,
    people_supported_by_group__elderly=3,
    people_supported_by_group__women=3,
    people_supported_by_group__veterans=2,
    people_supported_by_group__total=8,
    vneid_activations=3,
    courses_by_mode__in_person=1,
    courses_by_mode__total=1,
    course_participants_by_mode__in_person=2,
    course_participants_by_mode__total=2,
    volunteers_by_role__union_member=1,
    volunteers_by_role__student=1,
    volunteers_by_role__total=2,
    volunteers_by_skill__it=1,
    volunteers_by_skill__total=1,
    team_members__permanent=1,
    team_members__total=1,
)
TOTALS_PREVIOUS = figures(
    households_visited=3,
    people_supported=6,
    vneid_installs=2,
    online_applications__l3=1,
    online_applications__l4=2,
    online_applications__total=3,
    courses__elderly_middle_aged=1,
    courses__total=1,
    course_participants__elderly_middle_aged=22,
    course_participants__total=22,
    course_completions=18,
    outreach_posts__newspaper=1,
    outreach_posts__total=1,
    people_supported_by_area__island=3,  # VB and the late VE
    people_supported_by_area__urban=3,  # VG as corrected
    people_supported_by_area__total=6,
    households_by_area__island=2,
    households_by_area__urban=1,
    households_by_area__total=3,
    people_supported_by_group__elderly=3,
    people_supported_by_group__total=3,
    courses_by_mode__online=1,
    courses_by_mode__total=1,
    course_participants_by_mode__online=22,
    course_participants_by_mode__total=22,
)
QN_OWN_WEEK = figures(teams__campaign=1, teams__total=1, outreach_posts__newspaper=1, outreach_posts__total=1)


def previous_of(values: dict[str, int]) -> dict[str, int | None]:
    return {k: None if k in STATE_KEYS else v for k, v in values.items()}


def flat(summary: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in summary.items():
        if key in ("as_of", "scope"):
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{split}": n for split, n in value.items()})
        else:
            out[key] = value
    return out


async def report(client: httpx.AsyncClient, query: str, headers: dict[str, str] = ADMIN) -> dict[str, Any]:
    resp = await client.get(f"/v1/reports/table?{query}", headers=headers)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def settle(client: httpx.AsyncClient, totals: dict[str, int], previous: dict[str, int | None]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = await client.get(f"/v1/reports/table?unit=QN&{WEEK}", headers=ADMIN)
        if resp.status_code == 200:  # else the province is not projected yet
            body = resp.json()
            if body["totals"]["figures"] == totals and body["totals"]["previous"] == previous:
                break
        await asyncio.sleep(0.25)
    return body


async def load_scenario(client: httpx.AsyncClient, settings: MetricsSettings, ev: Any, send: Any) -> dict[str, Any]:
    first = first_batch(ev)
    await send(settings, first)
    before_late = {**TOTALS_PREVIOUS, "households_visited": 2, "people_supported": 5, "vneid_installs": 1}
    before_late |= {"online_applications.l4": 1, "online_applications.total": 1, "online_applications.l3": 0}
    before_late |= {"people_supported_by_area.island": 2, "people_supported_by_area.total": 5}
    before_late |= {"households_by_area.island": 1, "households_by_area.total": 2}
    before_late |= {"people_supported_by_group.elderly": 2, "people_supported_by_group.total": 2}
    body = await settle(client, TOTALS_WEEK, previous_of(before_late))
    assert body["totals"]["previous"] == previous_of(before_late)
    await send(settings, late_batch(ev, first))
    return await settle(client, TOTALS_WEEK, previous_of(TOTALS_PREVIOUS))


async def test_report_rows_equal_each_child_units_summary_with_the_previous_week_and_the_change(
    make_settings, ev, send
) -> None:
    settings = make_settings(MetricsSettings)
    async with running_app(build_app(settings)) as client:
        table = await load_scenario(client, settings, ev, send)
        assert (table["unit"], table["unit_name"], table["from"], table["to"]) == (
            "QN",
            "Tỉnh Quảng Ninh",
            "2025-07-07",
            "2025-07-13",
        )
        assert (table["previous_from"], table["previous_to"]) == ("2025-06-30", "2025-07-06")
        assert [c["key"] for c in table["columns"]] == list(zeros())
        households = next(c for c in table["columns"] if c["key"] == "households_visited")
        assert (households["label_vi"], households["label_en"]) == ("Hộ gia đình được thăm", "Households visited")
        labels = {c["key"]: (c["label_vi"], c["label_en"], c["dated"]) for c in table["columns"]}
        assert labels["people_supported_by_area.island"] == (
            "Người dân được hỗ trợ ở hải đảo",
            "People supported, island areas",
            True,
        )
        assert labels["volunteers_by_skill.it"] == (
            "Tình nguyện viên có kỹ năng công nghệ thông tin",
            "Volunteers with IT skills",
            False,
        )
        assert labels["team_members.permanent"][1:] == ("Members of permanent teams", False)
        assert all(vi and en and vi != en for vi, en, _ in labels.values())

        rows = table["rows"]
        assert [(r["unit"], r["name"], r["row"]) for r in rows] == [
            ("QN", "Tỉnh Quảng Ninh (trực tiếp / direct)", "direct"),
            ("QN-CAICHIEN", "Xã Cái Chiên", "unit"),
            ("QN-HALONG", "Phường Hạ Long", "unit"),
            ("QN-VANDON", "Đặc khu Vân Đồn", "unit"),
        ]
        by_unit = {r["unit"]: r for r in rows if r["row"] == "unit"}
        halong = by_unit["QN-HALONG"]
        assert halong["figures"] == HALONG_WEEK
        assert halong["previous"] == previous_of(HALONG_PREVIOUS)
        assert halong["change"]["people_supported"] == 6
        assert halong["change"]["online_applications.l4"] == -1
        assert halong["change"]["households_visited"] == 0
        assert halong["change"]["teams.total"] is None
        assert by_unit["QN-CAICHIEN"]["figures"] == zeros()
        assert rows[0]["figures"] == QN_OWN_WEEK
        assert rows[0]["previous"] == previous_of(zeros())

        for child in ("QN-CAICHIEN", "QN-HALONG", "QN-VANDON"):
            week = (await client.get(f"/v1/summary?unit={child}&{WEEK}", headers=ADMIN)).json()
            before = (await client.get(f"/v1/summary?unit={child}&{PREVIOUS_WEEK}", headers=ADMIN)).json()
            assert by_unit[child]["figures"] == flat(week), child
            assert by_unit[child]["previous"] == previous_of(flat(before)), child
        province = (await client.get(f"/v1/summary?unit=QN&{WEEK}", headers=ADMIN)).json()
        province_before = (await client.get(f"/v1/summary?unit=QN&{PREVIOUS_WEEK}", headers=ADMIN)).json()
        totals = table["totals"]
        assert (totals["row"], totals["name"]) == ("total", "Tổng cộng / Total")
        assert totals["figures"] == flat(province) == TOTALS_WEEK
        assert totals["previous"] == previous_of(flat(province_before))
        assert totals["change"] == {
            k: None if k in STATE_KEYS else TOTALS_WEEK[k] - TOTALS_PREVIOUS[k] for k in TOTALS_WEEK
        }
        assert {
            k: sum(r["figures"][k] for r in rows) for k in TOTALS_WEEK
        } == TOTALS_WEEK  # the rows add up to the totals

        # One level down: the ward's own records, then its school with the corrected visit.
        ward = await report(client, f"unit=QN-HALONG&{WEEK}")
        assert [(r["unit"], r["row"]) for r in ward["rows"]] == [("QN-HALONG", "direct"), ("QN-HALONG-THPT", "unit")]
        school = ward["rows"][1]
        assert (school["figures"]["households_visited"], school["previous"]["households_visited"]) == (1, 0)
        assert ward["totals"]["figures"] == HALONG_WEEK

        # Without dates: the last full Monday-Sunday week before as_of.
        for as_of, period in (
            ("2025-07-16", ("2025-07-07", "2025-07-13")),
            ("2025-07-14", ("2025-07-07", "2025-07-13")),
            ("2025-07-13", ("2025-06-30", "2025-07-06")),
        ):
            default = await report(client, f"unit=QN&as_of={as_of}")
            assert (default["from"], default["to"]) == period, as_of
        assert (await report(client, "unit=QN&as_of=2025-07-16"))["totals"]["figures"] == TOTALS_WEEK

        # A campaign's window, and the 30 days before it as the previous period.
        campaign = await report(client, "campaign=CD30")
        assert (campaign["unit"], campaign["from"], campaign["to"]) == ("QN", "2025-07-01", "2025-07-30")
        assert (campaign["previous_from"], campaign["previous_to"]) == ("2025-06-01", "2025-06-30")
        in_window = (await client.get("/v1/summary?campaign=CD30", headers=ADMIN)).json()
        assert campaign["totals"]["figures"] == flat(in_window)
        assert campaign["totals"]["previous"]["households_visited"] == 5  # the visit of 20 June


def csv_rows(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"), newline="")))


def expected_header(table: dict[str, Any]) -> list[str]:
    out = ["Mã đơn vị / Unit code", "Đơn vị / Unit"]
    for c in table["columns"]:
        label = f"{c['label_vi']} / {c['label_en']}"
        out += [label, f"{label} (kỳ trước / previous)", f"{label} (thay đổi / change)"]
    return out


def expected_cells(table: dict[str, Any], row: dict[str, Any]) -> list[Any]:
    out: list[Any] = [row["unit"], row["name"]]
    for c in table["columns"]:
        out += [row["figures"][c["key"]], row["previous"][c["key"]], row["change"][c["key"]]]
    return out


async def test_csv_and_xlsx_hold_exactly_the_json_table(make_settings, ev, send) -> None:
    settings = make_settings(MetricsSettings)
    async with running_app(build_app(settings)) as client:
        await load_scenario(client, settings, ev, send)
        table = await report(client, f"unit=QN&{WEEK}")
        every_row = [*table["rows"], table["totals"]]

        resp = await client.get(f"/v1/reports/table?unit=QN&{WEEK}&format=csv", headers=ADMIN)
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/csv; charset=utf-8"
        assert resp.headers["content-disposition"] == 'attachment; filename="bao-cao_QN_2025-07-07_2025-07-13.csv"'
        assert resp.content.startswith("\ufeff".encode())
        parsed = csv_rows(resp.content)
        assert parsed[0] == expected_header(table)
        assert parsed[1:] == [["" if v is None else str(v) for v in expected_cells(table, r)] for r in every_row]
        assert parsed[3][1] == "Phường Hạ Long"
        # Accept picks the format when ?format= is absent.
        by_accept = await client.get(f"/v1/reports/table?unit=QN&{WEEK}", headers={**ADMIN, "Accept": "text/csv"})
        assert by_accept.content == resp.content

        resp = await client.get(f"/v1/reports/table?unit=QN&{WEEK}", headers={**ADMIN, "Accept": XLSX})
        assert resp.status_code == 200
        assert resp.headers["content-type"] == XLSX
        assert resp.headers["content-disposition"].endswith('filename="bao-cao_QN_2025-07-07_2025-07-13.xlsx"')
        book = openpyxl.load_workbook(io.BytesIO(resp.content))
        sheet = book.active
        assert sheet is not None
        title = sheet["A1"].value
        assert "Tỉnh Quảng Ninh (QN)" in title
        assert "07/07/2025 - 13/07/2025" in title
        # Excel keeps dates as day numbers; openpyxl reads them back as midnight datetimes.
        assert [sheet[c].value.date() for c in ("B2", "D2", "F2", "G2")] == [
            D(2025, 7, 7),
            D(2025, 7, 13),
            D(2025, 6, 30),
            D(2025, 7, 6),
        ]
        assert sheet["B2"].number_format == "DD/MM/YYYY"
        assert sheet.freeze_panes == "C5"
        values = [list(r) for r in sheet.iter_rows(min_row=4, values_only=True)]
        assert values[0] == expected_header(table)
        assert values[1:] == [expected_cells(table, r) for r in every_row]

        assert (await client.get(f"/v1/reports/table?unit=QN&{WEEK}&format=json", headers=ADMIN)).json()[
            "totals"
        ] == table["totals"]


async def test_reports_are_scoped_to_the_callers_subtree_and_reject_bad_periods(make_settings, ev, send) -> None:
    settings = make_settings(MetricsSettings)
    async with running_app(build_app(settings)) as client:
        await load_scenario(client, settings, ev, send)
        vandon = token("manager", "QN-VANDON")
        other = await client.get(f"/v1/reports/table?unit=QN&{WEEK}", headers=vandon)
        assert other.status_code == 403
        assert other.headers["content-type"].startswith("application/problem+json")
        assert other.json()["type"].endswith("out-of-scope")
        own = await report(client, WEEK, headers=vandon)
        assert own["unit"] == "QN-VANDON"
        assert [(r["unit"], r["row"]) for r in own["rows"]] == [("QN-VANDON", "direct")]
        assert own["totals"]["figures"]["households_visited"] == 2
        assert own["totals"]["previous"]["households_visited"] == 1  # VG as corrected
        assert (await client.get(f"/v1/reports/table?unit=NOWHERE&{WEEK}", headers=ADMIN)).status_code == 404
        assert (await client.get("/v1/reports/table?campaign=NOPE", headers=ADMIN)).status_code == 404
        for bad in (
            "from=2025-07-13&to=2025-07-07",
            "from=2025-07-07",
            "from=2020-01-01&to=2025-01-01",
            f"{WEEK}&format=pdf",
            "as_of=yesterday",
        ):
            resp = await client.get(f"/v1/reports/table?unit=QN&{bad}", headers=ADMIN)
            assert resp.status_code == 422, bad
            assert resp.headers["content-type"].startswith("application/problem+json")
        assert (await client.get(f"/v1/reports/table?{WEEK}")).status_code == 401

        spec = (await client.get("/openapi.json")).json()
        table = spec["paths"]["/v1/reports/table"]["get"]
        assert table["summary"]
        content = table["responses"]["200"]["content"]
        assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ReportTable"}
        assert set(content) == {"application/json", "text/csv", XLSX}
        risk = spec["paths"]["/v1/campaigns/{code}/risk"]["get"]
        assert risk["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/CampaignRisk"
        }
        for operation in (table, risk):
            for status in ("403", "404", "422"):
                problem = operation["responses"][status]["content"]["application/problem+json"]
                assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}
        assert {p["name"] for p in table["parameters"]} >= {"unit", "campaign", "from", "to", "format", "as_of"}
        # Every indicator of the summary says what it counts and by which date (or that it is current state).
        summary = spec["components"]["schemas"]["Summary"]["properties"]
        for name in CATALOGUE:
            assert re.search(
                r"(Current state|Dated by (visited_on|starts_on|ends_on|published_on))\.$", summary[name]["description"]
            ), name
        assert "several groups" in summary["people_supported_by_group"]["description"]


def risk_rows(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(t["indicator"], t["unit_code"]): t for t in body["targets"]}


async def test_targets_at_risk_are_hand_computed_for_done_on_track_at_risk_and_behind(make_settings, ev, send) -> None:
    settings = make_settings(MetricsSettings, gauge_refresh_seconds=0.3)
    async with running_app(build_app(settings)) as client:
        await load_scenario(client, settings, ev, send)
        # 1-30 July, as of the 10th: 10 days elapsed, 20 left; the last 7 days are 4-10 July.
        resp = await client.get("/v1/campaigns/CD30/risk?as_of=2025-07-10", headers=ADMIN)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["days_elapsed"], body["days_left"], body["days_total"]) == (10, 20, 30)
        rows = risk_rows(body)
        fields = ("actual", "pace_needed", "pace_last_7_days", "projected", "projected_ratio", "status")

        def row(indicator: str, unit: str) -> tuple[Any, ...]:
            return tuple(rows[(indicator, unit)][f] for f in fields)

        # VG (4 July) only: the visits of 11 and 14 July come after as_of.
        assert row("households_visited", "QN-VANDON") == (1, 0.0, 0.14, 3.9, 3.857, "done")
        # 1 + 2 + 3 + 6 people; 3 + 6 in the last 7 days: 12 + 9/7 * 20 = 37.7.
        assert row("people_supported", "QN-HALONG") == (12, 0.4, 1.29, 37.7, 1.886, "on_track")
        # 4 households, 2 in the last 7 days: 4 + 2/7 * 20 = 9.71, at least 80% of 12.
        assert row("households_visited", "QN-HALONG") == (4, 0.4, 0.29, 9.7, 0.81, "at_risk")
        # 5 installs, 3 in the last 7 days: 5 + 3/7 * 20 = 13.57 of 30.
        assert row("vneid_installs", "QN") == (5, 1.25, 0.43, 13.6, 0.452, "behind")
        # Current state projects as it stands: 4 teams are exactly 80% of 5.
        assert row("teams", "QN") == (4, 0.05, None, 4.0, 0.8, "at_risk")
        assert rows[("teams", "QN")]["unit_name"] == "Tỉnh Quảng Ninh"
        assert [
            (u["unit_code"], u["status"], u["projected_ratio"], u["indicators"]) for u in body["units_at_risk"]
        ] == [
            ("QN", "behind", 0.452, ["vneid_installs", "teams"]),
            ("QN-HALONG", "at_risk", 0.81, ["households_visited"]),
        ]

        before = risk_rows((await client.get("/v1/campaigns/CD30/risk?as_of=2025-06-20", headers=ADMIN)).json())
        assert {k: r["status"] for k, r in before.items()} == dict.fromkeys(rows, "not_started")
        after = (await client.get("/v1/campaigns/CD30/risk?as_of=2025-08-15", headers=ADMIN)).json()
        assert (after["days_elapsed"], after["days_left"]) == (30, 0)
        ended = risk_rows(after)
        # The whole window: 12 people, no day left to close the gap.
        assert row_of(ended, "people_supported", "QN-HALONG") == (12, None, 0.0, 12.0, 0.6, "behind")
        assert row_of(ended, "households_visited", "QN-VANDON")[-1] == "done"

        vandon = await client.get("/v1/campaigns/CD30/risk?as_of=2025-07-10", headers=token("manager", "QN-VANDON"))
        assert list(risk_rows(vandon.json())) == [("households_visited", "QN-VANDON")]
        nothing = await client.get("/v1/campaigns/CD30/risk", headers=token("manager", "QN-CAICHIEN"))
        assert nothing.status_code == 403
        assert (await client.get("/v1/campaigns/NOPE/risk", headers=ADMIN)).status_code == 404
        assert (await client.get("/v1/campaigns/CD30/risk?as_of=soon", headers=ADMIN)).status_code == 422

        # The gauges assess as of the real today, long after the window closed.
        expected = {
            ("households_visited", "QN-VANDON"): "done",
            ("people_supported", "QN-HALONG"): "behind",
            ("households_visited", "QN-HALONG"): "behind",
            ("vneid_installs", "QN"): "behind",
            ("teams", "QN"): "at_risk",
        }
        deadline = time.monotonic() + 30
        while True:
            statuses, ratios = gauges((await client.get("/metrics")).text)
            # Statuses can settle before the last event is counted: wait for the ratio too.
            settled = statuses == expected and ratios.get(("vneid_installs", "QN")) == pytest.approx(8 / 30, abs=0.001)
            if settled or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert statuses == expected
        assert ratios[("teams", "QN")] == 0.8
        assert ratios[("vneid_installs", "QN")] == pytest.approx(8 / 30, abs=0.001)


def row_of(rows: dict[tuple[str, str], dict[str, Any]], indicator: str, unit: str) -> tuple[Any, ...]:
    r = rows[(indicator, unit)]
    return tuple(r[f] for f in ("actual", "pace_needed", "pace_last_7_days", "projected", "projected_ratio", "status"))


def gauges(text: str) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], float]]:
    statuses: dict[tuple[str, str], str] = {}
    ratios: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("campaign") != "CD30":
                continue
            key = (s.labels["indicator"], s.labels["unit"])
            if s.name == "bridge_campaign_target_status" and s.value == 1:
                assert key not in statuses, "one status per target"
                statuses[key] = s.labels["status"]
            elif s.name == "bridge_campaign_projected_ratio":
                ratios[key] = s.value
    return statuses, ratios
