"""Reading the roster spreadsheet an office keeps (XLSX or CSV) into the rows of the roster import.

Request decoding only: each row becomes exactly the JSON import's row, and the service judges it.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
import zipfile
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from datetime import date, datetime
from itertools import islice
from typing import Any, NamedTuple

import openpyxl
from pydantic import JsonValue

from registry.schemas import MAX_ROSTER, local_today
from shared.contracts.common import Role, Skill
from shared.errors import InvalidInput, ProblemError, UnsupportedMediaType

# --- roster spreadsheet -------------------------------------------------------------------------------

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV = "text/csv"
ROSTER_FILE_TYPES = (XLSX, CSV)
# An XLSX is a zip archive: a 1 MiB upload could unpack to gigabytes, so its parts are measured first.
MAX_UNPACKED_XLSX = 32 * 1024 * 1024


# The headers a roster column is known by besides its field name; matched ignoring case and spacing.
ROSTER_HEADERS: dict[str, tuple[str, ...]] = {
    "client_ref": ("Mã tham chiếu",),
    "full_name": ("Họ và tên", "Họ tên"),
    "birth_year": ("Năm sinh",),
    "unit_code": ("Đơn vị", "Mã đơn vị"),
    "roles": ("Vai trò",),
    "skills": ("Kỹ năng",),
    "phone": ("Số điện thoại", "SĐT"),
    "email": ("Email",),
    "teams": ("Đội", "Mã đội"),
    "since": ("Từ ngày",),
}
REQUIRED_ROSTER_COLUMNS = ("client_ref", "full_name", "birth_year", "unit_code", "roles")
# Vietnamese sheets usually open with a running number ("số thứ tự"); it carries nothing to import.
SKIPPED_HEADERS = ("STT",)
ROLE_LABELS = {
    "Đoàn viên": Role.union_member,
    "Thanh niên": Role.youth,
    "Sinh viên": Role.student,
    "Học sinh": Role.student,
    "Giảng viên": Role.lecturer,
}
SKILL_LABELS = {
    "CNTT": Skill.it,
    "Công nghệ thông tin": Skill.it,
    "Hướng dẫn VNeID": Skill.vneid,
    "Giảng dạy": Skill.teaching,
    "Truyền thông": Skill.media,
}


def _key(text: str) -> str:
    return unicodedata.normalize("NFC", " ".join(text.casefold().split()))


_COLUMN_OF_HEADER = {_key(h): field for field, headers in ROSTER_HEADERS.items() for h in (field, *headers)}
_SKIPPED = {_key(h) for h in SKIPPED_HEADERS}
_ROLE_OF = {_key(label): role.value for label, role in ROLE_LABELS.items()} | {_key(r.value): r.value for r in Role}
_SKILL_OF = {_key(label): s.value for label, s in SKILL_LABELS.items()} | {_key(s.value): s.value for s in Skill}
_DAY_MONTH_YEAR = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")


class SheetRow(NamedTuple):
    row: int  # as the spreadsheet numbers it, so a rejected row can be found and fixed
    item: dict[str, JsonValue]


def roster_file_type(content_type: str | None) -> str:
    """The media type of an uploaded roster; 415 for anything but XLSX or CSV."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type not in ROSTER_FILE_TYPES:
        raise UnsupportedMediaType(
            f"send the roster file itself as the request body, with Content-Type {XLSX} or {CSV}"
            f" (got {media_type or 'no Content-Type'})",
            supported=list(ROSTER_FILE_TYPES),
        )
    return media_type


