"""Roster import: many volunteers with their memberships per request, each row judged on its own."""

from __future__ import annotations

import io
import random
import unicodedata
import zipfile
from collections import Counter
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import httpx
import openpyxl
import pytest

from registry.app import RegistrySettings, build_app
from shared.contracts import registry as ev
from shared.testing import running_app, token

from .support import ADMIN, PROBLEM_JSON, TREE, assert_problem, registry_events, seed_tree, team_body, volunteer_body

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]


def row(ref: str, unit: str = "QN-HALONG", teams: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    body = volunteer_body(unit, full_name=f"Tình nguyện viên {ref}", **extra)
    return {**body, "client_ref": ref, "teams": teams or []}


async def test_roster_rows_are_judged_one_by_one_and_a_resend_changes_nothing(client, settings) -> None:
    events = await seed_tree(client)
    for body in (team_body("HL-TT01"), team_body("VD-LD", "QN-VANDON", kind="mobile", base=None)):
        assert (await client.post("/v1/teams", json=body, headers=ADMIN)).status_code == 201
    assert (await client.post("/v1/teams/VD-LD:deactivate", headers=ADMIN)).status_code == 200
    events += 3
    since = "2025-07-01"
    rows = [
        row("r/1", teams=[{"code": "HL-TT01", "since": since}]),
        row("r/2", "QN-VANDON"),
        row("r/3", teams=[{"code": "NOPE", "since": since}]),  # unknown team
        row("r/4", birth_year=1800),  # invalid field
        row("r/5", teams=[{"code": "VD-LD", "since": since}]),  # deactivated team
        {"client_ref": "r/6"},  # most fields missing
    ]
    r = await client.post("/v1/volunteers:import", json={"items": rows}, headers=ADMIN)
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    assert [i["status"] for i in got] == ["created", "created", "rejected", "rejected", "rejected", "rejected"]
    assert [i["client_ref"] for i in got] == [f"r/{n}" for n in range(1, 7)]
    assert got[0]["teams"] == ["HL-TT01"]
    assert got[2]["problem"]["type"].endswith("unknown-team")
    assert got[3]["problem"]["status"] == 422
    assert got[3]["problem"]["errors"][0]["field"] == "birth_year"
    assert got[4]["problem"]["type"].endswith("team-inactive")
    ids = [got[0]["id"], got[1]["id"]]

    members = await client.get("/v1/teams/HL-TT01/members", headers=ADMIN)
    assert [m["volunteer_id"] for m in members.json()["items"]] == [ids[0]]
    one = await client.get(f"/v1/volunteers/{ids[1]}", headers=ADMIN)
    assert one.status_code == 200
    assert one.json()["unit_code"] == "QN-VANDON"

    # The device never saw the answer and sends the first two rows again.
    again = await client.post("/v1/volunteers:import", json={"items": rows[:2]}, headers=ADMIN)
    assert [(i["status"], i["id"]) for i in again.json()["items"]] == [("duplicate", ids[0]), ("duplicate", ids[1])]
    listed = await client.get("/v1/volunteers", params={"limit": 100}, headers=ADMIN)
    assert len(listed.json()["items"]) == 2

    got_events = await registry_events(settings, events + 3)
    types = Counter(e.envelope.type for e in got_events)
    assert types[ev.VOLUNTEER_REGISTERED_V2] == 2
    assert types[ev.MEMBERSHIP_STARTED] == 1
    started = next(e for e in got_events if e.envelope.type == ev.MEMBERSHIP_STARTED)
    assert started.envelope.data == {
        "team_code": "HL-TT01",
        "volunteer_id": ids[0],
        "since": since,
        "team_kind": "permanent",
        "team_unit_path": ["QN", "QN-HALONG"],
        "team_active": True,
    }


async def test_roster_rows_outside_a_managers_unit_are_rejected(client, settings) -> None:
    events = await seed_tree(client)
    manager = token("manager", unit="QN-HALONG")
    rows = [row("m/1"), row("m/2", "QN-VANDON")]
    r = await client.post("/v1/volunteers:import", json={"items": rows}, headers=manager)
    assert r.status_code == 200, r.text
    assert [i["status"] for i in r.json()["items"]] == ["created", "rejected"]
    assert r.json()["items"][1]["problem"]["status"] == 403
    field = token("field", unit="QN-HALONG")
    denied = await client.post("/v1/volunteers:import", json={"items": rows}, headers=field)
    assert denied.status_code == 403
    got = await registry_events(settings, events + 1)  # the one accepted row, nothing from the others
    assert [e.envelope.type for e in got].count(ev.VOLUNTEER_REGISTERED_V2) == 1


# --- the roster spreadsheet (XLSX or CSV) ---------------------------------------------------------------

IMPORT_FILE = "/v1/volunteers:import-file"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV = "text/csv"
HEADER_VI = [
    "STT",
    "Mã tham chiếu",
    "Họ và tên",
    "Năm sinh",
    "Đơn vị",
    "Vai trò",
    "Kỹ năng",
    "Số điện thoại",
    "Email",
    "Đội",
    "Từ ngày",
]


def xlsx(rows: list[list[Any]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for r in rows:
        sheet.append(r)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


async def upload(client, content: bytes, media_type: str | None, headers: dict[str, str] = ADMIN):
    sent = {**headers, "Content-Type": media_type} if media_type else headers
    return await client.post(IMPORT_FILE, content=content, headers=sent)


async def teams_for_import(client) -> None:
    """The tree, team HL-TT01 and the deactivated mobile team VD-LD."""
    await seed_tree(client)
    for body in (team_body("HL-TT01"), team_body("VD-LD", "QN-VANDON", kind="mobile", base=None)):
        assert (await client.post("/v1/teams", json=body, headers=ADMIN)).status_code == 201
    assert (await client.post("/v1/teams/VD-LD:deactivate", headers=ADMIN)).status_code == 200


@pytest.fixture
async def json_client(make_settings, run_id) -> AsyncIterator[httpx.AsyncClient]:
    """A second registry with its own database, to import the same rows as JSON."""
    other = make_settings(RegistrySettings, mongo_db=f"registry_json_{run_id}")
    async with running_app(build_app(other)) as c:
        yield c


HUONG_NFD = unicodedata.normalize("NFD", "Nguyễn Thị Hương")
SHEET = [
    HEADER_VI,
    [1, "hl/0001", HUONG_NFD, 2001, "QN-HALONG", "Đoàn viên, Sinh viên", "CNTT, VNeID", "+84 912 345 678",
     "huong.nguyen@example.vn", "HL-TT01", date(2025, 7, 1)],
    [2, "hl/0002", "Trần Văn Đức", 1998, "QN-VANDON", "Thanh niên"],
    [],
    [3, "hl/0003", "Lê Thị Mai", 2003, "QN-HALONG", "union_member", None, None, None, "NOPE", "01/07/2025"],
    [4, "hl/0004", "Phạm Văn Nam", 1800, "QN-HALONG", "Đoàn viên"],
    [5, "hl/0005", "Hoàng Thị Lan", 2000, "QN-HALONG", "Đoàn viên", None, None, None, "VD-LD", "01/07/2025"],
    [6, "hl/0006", None, 2002, "QN-HALONG", "Giảng viên"],
    [7, "hl/0002", "Trần Văn Đức", 1998, "QN-VANDON", "Thanh niên"],
]  # fmt: skip
SHEET_ROWS = [2, 3, 5, 6, 7, 8, 9]
# The same rows as the JSON import takes them.
JSON_ROWS: list[dict[str, Any]] = [
    {"client_ref": "hl/0001", "full_name": "Nguyễn Thị Hương", "birth_year": 2001, "unit_code": "QN-HALONG",
     "roles": ["union_member", "student"], "skills": ["it", "vneid"], "phone": "+84 912 345 678",
     "email": "huong.nguyen@example.vn", "teams": [{"code": "HL-TT01", "since": "2025-07-01"}]},
    {"client_ref": "hl/0002", "full_name": "Trần Văn Đức", "birth_year": 1998, "unit_code": "QN-VANDON",
     "roles": ["youth"]},
    {"client_ref": "hl/0003", "full_name": "Lê Thị Mai", "birth_year": 2003, "unit_code": "QN-HALONG",
     "roles": ["union_member"], "teams": [{"code": "NOPE", "since": "2025-07-01"}]},
    {"client_ref": "hl/0004", "full_name": "Phạm Văn Nam", "birth_year": 1800, "unit_code": "QN-HALONG",
     "roles": ["union_member"]},
    {"client_ref": "hl/0005", "full_name": "Hoàng Thị Lan", "birth_year": 2000, "unit_code": "QN-HALONG",
     "roles": ["union_member"], "teams": [{"code": "VD-LD", "since": "2025-07-01"}]},
    {"client_ref": "hl/0006", "birth_year": 2002, "unit_code": "QN-HALONG", "roles": ["lecturer"]},
    {"client_ref": "hl/0002", "full_name": "Trần Văn Đức", "birth_year": 1998, "unit_code": "QN-VANDON",
     "roles": ["youth"]},
]  # fmt: skip


async def test_an_xlsx_roster_with_vietnamese_headers_imports_exactly_as_the_same_rows_sent_as_json(
    client, json_client
) -> None:
    for c in (client, json_client):
        await teams_for_import(c)
    by_json = await json_client.post("/v1/volunteers:import", json={"items": JSON_ROWS}, headers=ADMIN)
    assert by_json.status_code == 200, by_json.text

    r = await upload(client, xlsx(SHEET), XLSX)
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    assert [i["row"] for i in got] == SHEET_ROWS
    statuses = ["created", "created", "rejected", "rejected", "rejected", "rejected", "duplicate"]
    assert [i["status"] for i in got] == statuses
    from_json = by_json.json()["items"]
    assert {i["row"] for i in from_json} == {None}
    assert [{**i, "row": None} for i in got] == from_json
    assert got[2]["problem"]["type"].endswith("unknown-team")
    assert got[3]["problem"]["errors"][0]["field"] == "birth_year"
    assert got[4]["problem"]["type"].endswith("team-inactive")
    assert got[5]["problem"]["errors"][0]["field"] == "full_name"
    assert got[6]["id"] == got[1]["id"]  # the copied row is the same person, not a second one

    huong = (await client.get(f"/v1/volunteers/{got[0]['id']}", headers=ADMIN)).json()
    assert huong["full_name"] == "Nguyễn Thị Hương"
    assert huong["full_name"] == unicodedata.normalize("NFC", HUONG_NFD) != HUONG_NFD
    assert (huong["roles"], huong["skills"]) == (["union_member", "student"], ["it", "vneid"])
    members = (await client.get("/v1/teams/HL-TT01/members", headers=ADMIN)).json()["items"]
    assert [(m["volunteer_id"], m["since"]) for m in members] == [(got[0]["id"], "2025-07-01")]

    # The office uploads the same sheet again: nobody is registered twice.
    again = await upload(client, xlsx(SHEET), XLSX)
    assert [(i["row"], i["status"], i["id"]) for i in again.json()["items"]] == [
        (row, "rejected" if status == "rejected" else "duplicate", i["id"])
        for row, status, i in zip(SHEET_ROWS, statuses, got, strict=True)
    ]
    listed = await client.get("/v1/volunteers", params={"limit": 100}, headers=ADMIN)
    assert len(listed.json()["items"]) == 2


async def test_a_csv_roster_with_a_byte_order_mark_imports_and_a_reupload_answers_duplicates(client, settings) -> None:
    await teams_for_import(client)
    seeded = len(TREE) + 3
    sheet = (
        "\ufeffclient_ref,Họ và tên,birth_year,Đơn vị,roles,Kỹ năng,phone,Email,Đội,since\r\n"
        'vd/01,Đinh Thị Ngọc Ánh,2004,QN-VANDON,"Đoàn viên, Sinh viên",CNTT,0912 345 678,,HL-TT01,2025-07-15\r\n'
        "vd/02,Vũ Quốc Bảo,1999,QN-VANDON,youth,teaching,,bao@@example,,\r\n"
        ",,,,,,,,,\r\n"
        "vd/03,Ngô Minh Khôi,2000,QN-BINHLIEU,Thanh niên,,,,,\r\n"
    ).encode()
    r = await upload(client, sheet, "text/csv; charset=utf-8")
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    assert [(i["row"], i["client_ref"], i["status"]) for i in got] == [
        (2, "vd/01", "created"),
        (3, "vd/02", "rejected"),
        (5, "vd/03", "created"),
    ]
    assert got[0]["teams"] == ["HL-TT01"]
    assert got[1]["problem"]["errors"][0]["field"] == "email"
    anh = (await client.get(f"/v1/volunteers/{got[0]['id']}", headers=ADMIN)).json()
    assert anh["full_name"] == "Đinh Thị Ngọc Ánh"
    assert (anh["unit_code"], anh["roles"], anh["phone"]) == ("QN-VANDON", ["union_member", "student"], "0912 345 678")

    again = await upload(client, sheet, CSV)
    assert [(i["status"], i["id"]) for i in again.json()["items"]] == [
        ("duplicate", got[0]["id"]),
        ("rejected", None),
        ("duplicate", got[2]["id"]),
    ]
    # The JSON door and the file door know the same people by the same references.
    by_json = await client.post("/v1/volunteers:import", json={"items": [row("vd/03", "QN-BINHLIEU")]}, headers=ADMIN)
    assert [(i["status"], i["id"]) for i in by_json.json()["items"]] == [("duplicate", got[2]["id"])]

    got_events = await registry_events(settings, seeded + 3)
    types = Counter(e.envelope.type for e in got_events)
    assert (types[ev.VOLUNTEER_REGISTERED_V2], types[ev.MEMBERSHIP_STARTED]) == (2, 1)


async def test_a_sheet_whose_header_is_not_a_roster_is_one_422_naming_the_columns(client) -> None:
    await teams_for_import(client)
    csv_sheet = "Mã tham chiếu,Họ và tên,Đơn vị,Vai trò,Ghi chú\nx/1,Nguyễn Thị Hương,QN-HALONG,youth,mới\n"
    r = await upload(client, csv_sheet.encode(), CSV)
    body = assert_problem(r, 422, says="Năm sinh (birth_year)")
    assert "Ghi chú" in body["detail"]
    assert (body["missing"], body["unknown"], body["duplicate"]) == (["Năm sinh (birth_year)"], ["Ghi chú"], [])
    assert body["type"].endswith("roster-columns")

    twice = xlsx([[*HEADER_VI, "full_name"], [1, "x/2", "Nguyễn Thị Hương", 2001, "QN-HALONG", "youth"]])
    body = assert_problem(await upload(client, twice, XLSX), 422, says="full_name")
    assert body["duplicate"] == ["full_name"]

    stray = xlsx([HEADER_VI, [1, "x/3", "Nguyễn Thị Hương", 2001, "QN-HALONG", "youth", *[None] * 6, "?"]])
    body = assert_problem(await upload(client, stray, XLSX), 422, says="column M")
    assert body["unnamed"] == ["M"]
    listed = await client.get("/v1/volunteers", headers=ADMIN)
    assert listed.json()["items"] == []


async def test_unreadable_files_are_422_and_never_500(client) -> None:
    await teams_for_import(client)
    good = xlsx(SHEET)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("word/document.xml", "<w:document/>")
    rng = random.Random(20250701)
    garbage = bytes(rng.getrandbits(8) for _ in range(4096))
    unreadable = [
        (garbage, XLSX),
        (garbage, CSV),
        (b"", XLSX),
        (b"", CSV),
        (good[: len(good) // 2], XLSX),  # cut off in transfer
        (archive.getvalue(), XLSX),  # a zip, but not a workbook
        (good, CSV),  # a workbook declared as CSV
        ("Mã tham chiếu,Họ và tên\n".encode(), XLSX),  # CSV declared as a workbook
        ("Họ và tên,Năm sinh\n".encode("utf-16"), CSV),
        (b'"' + b"x" * 200_000 + b'"\n', CSV),  # one cell over the csv module's field limit
        (xlsx([HEADER_VI]), XLSX),  # a header and no rows
    ]
    for content, media_type in unreadable:
        r = await upload(client, content, media_type)
        assert_problem(r, 422)
    # Bytes flipped at random in a good workbook: whatever survives is judged row by row, nothing fails.
    for _ in range(25):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.getrandbits(8)
        r = await upload(client, bytes(damaged), XLSX)
        assert r.status_code in (200, 422), r.text
        assert r.headers["content-type"] == ("application/json" if r.status_code == 200 else PROBLEM_JSON)
    too_big = b"a" * (1024 * 1024 + 1)
    assert_problem(await upload(client, too_big, CSV), 413)


async def test_a_roster_file_of_another_content_type_is_415(client) -> None:
    await teams_for_import(client)
    sheet = xlsx(SHEET)
    for media_type in ("application/json", "application/vnd.ms-excel", "application/octet-stream", None):
        body = assert_problem(await upload(client, sheet, media_type), 415)
        assert body["supported"] == [XLSX, CSV]
    form = await client.post(IMPORT_FILE, files={"file": ("roster.xlsx", sheet, XLSX)}, headers=ADMIN)
    assert_problem(form, 415, says="request body")
    # Who may not import learns that before the file is looked at.
    field = token("field", unit="QN-HALONG")
    assert (await upload(client, b"\x00garbage", XLSX, headers=field)).status_code == 403


async def test_leaving_ends_the_memberships_of_imported_and_of_earlier_volunteers(settings) -> None:
    # A volunteer's memberships are read by _id through its joined_teams: from the roster row, from a
    # later join, from a re-sent row naming another team, and, for volunteers stored before the list
    # existed, from the one-off migration.
    app = build_app(settings)
    async with running_app(app) as client:
        await seed_tree(client)
        for code in ("HL-TT01", "HL-LD02", "HL-TT03"):
            assert (await client.post("/v1/teams", json=team_body(code), headers=ADMIN)).status_code == 201
        since = "2025-07-01"
        rows = [row("j/1", teams=[{"code": "HL-TT01", "since": since}]), row("j/2")]
        got = (await client.post("/v1/volunteers:import", json={"items": rows}, headers=ADMIN)).json()["items"]
        imported, earlier = got[0]["id"], got[1]["id"]
        joined = await client.post(
            "/v1/teams/HL-LD02/members", json={"volunteer_id": imported, "since": since}, headers=ADMIN
        )
        assert joined.status_code == 201
        resent = [row("j/1", teams=[{"code": "HL-TT03", "since": since}])]
        assert (await client.post("/v1/volunteers:import", json={"items": resent}, headers=ADMIN)).status_code == 200
        member = {"volunteer_id": earlier, "since": since}
        assert (await client.post("/v1/teams/HL-TT01/members", json=member, headers=ADMIN)).status_code == 201

        db = app.state.runtime.db
        stored = await db["volunteers"].find_one({"_id": imported})
        assert sorted(stored["joined_teams"]) == ["HL-LD02", "HL-TT01", "HL-TT03"]
        # `earlier` as stored before joined_teams existed: the migration must rebuild it.
        await db["volunteers"].update_one({"_id": earlier}, {"$unset": {"joined_teams": ""}})
        await db["teams"].update_one({"_id": "HL-TT01"}, {"$unset": {"joined_members": ""}})
        await db["migrations"].delete_one({"_id": "0002-membership-hints"})
        await app.state.registry._repo.migrate_membership_hints()
        assert (await db["volunteers"].find_one({"_id": earlier}))["joined_teams"] == ["HL-TT01"]
        assert sorted((await db["teams"].find_one({"_id": "HL-TT01"}))["joined_members"]) == sorted([imported, earlier])
        listed = await client.get("/v1/volunteers", params={"team": "HL-TT01"}, headers=ADMIN)
        assert sorted(v["id"] for v in listed.json()["items"]) == sorted([imported, earlier])

        for volunteer in (imported, earlier):
            r = await client.post(f"/v1/volunteers/{volunteer}:leave", json={"left_on": "2025-08-15"}, headers=ADMIN)
            assert r.status_code == 200, r.text
        for team in ("HL-TT01", "HL-LD02", "HL-TT03"):
            members = (await client.get(f"/v1/teams/{team}/members", headers=ADMIN)).json()["items"]
            assert members == [], (team, members)


async def test_a_roster_notes_the_members_of_all_its_teams_in_one_batch_of_commands(settings, monkeypatch) -> None:
    # 60 teams: more than one command's worth of statements (shared.mongo.UPDATES_PER_COMMAND).
    # At 100x the roster's per-team updates, one at a time, queued behind every other write of the
    # registry's database (1,798 of them slower than 250 ms in one run).
    import registry.repository as repository

    sent: list[int] = []
    real = repository.update_each

    async def counting(col: Any, updates: Any) -> int:
        if col.name == "teams" and updates:  # the start-up migration has none to send
            sent.append(len(updates))
        return await real(col, updates)

    monkeypatch.setattr(repository, "update_each", counting)
    app = build_app(settings)
    async with running_app(app) as client:
        await seed_tree(client)
        codes = [f"HL-T{n:02d}" for n in range(60)]
        for code in codes:
            assert (await client.post("/v1/teams", json=team_body(code), headers=ADMIN)).status_code == 201
        since = "2025-07-01"
        pairs = [(codes[n % 60], codes[(n * 7 + 1) % 60]) for n in range(120)]  # never the same team twice
        rows = [
            row(f"m/{n}", teams=[{"code": a, "since": since}, {"code": b, "since": since}])
            for n, (a, b) in enumerate(pairs)
        ]
        got = (await client.post("/v1/volunteers:import", json={"items": rows}, headers=ADMIN)).json()["items"]
        assert [i["status"] for i in got] == ["created"] * 120
        assert sent == [60]
        db = app.state.runtime.db
        expected: dict[str, set[str]] = {code: set() for code in codes}
        for (a, b), item in zip(pairs, got, strict=True):
            expected[a].add(item["id"])
            expected[b].add(item["id"])
        stored = {t["_id"]: set(t["joined_members"]) async for t in db["teams"].find({"_id": {"$in": codes}})}
        assert stored == expected
        members = await client.get(f"/v1/teams/{codes[59]}/members", params={"limit": 100}, headers=ADMIN)
        assert {m["volunteer_id"] for m in members.json()["items"]} == expected[codes[59]]
