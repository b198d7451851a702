"""A workbook of one sheet, written as its rows come: the few parts of SpreadsheetML a report needs.

openpyxl's write-only mode makes one cell object per value, and a province's table of teams kept the
interpreter lock from the projector for seconds (ADR 0007). This writes each row's XML straight into
the zip entry. Text cells are inline strings, numbers are
numbers, dates are day numbers with a date format, so Excel, LibreOffice and openpyxl read the
values back as written.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import IntEnum
from typing import IO
from xml.sax.saxutils import escape, quoteattr


class Style(IntEnum):
    """The sheet's cell formats, by their index in ``styles.xml``."""

    plain = 0
    bold = 1
    title = 2
    date = 3
    stamp = 4
    header = 5


DATE_FORMAT = "DD/MM/YYYY"
STAMP_FORMAT = "DD/MM/YYYY HH:MM"
# Characters XML 1.0 cannot carry at all; a name holding one loses it rather than the file.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# Excel counts days from 1899-12-30 (its 1900 leap-year bug folded in), in wall-clock time.
_EPOCH = date(1899, 12, 30).toordinal()
_NOT_IN_TITLE = re.compile(r"[\\/?*\[\]:]")
_ROWS_PER_WRITE = 200


@dataclass(frozen=True)
class Cell:
    value: str | int | date | None
    style: Style


Value = str | int | date | None | Cell


def column_letter(index: int) -> str:
    """``1`` -> ``A``, ``27`` -> ``AA``."""
    letters = ""
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def sheet_title(name: str) -> str:
    """``name`` as Excel takes a sheet's name: at most 31 characters, none of ``\\ / ? * [ ] :``."""
    return _NOT_IN_TITLE.sub("_", _NOT_XML.sub("", name))[:31] or "Sheet1"


def _serial(value: date) -> str:
    days = value.toordinal() - _EPOCH
    if not isinstance(value, datetime) or not (value.hour or value.minute or value.second):
        return str(days)
    return repr(days + (value.hour * 3600 + value.minute * 60 + value.second) / 86400)


def _cell(ref: str, value: str | int | date, style: Style) -> str:
    s = f' s="{int(style)}"' if style else ""
    if isinstance(value, int):
        return f'<c r="{ref}"{s}><v>{value}</v></c>'
    if isinstance(value, date):
        if not style:
            s = f' s="{int(Style.stamp if isinstance(value, datetime) else Style.date)}"'
        return f'<c r="{ref}"{s}><v>{_serial(value)}</v></c>'
    text = escape(_NOT_XML.sub("", value))
    space = ' xml:space="preserve"' if text != text.strip() else ""
    return f'<c r="{ref}"{s} t="inlineStr"><is><t{space}>{text}</t></is></c>'


class SheetWriter:
    """Rows appended in order, then :meth:`close` for the file's bytes."""

    def __init__(
        self, name: str, *, widths: Mapping[int, float], frozen: tuple[int, int] | None = None, columns: int
    ) -> None:
        """``frozen``: the first column and row (1-based) that scroll; ``columns``: the widest row's length."""
        self._buffer = io.BytesIO()
        self._zip = zipfile.ZipFile(self._buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6)
        for part, text in _static_parts(name).items():
            self._zip.writestr(part, text)
        self._sheet: IO[bytes] = self._zip.open("xl/worksheets/sheet1.xml", "w")
        self._refs = [column_letter(i + 1) for i in range(columns)]
        self._row = 0
        self._pending: list[str] = []
        head = [
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            f'<worksheet xmlns="{_MAIN}" xmlns:r="{_REL}">'
        ]
        if frozen is not None:
            col, row = frozen
            top_left = f"{column_letter(col)}{row}"
            head.append(
                '<sheetViews><sheetView workbookViewId="0">'
                f'<pane xSplit="{col - 1}" ySplit="{row - 1}" topLeftCell="{top_left}" activePane="bottomRight"'
                ' state="frozen"/><selection pane="bottomRight"/></sheetView></sheetViews>'
            )
        else:
            head.append('<sheetViews><sheetView workbookViewId="0"/></sheetViews>')
        head.append('<sheetFormatPr defaultRowHeight="15"/>')
        if widths:
            head.append("<cols>")
            head += [f'<col min="{i}" max="{i}" width="{w}" customWidth="1"/>' for i, w in sorted(widths.items())]
            head.append("</cols>")
        head.append("<sheetData>")
        self._sheet.write("".join(head).encode())

    def append(self, values: Sequence[Value]) -> None:
        self._row += 1
        if len(values) > len(self._refs):
            raise ValueError(f"row {self._row} has {len(values)} cells, the sheet was opened for {len(self._refs)}")
        row = self._row
        parts = [f'<row r="{row}">']
        for ref, given in zip(self._refs, values, strict=False):
            value, style = (given.value, given.style) if isinstance(given, Cell) else (given, Style.plain)
            if value is not None:
                parts.append(_cell(f"{ref}{row}", value, style))
        parts.append("</row>")
        self._pending.append("".join(parts))
        if len(self._pending) >= _ROWS_PER_WRITE:
            self._flush()

    def _flush(self) -> None:
        self._sheet.write("".join(self._pending).encode())
        self._pending = []

    def close(self) -> bytes:
        self._flush()
        self._sheet.write(b'</sheetData><pageMargins left="0.7" right="0.7" top="0.75" bottom="0.75" header="0.3"'
                          b' footer="0.3"/></worksheet>')
        self._sheet.close()
        self._zip.close()
        return self._buffer.getvalue()


_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'


def _static_parts(sheet_name: str) -> dict[str, str]:
    ct = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    return {
        "[Content_Types].xml": _XML
        + '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{ct}.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{ct}.worksheet+xml"/>'
        f'<Override PartName="/xl/styles.xml" ContentType="{ct}.styles+xml"/>'
        "</Types>",
        "_rels/.rels": _XML + f'<Relationships xmlns="{_PKG_REL}">'
        f'<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/>'
        "</Relationships>",
        "xl/workbook.xml": _XML + f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}">'
        f'<bookViews><workbookView/></bookViews><sheets><sheet name={quoteattr(sheet_title(sheet_name))} sheetId="1"'
        ' r:id="rId1"/></sheets></workbook>',
        "xl/_rels/workbook.xml.rels": _XML + f'<Relationships xmlns="{_PKG_REL}">'
        f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
        f'<Relationship Id="rId2" Type="{_REL}/styles" Target="styles.xml"/>'
        "</Relationships>",
        # cellXfs in the order of Style: plain, bold, title (bold 14), date, stamp, header (bold, wrapped, top).
        "xl/styles.xml": _XML + f'<styleSheet xmlns="{_MAIN}">'
        f'<numFmts count="2"><numFmt numFmtId="164" formatCode="{DATE_FORMAT}"/>'
        f'<numFmt numFmtId="165" formatCode="{STAMP_FORMAT}"/></numFmts>'
        '<fonts count="3"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font>'
        '<font><b/><sz val="11"/><name val="Calibri"/><family val="2"/></font>'
        '<font><b/><sz val="14"/><name val="Calibri"/><family val="2"/></font></fonts>'
        '<fills count="2"><fill><patternFill patternType="none"/></fill>'
        '<fill><patternFill patternType="gray125"/></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
        '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
        '<cellXfs count="6">'
        '<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
        '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
        '<xf numFmtId="0" fontId="2" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
        '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        '<xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1" applyAlignment="1">'
        '<alignment vertical="top" wrapText="1"/></xf>'
        "</cellXfs>"
        '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
        "</styleSheet>",
    }
