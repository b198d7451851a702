"""The report table as streamed JSON, and as CSV and XLSX for the people who file the union's weekly
reports in Excel. Each takes the rows one at a time as the service makes them (:class:`StreamedReport`).

Both carry the same table as the JSON: a unit code and name column (and the team code for a table of
teams), then for every indicator three
columns (this period, the previous period, the change). CSV is UTF-8 with a byte-order mark (without
it Excel reads Vietnamese as Windows-1258 mojibake) and is produced row by row; XLSX adds a title
row and the period as real dates above the header, which is frozen.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import date

from metrics.schemas import ReportRow, ReportRows, ReportTable
from metrics.service import LOCAL_TZ, StreamedReport
from metrics.xlsx import Cell, SheetWriter, Style

CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
BOM = "\ufeff".encode()
UNIT_HEADERS = ("Mã đơn vị / Unit code", "Đơn vị / Unit")
TEAM_HEADERS = ("Mã đơn vị / Unit code", "Đội / Team", "Mã đội / Team code")
PREVIOUS = "kỳ trước / previous"
CHANGE = "thay đổi / change"
# The rows above the header in the XLSX: title, period, blank.
XLSX_HEADER_ROW = 4


def header(table: ReportTable) -> list[str]:
    out = list(TEAM_HEADERS if table.rows_by is ReportRows.teams else UNIT_HEADERS)
    for column in table.columns:
        label = f"{column.label_vi} / {column.label_en}"
        out += [label, f"{label} ({PREVIOUS})", f"{label} ({CHANGE})"]
    return out


def cells(table: ReportTable, row: ReportRow) -> list[str | int | None]:
    out: list[str | int | None] = [row.unit, row.name]
    if table.rows_by is ReportRows.teams:
        out.append(row.team)
    for column in table.columns:
        out += [row.figures[column.key], row.previous[column.key], row.change[column.key]]
    return out


# Rows per chunk of a streamed JSON table: one chunk a few hundred kB, not one write per row.
JSON_ROWS_PER_CHUNK = 64


def json_chunks(report: StreamedReport) -> Iterator[bytes]:
    """The JSON table (the :class:`ReportTable` document) with its rows serialised as they are made."""
    head = report.head.model_dump_json(by_alias=True, exclude={"rows", "totals"}).encode()
    chunk = [head[:-1], b',"rows":[']
    for i, row in enumerate(report.rows):
        if i:
            chunk.append(b",")
        chunk.append(row.model_dump_json(by_alias=True).encode())
        if i % JSON_ROWS_PER_CHUNK == JSON_ROWS_PER_CHUNK - 1:
            yield b"".join(chunk)
            chunk = []
    chunk += [b'],"totals":', report.head.totals.model_dump_json(by_alias=True).encode(), b"}"]
    yield b"".join(chunk)


def csv_chunks(report: StreamedReport) -> Iterator[bytes]:
    """The CSV one line at a time; unknown previous values are empty cells."""
    table = report.head
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def line(values: list[str | int | None]) -> bytes:
        writer.writerow(["" if v is None else v for v in values])
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text.encode()

    yield BOM + line(list(header(table)))
    for row in report.rows:
        yield line(cells(table, row))
    yield line(cells(table, table.totals))


def _dd_mm_yyyy(day: date) -> str:
    return day.strftime("%d/%m/%Y")


def title(table: ReportTable) -> str:
    period = f"{_dd_mm_yyyy(table.from_)} - {_dd_mm_yyyy(table.to)}"
    what = f"Báo cáo chiến dịch / Campaign report {table.campaign}" if table.campaign else "Báo cáo / Report"
    return f"{what}: {table.unit_name} ({table.unit}), {period}"


def xlsx_bytes(report: StreamedReport) -> bytes:
    """The workbook: title row, period row (local dates), a blank row, the frozen header, the rows, totals."""
    table = report.head
    names = header(table)
    first_figure = len(names) - 3 * len(table.columns) + 1
    widths = {1: 18.0, 2: 36.0, **dict.fromkeys(range(first_figure, len(names) + 1), 16.0)}
    sheet = SheetWriter(
        "Báo cáo", widths=widths, frozen=(first_figure, XLSX_HEADER_ROW + 1), columns=max(len(names), 9)
    )
    sheet.append([Cell(title(table), Style.title)])
    generated = table.as_of.astimezone(LOCAL_TZ).replace(tzinfo=None, microsecond=0)
    sheet.append(
        [
            "Từ ngày / From",
            table.from_,
            "Đến ngày / To",
            table.to,
            "Kỳ trước / Previous period",
            table.previous_from,
            table.previous_to,
            "Lập lúc / Generated",
            generated,
        ]
    )
    sheet.append([])
    sheet.append([Cell(name, Style.header) for name in names])
    for row in report.rows:
        sheet.append(cells(table, row))
    sheet.append([Cell(value, Style.bold) for value in cells(table, table.totals)])
    return sheet.close()


def filename(table: ReportTable, extension: str) -> str:
    """``bao-cao_QN_2025-07-07_2025-07-13.csv``: ASCII, so every browser keeps it."""
    unit = re.sub(r"[^A-Za-z0-9_-]+", "_", table.unit)
    return f"bao-cao_{unit}_{table.from_.isoformat()}_{table.to.isoformat()}.{extension}"
