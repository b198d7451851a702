"""The weekly narrative: the report a youth union sends upward, written from the figures.

One structure (headings, sentences and tables, Vietnamese with English beside it) rendered twice:
Markdown for pasting into a message, and a self-contained HTML page for printing.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import date, datetime

from metrics.closing import NarrativeInputs
from metrics.schemas import Freshness, ReportRow
from metrics.service import COLUMN_LABELS, HEADLINE_KEYS, LOCAL_TZ

RANKED_BY = "people_supported"
SHOWN = 3
STATUS_LABELS = {
    "done": "đã đạt / done",
    "not_started": "chưa bắt đầu / not started",
    "on_track": "đúng tiến độ / on track",
    "at_risk": "có nguy cơ / at risk",
    "behind": "chậm / behind",
}
MAX_ADJUSTMENTS_LISTED = 20


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Narrative:
    title: str
    sections: list[Section]


def _label(key: str) -> str:
    vi, en = COLUMN_LABELS[key]
    return f"{vi} / {en}"


def _signed(n: int | None) -> str:
    return "—" if n is None else f"{n:+,}".replace(",", ".")


def _n(n: float | None) -> str:
    if n is None:
        return "—"
    return f"{round(n):,}".replace(",", ".")


def _dd(d: date) -> str:
    return d.strftime("%d/%m/%Y")


def build(inputs: NarrativeInputs, freshness: Freshness, generated_at: datetime) -> Narrative:
    table, risks, figures, completeness = inputs.table, inputs.risks, inputs.figures, inputs.completeness
    period = inputs.period.id
    totals = table.totals
    title = f"Báo cáo tuần {period} / Weekly report {period}: {table.unit_name} ({_dd(table.from_)} - {_dd(table.to)})"
    sections = []

    overview = Section("Tổng quan tuần / The week in figures")
    overview.header = [
        "Chỉ tiêu / Indicator",
        "Tuần này / This week",
        "Tuần trước / Previous week",
        "Thay đổi / Change",
    ]
    for key in HEADLINE_KEYS:
        overview.rows.append(
            [_label(key), _n(totals.figures[key]), _n(totals.previous[key]), _signed(totals.change[key])]
        )
    people, change = totals.figures[RANKED_BY], totals.change[RANKED_BY]
    overview.lines.append(
        f"Trong tuần, {_n(people)} người dân được hỗ trợ ({_signed(change)} so với tuần trước). / "
        f"This week {_n(people)} people were supported ({_signed(change)} on the previous week)."
    )
    sections.append(overview)

    ranking = Section("Đơn vị dẫn đầu và chậm / Leading and lagging units")
    units = [r for r in table.rows if r.row == "unit" and r.unit_status == "active"]
    ranked = sorted(units, key=lambda r: (-r.figures[RANKED_BY], r.unit))
    ranking.header = ["Đơn vị / Unit", _label(RANKED_BY), "Thay đổi / Change"]
    if ranked:
        shown: list[ReportRow] = ranked[:SHOWN] + [r for r in ranked[-SHOWN:] if r not in ranked[:SHOWN]]
        ranking.rows = [[r.name, _n(r.figures[RANKED_BY]), _signed(r.change[RANKED_BY])] for r in shown]
        ranking.lines.append(f"Dẫn đầu / Leading: {ranked[0].name}; chậm nhất / lagging: {ranked[-1].name}.")
    else:
        ranking.lines.append("Không có đơn vị trực thuộc. / No child units.")
    for risk in risks:
        lagging = [u.unit_name or u.unit_code for u in risk.units_at_risk[:SHOWN]]
        if lagging:
            ranking.lines.append(
                f"Chiến dịch {risk.name}: đơn vị có nguy cơ không đạt chỉ tiêu / units at risk of missing "
                f"targets: {', '.join(lagging)}."
            )
    sections.append(ranking)

    projection = Section("Dự báo cuối chiến dịch / Projected end-of-campaign figures")
    projection.header = [
        "Chiến dịch / Campaign",
        "Chỉ tiêu / Indicator",
        "Đơn vị / Unit",
        "Mục tiêu / Target",
        "Hiện tại / Actual",
        "Dự báo / Projected",
        "Trạng thái / Status",
    ]
    for risk in risks:
        for t in risk.targets:
            projection.rows.append(
                [
                    risk.name,
                    str(t.indicator),
                    t.unit_name or t.unit_code,
                    _n(t.target),
                    _n(t.actual),
                    _n(t.projected),
                    STATUS_LABELS.get(str(t.status), str(t.status)),
                ]
            )
    if not projection.rows:
        projection.lines.append("Không có chiến dịch trong tuần. / No campaign ran this week.")
    sections.append(projection)

    late = Section("Số liệu đến muộn / Late data received")
    if figures is None:
        late.lines.append(
            "Tuần chưa được chốt: mọi số liệu đều là số liệu trực tiếp. / The week is not closed: every figure is live."
        )
    elif not figures.adjustments:
        late.lines.append("Không có số liệu đến sau khi chốt. / Nothing arrived after the close.")
    else:
        late.lines.append(
            f"{len(figures.adjustments)} bản ghi đến hoặc thay đổi sau khi chốt lúc "
            f"{figures.closed_at.astimezone(LOCAL_TZ):%d/%m/%Y %H:%M}. / {len(figures.adjustments)} records "
            "arrived or changed after the close."
        )
        late.header = [
            "Chỉ tiêu / Indicator",
            "Đã báo cáo / Reported",
            "Điều chỉnh / Revised",
            "Chênh lệch / Difference",
        ]
        for key in HEADLINE_KEYS:
            if figures.difference.get(key):
                late.rows.append(
                    [
                        _label(key),
                        _n(figures.reported.get(key)),
                        _n(figures.revised.get(key)),
                        _signed(figures.difference.get(key)),
                    ]
                )
        for a in figures.adjustments[:MAX_ADJUSTMENTS_LISTED]:
            moved = ", ".join(f"{k} {_signed(v)}" for k, v in a.changes.items() if k in HEADLINE_KEYS)
            late.lines.append(
                f"- {a.arrived_at.astimezone(LOCAL_TZ):%d/%m %H:%M} {a.event_type.rsplit('.', 2)[-2]} "
                f"{a.subject or ''} ({', '.join(a.units)}): {moved or '—'}"
            )
    for week in inputs.earlier:
        moved = ", ".join(f"{_label(k)} {_signed(v)}" for k, v in week.difference.items() if k in HEADLINE_KEYS)
        late.lines.append(
            f"- Tuần {week.period} (đã chốt / closed): {week.records} bản ghi đến muộn / late records: {moved or '—'}"
        )
    sections.append(late)

    reporting = Section("Tình hình báo cáo / Reporting completeness")
    rate = "—" if completeness.reporting_rate is None else f"{completeness.reporting_rate:.1f}%"
    reporting.lines.append(
        f"{completeness.teams_reported}/{completeness.teams_expected} đội hình đã gửi số liệu ({rate}); "
        f"{completeness.teams_late} gửi muộn. / {completeness.teams_reported} of {completeness.teams_expected} "
        f"teams sent records ({rate}); {completeness.teams_late} late."
    )
    if completeness.units_not_closed:
        reporting.lines.append(f"Đơn vị chưa chốt / Units not closed: {', '.join(completeness.units_not_closed)}.")
    sections.append(reporting)

    fresh = Section("Độ mới của số liệu / Freshness of the figures")
    for topic in freshness.topics:
        newest = (
            "—" if topic.last_event_time is None else f"{topic.last_event_time.astimezone(LOCAL_TZ):%d/%m/%Y %H:%M:%S}"
        )
        fresh.lines.append(f"- {topic.topic}: sự kiện mới nhất / newest event {newest}, tồn / lag {_n(topic.lag)}")
    fresh.lines.append(f"Lập lúc / Generated at {generated_at.astimezone(LOCAL_TZ):%d/%m/%Y %H:%M}.")
    sections.append(fresh)
    return Narrative(title=title, sections=sections)


def to_markdown(n: Narrative) -> str:
    out = [f"# {n.title}", ""]
    for s in n.sections:
        out += [f"## {s.title}", ""]
        out += [*s.lines, ""] if s.lines else []
        if s.rows:
            out.append("| " + " | ".join(s.header) + " |")
            out.append("|" + "---|" * len(s.header))
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in s.rows]
            out.append("")
    return "\n".join(out)


def to_html(n: Narrative) -> str:
    e = html.escape
    parts = [
        '<!doctype html><html lang="vi"><head><meta charset="utf-8">',
        f"<title>{e(n.title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #bbb;padding:.25rem .5rem}"
        "td{text-align:right}td:first-child{text-align:left}th{background:#eef}</style></head><body>",
        f"<h1>{e(n.title)}</h1>",
    ]
    for s in n.sections:
        parts.append(f"<h2>{e(s.title)}</h2>")
        items = [line for line in s.lines if line.startswith("- ")]
        for line in s.lines:
            if not line.startswith("- "):
                parts.append(f"<p>{e(line)}</p>")
        if items:
            parts.append("<ul>" + "".join(f"<li>{e(i[2:])}</li>" for i in items) + "</ul>")
        if s.rows:
            parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in s.header) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in s.rows]
            parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "".join(parts)