def read_roster_file(content: bytes, media_type: str) -> list[SheetRow]:
    """The data rows of a roster sheet as JSON import rows, each with its row number in the sheet.

    The first non-blank row is the header; blank rows are skipped. A file that cannot be read, a
    header problem or more than ``MAX_ROSTER`` rows is one 422 for the whole file; everything else
    is judged row by row by the import.
    """
    table = _xlsx_table(content) if media_type == XLSX else _csv_table(content)
    try:
        with closing(table):
            filled = list(islice(_filled_rows(table), MAX_ROSTER + 2))
    except ProblemError:
        raise
    except Exception as exc:  # any failure to decode an uploaded file is the sender's to fix, never a 500
        raise _unreadable(media_type, exc) from exc
    if not filled:
        raise InvalidInput("the file is empty: it needs a header row and at least one row", slug="empty-roster")
    (header_row, header), *rows = filled
    columns = _columns(header, header_row)
    if not rows:
        raise InvalidInput(f"the file has no rows under its header (row {header_row})", slug="empty-roster")
    if len(rows) > MAX_ROSTER:
        raise InvalidInput(f"the file has more than {MAX_ROSTER} rows; split it", slug="roster-too-long")
    unnamed = sorted({i for _, cells in rows for i, v in enumerate(cells) if v is not None and i not in columns})
    if unnamed:
        letters = [_letter(i) for i in unnamed]
        raise InvalidInput(
            f"values in column {', '.join(letters)} have no header in row {header_row}",
            slug="roster-columns",
            header_row=header_row,
            unnamed=letters,
        )
    return [
        SheetRow(number, _roster_item({f: v for i, v in enumerate(cells) if (f := columns.get(i)) and v is not None}))
        for number, cells in rows
    ]


def _csv_table(content: bytes) -> Generator[Sequence[object], None, None]:
    text = content.decode("utf-8-sig")
    first_line = text.split("\n", 1)[0]
    # Spreadsheets set to a comma-decimal locale save CSV with ";" between cells.
    delimiter = max((",", ";", "\t"), key=first_line.count)
    yield from csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)


def _xlsx_table(content: bytes) -> Generator[Sequence[object], None, None]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        if sum(part.file_size for part in archive.infolist()) > MAX_UNPACKED_XLSX:
            raise InvalidInput(
                f"the workbook unpacks to more than {MAX_UNPACKED_XLSX // 2**20} MiB; send one sheet of the roster",
                slug="unreadable-file",
            )
    book = openpyxl.load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    try:
        if not book.worksheets:
            raise InvalidInput("the workbook has no worksheet", slug="unreadable-file")
        yield from book.worksheets[0].iter_rows(min_row=1, values_only=True)
    finally:
        book.close()


def _unreadable(media_type: str, exc: Exception) -> InvalidInput:
    if isinstance(exc, UnicodeDecodeError):
        return InvalidInput(
            f"the CSV file is not UTF-8 text (byte {exc.start}); save it as 'CSV UTF-8'", slug="unreadable-file"
        )
    what = "an XLSX workbook" if media_type == XLSX else "CSV"
    reason = str(exc)[:200] or type(exc).__name__
    return InvalidInput(f"the file could not be read as {what}: {reason}", slug="unreadable-file")


def _filled_rows(table: Iterator[Sequence[object]]) -> Iterator[tuple[int, list[object]]]:
    for number, cells in enumerate(table, start=1):
        values = [_cell(v) for v in cells]
        if any(v is not None for v in values):
            yield number, values


def _cell(value: object) -> object:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value).strip() or None
    if isinstance(value, float) and value.is_integer():
        return int(value)  # a spreadsheet stores 2001 as 2001.0
    if isinstance(value, datetime):
        return value.date()
    return value


