"""The one-sheet XLSX writer, read back by openpyxl and by an XML parser, part by part."""

from __future__ import annotations

import io
import zipfile
from datetime import date, datetime
from xml.etree import ElementTree

import openpyxl
import pytest

from metrics.xlsx import Cell, SheetWriter, Style, column_letter


def test_column_letters_run_past_z() -> None:
    assert [column_letter(i) for i in (1, 26, 27, 52, 53, 702, 703)] == ["A", "Z", "AA", "AZ", "BA", "ZZ", "AAA"]


def test_values_styles_and_layout_read_back_as_written() -> None:
    sheet = SheetWriter("Báo cáo tuần / a very long sheet name", widths={1: 18.0, 3: 16.0}, frozen=(3, 5), columns=6)
    sheet.append([Cell("Báo cáo: Tỉnh Quảng Ninh (QN)", Style.title)])
    sheet.append(["Từ ngày / From", date(2025, 7, 7), "Lập lúc", datetime(2025, 7, 14, 8, 30)])  # noqa: DTZ001
    sheet.append([])
    sheet.append([Cell("Mã / Code", Style.header), Cell("Tên / Name", Style.header)])
    sheet.append(["QN-HALONG", "Phường Hạ Long", 42, None, -3, 0])
    sheet.append(["A&B <c>", "  spaced  ", 2**40, None, None, "ctrl\x01char\x1f"])
    sheet.append([Cell("Tổng / Total", Style.bold), None, Cell(44, Style.bold)])
    data = sheet.close()

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        for name in z.namelist():  # every part is well-formed XML
            ElementTree.fromstring(z.read(name))  # noqa: S314 (our own output)

    book = openpyxl.load_workbook(io.BytesIO(data))
    ws = book.active
    assert ws is not None
    assert ws.title == "Báo cáo tuần _ a very long sheet name"[:31]
    assert ws["A1"].value == "Báo cáo: Tỉnh Quảng Ninh (QN)"
    assert ws["A1"].font.b
    assert ws["A1"].font.sz == 14
    assert ws["B2"].value == datetime(2025, 7, 7)  # noqa: DTZ001
    assert ws["B2"].number_format == "DD/MM/YYYY"
    assert ws["D2"].value == datetime(2025, 7, 14, 8, 30)  # noqa: DTZ001
    assert ws["D2"].number_format == "DD/MM/YYYY HH:MM"
    assert [c.value for c in ws[3]] == [None] * ws.max_column
    assert ws["A4"].font.b
    assert ws["A4"].alignment.wrap_text
    assert [c.value for c in ws[5]] == ["QN-HALONG", "Phường Hạ Long", 42, None, -3, 0]
    assert [c.value for c in ws[6]] == ["A&B <c>", "  spaced  ", 2**40, None, None, "ctrlchar"]
    assert ws["A7"].font.b
    assert ws["C7"].value == 44
    assert ws["C7"].font.b
    assert not ws["A5"].font.b
    assert ws.freeze_panes == "C5"
    assert ws.column_dimensions["A"].width == 18
    assert ws.column_dimensions["C"].width == 16


def test_a_row_wider_than_the_sheet_was_opened_for_is_refused() -> None:
    sheet = SheetWriter("x", widths={}, columns=2)
    with pytest.raises(ValueError, match="3 cells"):
        sheet.append([1, 2, 3])