def _text(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def _letter(index: int) -> str:
    """Spreadsheet column letters of a 0-based column index: 0 -> A, 26 -> AA."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _columns(header: list[object], header_row: int) -> dict[int, str | None]:
    """Column index -> field (None for a skipped column); every header problem in one 422."""
    columns: dict[int, str | None] = {}
    unknown: list[str] = []
    duplicate: list[str] = []
    for i, cell in enumerate(header):
        if cell is None:
            continue
        name = _text(cell)
        key = _key(name)
        field = _COLUMN_OF_HEADER.get(key)
        if key in _SKIPPED:
            columns[i] = None
        elif field is None:
            unknown.append(name)
        elif field in columns.values():
            duplicate.append(name)
        else:
            columns[i] = field
    missing = [f"{ROSTER_HEADERS[f][0]} ({f})" for f in REQUIRED_ROSTER_COLUMNS if f not in columns.values()]
    if not (missing or unknown or duplicate):
        return columns
    problems = []
    if missing:
        problems.append(f"missing columns: {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown columns: {', '.join(unknown)}")
    if duplicate:
        problems.append(f"columns given twice: {', '.join(duplicate)}")
    raise InvalidInput(
        f"the header (row {header_row}) is not a roster: {'; '.join(problems)}",
        slug="roster-columns",
        header_row=header_row,
        missing=missing,
        unknown=unknown,
        duplicate=duplicate,
    )


def _split(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,;\n]", text) if part.strip()]


def _iso_day(value: object) -> str:
    """A date cell, an ISO date or a Vietnamese dd/mm/yyyy date as ISO; anything else as written."""
    text = _text(value)
    if m := _DAY_MONTH_YEAR.match(text):
        day, month, year = (int(g) for g in m.groups())
        try:
            return date(year, month, day).isoformat()
        except ValueError:
            return text  # the row is rejected naming the date it could not read
    return text


def _roster_item(cells: dict[str, object]) -> dict[str, JsonValue]:
    """One sheet row in the JSON import's row shape, so both go through the same validation."""
    item: dict[str, JsonValue] = {}
    for field in ("client_ref", "full_name", "unit_code", "phone", "email"):
        if field in cells:
            item[field] = _text(cells[field])
    if "birth_year" in cells:
        year = cells["birth_year"]
        item["birth_year"] = year if isinstance(year, int) and not isinstance(year, bool) else _text(year)
    if "roles" in cells:
        item["roles"] = [_ROLE_OF.get(_key(v), v) for v in _split(_text(cells["roles"]))]
    if "skills" in cells:
        item["skills"] = [_SKILL_OF.get(_key(v), v) for v in _split(_text(cells["skills"]))]
    teams = _split(_text(cells["teams"])) if "teams" in cells else []
    if teams:
        since = _iso_day(cells["since"]) if "since" in cells else local_today().isoformat()
        item["teams"] = [{"code": code, "since": since} for code in teams]
    return item


def _roster_file_description() -> str:
    rows = "\n".join(
        f"| `{field}` | {', '.join(headers)} | {'yes' if field in REQUIRED_ROSTER_COLUMNS else 'no'} |"
        for field, headers in ROSTER_HEADERS.items()
    )
    roles = ", ".join(f"{label} = `{role.value}`" for label, role in ROLE_LABELS.items())
    skills = ", ".join(f"{label} = `{skill.value}`" for label, skill in SKILL_LABELS.items())
    return f"""The roster spreadsheet itself is the request body: an XLSX workbook (its first sheet) or a
CSV file in UTF-8 (with or without a byte-order mark; `,` or `;` between cells). The first non-blank
row is the header; columns are found by header, in any order, case and spacing ignored:

| field | Vietnamese headers | required |
|---|---|---|
{rows}

A `{SKIPPED_HEADERS[0]}` column is read past. `roles`, `skills` and `teams` hold several values separated
by commas. Roles and skills are the JSON import's values or these labels: {roles}; {skills}.
`since` (a date cell, `2025-07-01` or `01/07/2025`) is when the row's team memberships start; today
(Asia/Ho_Chi_Minh) if blank. Each row then goes through the JSON import: it is judged on its own,
and each result carries the sheet's `row` number. Uploading the same sheet again answers its rows
as `duplicate`, with the same ids.

One 422 for the whole file when it cannot be read, its header lacks a required column or has an
unknown or repeated one (`missing`, `unknown`, `duplicate` name them), rows have values in a
column without a header (`unnamed` gives its letters), or it has more than
{MAX_ROSTER} rows; 415 for another Content-Type (multipart form uploads included); 413 over the body
limit."""


ROSTER_FILE_DESCRIPTION = _roster_file_description()
ROSTER_CSV_EXAMPLE = (
    "STT,Mã tham chiếu,Họ và tên,Năm sinh,Đơn vị,Vai trò,Kỹ năng,Số điện thoại,Email,Đội,Từ ngày\r\n"
    '1,tinh-doan/roster-2025/0042,Nguyễn Thị Hương,2001,QN-HALONG,"Đoàn viên, Sinh viên","CNTT, VNeID",'
    "+84 912 345 678,huong.nguyen@example.vn,HL-TT01,01/07/2025\r\n"
    "2,tinh-doan/roster-2025/0043,Trần Văn Đức,1998,QN-VANDON,Thanh niên,,,,,\r\n"
)
ROSTER_FILE_BODY: dict[str, Any] = {
    "required": True,
    "description": "The roster file, up to 500 rows (see the columns above).",
    "content": {
        XLSX: {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "An XLSX workbook whose first sheet has the columns of the CSV example.",
            }
        },
        CSV: {
            "schema": {"type": "string"},
            "examples": {"roster": {"summary": "Two volunteers, Vietnamese headers", "value": ROSTER_CSV_EXAMPLE}},
        },
    },
}
