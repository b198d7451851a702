"""Reading the projection: summaries, report tables, campaign progress and risk, time series and freshness.

Every read resolves the active generation first (kept for a second, see ``MetricsStore``), reads
the unit's one counter document by ``_id`` and sums its days here (FerretDB's aggregation is too
limited to do it server-side).
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from metrics.projection import CATALOGUE, STATE_DAY, IndicatorSpec
from metrics.repository import MetricsStore, ProjectionRepository, path_of, row_owners, subtree_of
from metrics.schemas import (
    CampaignProgress,
    CampaignRisk,
    Freshness,
    Interval,
    Point,
    ReportColumn,
    ReportRow,
    ReportRows,
    ReportTable,
    RiskStatus,
    Summary,
    TargetProgress,
    TargetRisk,
    Timeseries,
    TopicFreshness,
    UnitAtRisk,
)
from shared.auth import Principal, Role, require_scope
from shared.errors import Forbidden, InvalidInput, NotFound

FIRST_DAY = "0000-01-01"
LAST_DAY = "9999-12-31"
MAX_SERIES_DAYS = 800
MAX_REPORT_DAYS = 800
LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")


def local_today() -> date:
    """Today's calendar date in Asia/Ho_Chi_Minh, the date every indicator is counted by."""
    return datetime.now(LOCAL_TZ).date()


@dataclass
class Totals:
    """Counter fields summed over a unit's dated documents, and its current-state counters."""

    dated: dict[str, int]
    state: dict[str, int]

    def of(self, spec: IndicatorSpec) -> dict[str, int]:
        return spec.values(self.dated if spec.dated else self.state)

    def add(self, doc: Mapping[str, Any]) -> None:
        """Add one ``{day, c}`` row."""
        target = self.state if doc["day"] == STATE_DAY else self.dated
        for field, value in (doc.get("c") or {}).items():
            target[field] = target.get(field, 0) + int(value)


def add_up(docs: Iterable[Mapping[str, Any]]) -> Totals:
    totals = Totals({}, {})
    for doc in docs:
        totals.add(doc)
    return totals


def figures(totals: Totals) -> dict[str, Any]:
    """The indicator part of a summary: split indicators as dicts, single-valued ones as ints."""
    out: dict[str, Any] = {}
    for name, spec in CATALOGUE.items():
        values = totals.of(spec)
        out[name] = values if spec.keys else values["total"]
    return out


def window_days(starts_on: date, ends_on: date, today: date) -> tuple[int, int]:
    """``(days elapsed, days in window)``, with elapsed counting today and capped to the window."""
    total = (ends_on - starts_on).days + 1
    elapsed = min(max((today - starts_on).days + 1, 0), total)
    return elapsed, total


def projected(actual: int, spec: IndicatorSpec, elapsed: int, total: int) -> float:
    if not spec.dated:
        return float(actual)  # current state does not accumulate over the window
    if elapsed <= 0:
        return 0.0
    return round(actual / elapsed * total, 1)


def bucket_start(day: date, interval: Interval) -> date:
    return day - timedelta(days=day.weekday()) if interval is Interval.week else day


def series(
    docs: Iterable[Mapping[str, Any]], spec: IndicatorSpec, interval: Interval, first: date, last: date
) -> list[Point]:
    """Contiguous buckets from ``first`` to ``last`` (weeks start on Monday), empty ones as zero."""
    per_bucket: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for doc in docs:
        if doc["day"] == STATE_DAY:
            continue
        start = bucket_start(date.fromisoformat(doc["day"]), interval)
        for field, value in (doc.get("c") or {}).items():
            per_bucket[start][field] += int(value)
    step = timedelta(days=7 if interval is Interval.week else 1)
    points = []
    start = bucket_start(first, interval)
    while start <= last:
        values = spec.values(per_bucket.get(start, {}))
        total = values.pop("total")
        points.append(Point(start=start, value=total, by=values))
        start += step
    return points


def resolve_unit(
    tree: Mapping[str, Mapping[str, Any]], principal: Principal, code: str | None, *, prefer_root: bool = False
) -> str:
    """The unit a read is about (default: the caller's, or the province for admins), in the caller's scope."""
    if code is None:
        roots = sorted(c for c, u in tree.items() if u.get("parent_code") is None)
        root = roots[0] if roots else None
        if principal.role is Role.admin or (
            prefer_root and root is not None and principal.in_scope(path_of(tree, root))
        ):
            if root is None:
                raise NotFound("no units are known yet", slug="unit-not-found")
            code = root
        elif principal.unit is None:
            raise Forbidden("your token names no unit; pass ?unit=", slug="out-of-scope")
        else:
            code = principal.unit
    if code not in tree:
        raise NotFound(f"unit {code} is not known", slug="unit-not-found")
    require_scope(principal, path_of(tree, code), "unit")
    return code


def unit_name(tree: Mapping[str, Mapping[str, Any]], code: str) -> str:
    return unicodedata.normalize("NFC", str(tree.get(code, {}).get("name") or code))


# --- the report table ---------------------------------------------------------------------------------
# Column headers of a report, Vietnamese first: the union's reports are read in Vietnamese.
COLUMN_LABELS: dict[str, tuple[str, str]] = {
    "teams.permanent": ("Đội hình thường trực", "Permanent teams"),
    "teams.mobile": ("Đội hình lưu động", "Mobile teams"),
    "teams.literacy": ("Tổ công nghệ số cộng đồng", "Digital-literacy teams"),
    "teams.campaign": ("Đội hình chiến dịch", "Campaign teams"),
    "teams.total": ("Tổng số đội hình", "Teams, total"),
    "volunteers": ("Tình nguyện viên", "Volunteers"),
    "households_visited": ("Hộ gia đình được thăm", "Households visited"),
    "people_supported": ("Người dân được hỗ trợ", "People supported"),
    "vneid_installs": ("Lượt cài đặt VNeID", "VNeID installs"),
    "online_applications.l3": ("Hồ sơ trực tuyến mức độ 3", "Online applications, level 3"),
    "online_applications.l4": ("Hồ sơ trực tuyến mức độ 4", "Online applications, level 4"),
    "online_applications.total": ("Tổng hồ sơ trực tuyến", "Online applications, total"),
    "courses.youth_children": ("Lớp học cho thanh thiếu nhi", "Courses, youth and children"),
    "courses.elderly_middle_aged": ("Lớp học cho người cao tuổi, trung niên", "Courses, elderly and middle-aged"),
    "courses.general": ("Lớp học chung", "Courses, general"),
    "courses.total": ("Tổng số lớp học", "Courses, total"),
    "course_participants.youth_children": ("Học viên thanh thiếu nhi", "Participants, youth and children"),
    "course_participants.elderly_middle_aged": (
        "Học viên cao tuổi, trung niên",
        "Participants, elderly and middle-aged",
    ),
    "course_participants.general": ("Học viên lớp chung", "Participants, general"),
    "course_participants.total": ("Tổng số học viên", "Participants, total"),
    "course_completions": ("Học viên hoàn thành", "Course completions"),
    "outreach_posts.fanpage": ("Tin bài trên fanpage", "Fan-page posts"),
    "outreach_posts.newspaper": ("Bài báo", "Newspaper articles"),
    "outreach_posts.visual": ("Sản phẩm trực quan", "Visual posts"),
    "outreach_posts.total": ("Tổng số tin bài tuyên truyền", "Outreach posts, total"),
    "people_supported_by_area.remote": ("Người dân được hỗ trợ ở vùng sâu, vùng xa", "People supported, remote areas"),
    "people_supported_by_area.border": ("Người dân được hỗ trợ ở khu vực biên giới", "People supported, border areas"),
    "people_supported_by_area.island": ("Người dân được hỗ trợ ở hải đảo", "People supported, island areas"),
    "people_supported_by_area.rural": ("Người dân được hỗ trợ ở nông thôn", "People supported, rural areas"),
    "people_supported_by_area.urban": ("Người dân được hỗ trợ ở đô thị", "People supported, urban areas"),
    "people_supported_by_area.total": ("Người dân được hỗ trợ theo địa bàn", "People supported by area, total"),
    "households_by_area.remote": ("Hộ gia đình được thăm ở vùng sâu, vùng xa", "Households visited, remote areas"),
    "households_by_area.border": ("Hộ gia đình được thăm ở khu vực biên giới", "Households visited, border areas"),
    "households_by_area.island": ("Hộ gia đình được thăm ở hải đảo", "Households visited, island areas"),
    "households_by_area.rural": ("Hộ gia đình được thăm ở nông thôn", "Households visited, rural areas"),
    "households_by_area.urban": ("Hộ gia đình được thăm ở đô thị", "Households visited, urban areas"),
    "households_by_area.total": ("Hộ gia đình được thăm theo địa bàn", "Households visited by area, total"),
    "people_supported_by_group.elderly": ("Người cao tuổi được hỗ trợ", "Elderly people supported"),
    "people_supported_by_group.women": ("Phụ nữ được hỗ trợ", "Women supported"),
    "people_supported_by_group.veterans": ("Cựu chiến binh được hỗ trợ", "Veterans supported"),
    "people_supported_by_group.total": (
        "Tổng lượt hỗ trợ theo nhóm đối tượng (một người có thể thuộc nhiều nhóm)",
        "People supported by group, total (one person may be in several groups)",
    ),
    "vneid_activations": ("Lượt kích hoạt VNeID", "VNeID activations"),
    "courses_by_mode.in_person": ("Lớp học trực tiếp", "Courses, in person"),
    "courses_by_mode.online": ("Lớp học trực tuyến", "Courses, online"),
    "courses_by_mode.total": ("Tổng số lớp học theo hình thức", "Courses by mode, total"),
    "course_participants_by_mode.in_person": ("Học viên lớp trực tiếp", "Participants, in-person courses"),
    "course_participants_by_mode.online": ("Học viên lớp trực tuyến", "Participants, online courses"),
    "course_participants_by_mode.total": ("Tổng số học viên theo hình thức", "Participants by mode, total"),
    "volunteers_by_role.union_member": ("Tình nguyện viên là đoàn viên", "Volunteers, union members"),
    "volunteers_by_role.youth": ("Tình nguyện viên là thanh niên", "Volunteers, youth"),
    "volunteers_by_role.student": ("Tình nguyện viên là học sinh, sinh viên", "Volunteers, students"),
    "volunteers_by_role.lecturer": ("Tình nguyện viên là giảng viên trẻ", "Volunteers, lecturers"),
    "volunteers_by_role.total": (
        "Tổng số vai trò của tình nguyện viên (một người có thể có nhiều vai trò)",
        "Volunteers by role, total (one volunteer may have several roles)",
    ),
    "volunteers_by_skill.it": ("Tình nguyện viên có kỹ năng công nghệ thông tin", "Volunteers with IT skills"),
    "volunteers_by_skill.vneid": ("Tình nguyện viên hướng dẫn VNeID", "Volunteers with VNeID guidance skills"),
    "volunteers_by_skill.teaching": ("Tình nguyện viên có kỹ năng giảng dạy", "Volunteers with teaching skills"),
    "volunteers_by_skill.media": ("Tình nguyện viên có kỹ năng truyền thông", "Volunteers with media skills"),
    "volunteers_by_skill.total": (
        "Tổng số kỹ năng của tình nguyện viên (một người có thể có nhiều kỹ năng)",
        "Volunteers by skill, total (one volunteer may have several skills)",
    ),
    "team_members.permanent": ("Thành viên đội hình thường trực", "Members of permanent teams"),
    "team_members.mobile": ("Thành viên đội hình lưu động", "Members of mobile teams"),
    "team_members.literacy": ("Thành viên tổ công nghệ số cộng đồng", "Members of digital-literacy teams"),
    "team_members.campaign": ("Thành viên đội hình chiến dịch", "Members of campaign teams"),
    "team_members.total": ("Tổng số thành viên đội hình", "Team members, total"),
}
# The dated figures a weekly report leads with (the narrative's table, the campaign page's first cards).
HEADLINE_KEYS = (
    "households_visited",
    "people_supported",
    "vneid_installs",
    "vneid_activations",
    "online_applications.total",
    "courses.total",
    "course_participants.total",
    "course_completions",
    "outreach_posts.total",
)
# (flattened key, indicator, split key): the summary's indicators in its own order.
FLAT_KEYS: tuple[tuple[str, IndicatorSpec, str], ...] = tuple(
    (f"{name}.{key}" if spec.keys else name, spec, key)
    for name, spec in CATALOGUE.items()
    for key in ((*spec.keys, "total") if spec.keys else ("total",))
)
REPORT_COLUMNS: tuple[ReportColumn, ...] = tuple(
    ReportColumn(key=key, label_vi=COLUMN_LABELS[key][0], label_en=COLUMN_LABELS[key][1], dated=spec.dated)
    for key, spec, _ in FLAT_KEYS
)
TOTAL_NAME = "Tổng cộng / Total"
DIRECT_SUFFIX = " (trực tiếp / direct)"


# FLAT_KEYS grouped by indicator, in the same order: each indicator's values are read once per row.
_FLAT_BY_SPEC: tuple[tuple[IndicatorSpec, tuple[tuple[str, str], ...]], ...] = tuple(
    (spec, tuple((key, split) for key, s, split in FLAT_KEYS if s is spec)) for spec in CATALOGUE.values()
)


def flat_figures(totals: Totals) -> dict[str, int]:
    """A summary's indicators flattened: ``households_visited``, ``teams.mobile``, ..."""
    out: dict[str, int] = {}
    for spec, keys in _FLAT_BY_SPEC:
        values = totals.of(spec)
        for key, split in keys:
            out[key] = values[split]
    return out


def last_full_week(today: date) -> tuple[date, date]:
    """The Monday-Sunday week before the one ``today`` is in."""
    monday = today - timedelta(days=today.weekday())
    return monday - timedelta(days=7), monday - timedelta(days=1)


def previous_period(first: date, last: date) -> tuple[date, date]:
    """The period of equal length that ends the day before ``first``."""
    try:
        before = first - timedelta(days=1)
        return before - (last - first), before
    except OverflowError:
        raise InvalidInput("the period starts too early to have a previous one") from None


def report_row(
    unit: str,
    name: str,
    kind: str,
    status: str,
    current: Sequence[Mapping[str, Any]],
    before: Iterable[Mapping[str, Any]],
) -> ReportRow:
    return row_of(unit, name, kind, status, add_up(current), add_up(before))


def row_of(unit: str, name: str, kind: str, status: str, now: Totals, then: Totals, **team: Any) -> ReportRow:
    """A report row from the sums of its period and of the previous one (``team``: a team row's fields)."""
    figures = flat_figures(now)
    earlier = flat_figures(then)
    # Current-state indicators keep no history: their previous value is unknown, not equal to now.
    previous = {key: earlier[key] if spec.dated else None for key, spec, _ in FLAT_KEYS}
    change = {key: None if value is None else figures[key] - value for key, value in previous.items()}
    return ReportRow.model_validate(
        {
            "unit": unit,
            "name": name,
            "row": kind,
            "unit_status": status,
            "figures": figures,
            "previous": previous,
            "change": change,
            **team,
        }
    )


@dataclass
class StreamedReport:
    """A report table whose rows are made one at a time as they are sent: a province's table of teams
    has thousands of rows, each three maps of every column (ADR 0007). ``head`` holds every other
    field (its ``rows`` is empty)."""

    head: ReportTable
    rows: Iterator[ReportRow]

    def collected(self) -> ReportTable:
        return self.head.model_copy(update={"rows": list(self.rows)})


UNATTRIBUTED_NAME = "Không gắn với đội nào của đơn vị / Not attributed to a team of the unit"


class RowSums:
    """What the rows seen so far add up to, key by key (an unknown value counts as 0)."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, int]] = {"figures": {}, "previous": {}, "change": {}}

    def add(self, row: ReportRow) -> None:
        for pick, sums in self.sums.items():
            for key, value in getattr(row, pick).items():
                sums[key] = sums.get(key, 0) + int(value or 0)


def unattributed_row(unit: str, totals: ReportRow, teams: RowSums) -> ReportRow:
    """The totals minus every team row, key by key (None stays None)."""

    def minus(key: str, pick: str) -> int | None:
        whole = getattr(totals, pick)[key]
        if whole is None:
            return None
        return int(whole) - teams.sums[pick].get(key, 0)

    keys = list(totals.figures)
    return ReportRow(
        unit=unit,
        name=UNATTRIBUTED_NAME,
        row="unattributed",
        unit_status=totals.unit_status,
        figures={k: int(minus(k, "figures") or 0) for k in keys},
        previous={k: minus(k, "previous") for k in keys},
        change={k: minus(k, "change") for k in keys},
    )


def team_rows(
    unit: str,
    totals: ReportRow,
    teams: Mapping[str, Mapping[str, Any]],
    now: Mapping[str, Totals],
    then: Mapping[str, Totals],
) -> Iterator[ReportRow]:
    """One row per team by unit and code (active ones always, inactive ones when they have figures),
    then the row of what no team accounts for."""
    empty = Totals({}, {})
    sums = RowSums()
    for code in sorted(teams, key=lambda c: (teams[c].get("unit_code", ""), c)):
        team = teams[code]
        active = bool(team.get("active", True))
        row = row_of(
            team.get("unit_code", ""),
            team.get("name", code),
            "team",
            "active",
            now.get(code, empty),
            then.get(code, empty),
            team=code,
            team_kind=team.get("kind"),
            team_active=active,
        )
        if not active and not any([*row.figures.values(), *(v for v in row.previous.values() if v)]):
            continue
        sums.add(row)
        yield row
    yield unattributed_row(unit, totals, sums)


# --- targets at risk ----------------------------------------------------------------------------------
AT_RISK_SHARE = Fraction(4, 5)
LAST_DAYS = 7


@dataclass(frozen=True)
class Assessment:
    """Where one target stands on ``today`` and where it is heading (see :class:`TargetRisk`)."""

    actual: int
    days_elapsed: int
    days_left: int
    pace_needed: float | None
    pace_last_7_days: float | None
    projected: float
    projected_ratio: float | None
    status: RiskStatus


def assess(
    spec: IndicatorSpec,
    target: int,
    docs: Iterable[Mapping[str, Any]],
    starts_on: date,
    ends_on: date,
    today: date,
) -> Assessment:
    """Assess a target from the counter rows of its unit's subtree (rows outside the window are ignored).

    Actual counts the window up to ``today``; the projection adds the last 7 days' pace over the days
    left. Exact fractions decide the status, so 80% of a target is at risk, not behind by a rounding.
    """
    elapsed, total = window_days(starts_on, ends_on, today)
    left = total - elapsed
    last = min(today, ends_on)
    week_first = max(starts_on, last - timedelta(days=LAST_DAYS - 1))
    lo, hi, week_lo = starts_on.isoformat(), last.isoformat(), week_first.isoformat()
    counted = [d for d in docs if d["day"] == STATE_DAY or lo <= d["day"] <= hi]
    actual = add_up(counted).of(spec)["total"]
    pace: Fraction | None = None
    projection = Fraction(actual)
    if spec.dated:
        week_days = (last - week_first).days + 1
        week = add_up(d for d in counted if d["day"] != STATE_DAY and d["day"] >= week_lo).of(spec)["total"]
        pace = Fraction(week, week_days) if week_days > 0 else Fraction(0)
        projection += pace * left
    if actual >= target:
        needed: Fraction | None = Fraction(0)
    else:
        needed = Fraction(target - actual, left) if left else None
    if actual >= target:
        status = RiskStatus.done
    elif elapsed == 0:
        status = RiskStatus.not_started
    elif projection >= target:
        status = RiskStatus.on_track
    elif projection >= AT_RISK_SHARE * target:
        status = RiskStatus.at_risk
    else:
        status = RiskStatus.behind
    return Assessment(
        actual=actual,
        days_elapsed=elapsed,
        days_left=left,
        pace_needed=None if needed is None else round(float(needed), 2),
        pace_last_7_days=None if pace is None else round(float(pace), 2),
        projected=round(float(projection), 1),
        projected_ratio=round(float(projection / target), 3) if target else None,
        status=status,
    )


def units_at_risk(targets: Iterable[TargetRisk]) -> list[UnitAtRisk]:
    """Units with a target at risk or behind, the worst projected / target first."""
    worst_first = sorted(
        (t for t in targets if t.status in (RiskStatus.at_risk, RiskStatus.behind) and t.projected_ratio is not None),
        key=lambda t: (t.projected_ratio, t.unit_code, t.indicator),
    )
    out: dict[str, UnitAtRisk] = {}
    for t in worst_first:
        if t.unit_code in out:
            out[t.unit_code].indicators.append(t.indicator)
        else:
            assert t.projected_ratio is not None
            out[t.unit_code] = UnitAtRisk(
                unit_code=t.unit_code,
                unit_name=t.unit_name,
                status=t.status,
                projected_ratio=t.projected_ratio,
                indicators=[t.indicator],
            )
    return list(out.values())


class MetricsService:
    def __init__(self, store: MetricsStore) -> None:
        self._store = store
        self.meta = store.meta

    async def projection(self) -> ProjectionRepository:
        """The active generation's collections, resolved at most a second ago."""
        return await self._store.projection()

    async def _unit(
        self, repo: ProjectionRepository, principal: Principal, code: str | None, *, prefer_root: bool = False
    ) -> str:
        return resolve_unit(await repo.tree(), principal, code, prefer_root=prefer_root)

    async def summary(
        self,
        principal: Principal,
        *,
        unit: str | None,
        campaign: str | None,
        first: date | None,
        last: date | None,
    ) -> Summary:
        repo = await self.projection()
        if campaign is not None:
            doc = await repo.campaign(campaign)
            if doc is None:
                raise NotFound(f"campaign {campaign} is not known", slug="campaign-not-found")
            first = first or date.fromisoformat(doc["starts_on"])
            last = last or date.fromisoformat(doc["ends_on"])
        if first and last and first > last:
            raise InvalidInput("from must not be after to")
        code = await self._unit(repo, principal, unit, prefer_root=campaign is not None)
        if first is None and last is None:
            docs = await repo.counters_all_time(code)
        else:
            lo = first.isoformat() if first else FIRST_DAY
            hi = last.isoformat() if last else LAST_DAY
            docs = await repo.counters_in_range(code, lo, hi)
        unit_doc = await repo.unit(code) or {}
        body = {
            "as_of": datetime.now(UTC),
            "scope": {
                "unit": code,
                "from_": first,
                "to": last,
                "campaign": campaign,
                "unit_status": unit_doc.get("status", "active"),
                "merged_into": unit_doc.get("merged_into"),
                "successors": unit_doc.get("successors", []),
            },
            **figures(add_up(docs)),
        }
        return Summary.model_validate(body)

    async def campaign_actuals(
        self, repo: ProjectionRepository, campaign: Mapping[str, Any], units: Iterable[str]
    ) -> dict[str, Totals]:
        """Per unit, its totals over the campaign window (one counters query for all of them)."""
        tree = await repo.tree()
        below = {code: set(subtree_of(tree, code)) for code in units}
        everything = sorted(set().union(*below.values())) if below else []
        docs = await repo.counters_of(everything, campaign["starts_on"], campaign["ends_on"]) if everything else []
        return {code: add_up(d for d in docs if d["unit"] in subtree) for code, subtree in below.items()}

    async def progress(self, principal: Principal, code: str, today: date) -> CampaignProgress:
        repo = await self.projection()
        campaign = await repo.campaign(code)
        if campaign is None:
            raise NotFound(f"campaign {code} is not known", slug="campaign-not-found")
        starts_on, ends_on = date.fromisoformat(campaign["starts_on"]), date.fromisoformat(campaign["ends_on"])
        elapsed, total = window_days(starts_on, ends_on, today)
        visible = []
        for target in campaign.get("targets", []):
            unit = await repo.unit(target["unit_code"])
            if principal.role is Role.admin or (unit is not None and principal.in_scope(unit["path"])):
                visible.append(target)
        if campaign.get("targets") and not visible:
            raise Forbidden(f"no target of campaign {code} lies in your unit scope", slug="out-of-scope")
        actuals = await self.campaign_actuals(repo, campaign, [t["unit_code"] for t in visible])
        rows = []
        for target in visible:
            spec = CATALOGUE[target["indicator"]]
            actual = actuals[target["unit_code"]].of(spec)["total"]
            value = int(target["value"])
            rows.append(
                TargetProgress(
                    indicator=target["indicator"],
                    unit_code=target["unit_code"],
                    target=value,
                    actual=actual,
                    percent=round(actual / value * 100, 1) if value else None,
                    projected=projected(actual, spec, elapsed, total),
                    merged_from=target.get("merged_from", []),
                )
            )
        return CampaignProgress(
            campaign=code,
            name=campaign.get("name", code),
            starts_on=starts_on,
            ends_on=ends_on,
            as_of=today,
            days_elapsed=elapsed,
            days_total=total,
            targets=rows,
        )

    async def report_stream(
        self,
        principal: Principal,
        *,
        unit: str | None,
        campaign: str | None,
        first: date | None,
        last: date | None,
        today: date,
        rows_by: ReportRows = ReportRows.units,
    ) -> StreamedReport:
        """The unit's direct children (and its own records), or the teams of its subtree, by every
        indicator, with the previous period.

        One read of the tree and one counters query for the whole subtree over both periods; rows are
        added up here by the child each unit lies under now (or read from the teams' own counters).
        Every read and every check is done before this returns, so a failure is a problem, never a
        table cut short; only the rows' own making is left to the caller's pace.
        """
        repo = await self.projection()
        if campaign is not None:
            doc = await repo.campaign(campaign)
            if doc is None:
                raise NotFound(f"campaign {campaign} is not known", slug="campaign-not-found")
            first = first or date.fromisoformat(doc["starts_on"])
            last = last or date.fromisoformat(doc["ends_on"])
        elif first is None and last is None:
            first, last = last_full_week(today)
        if first is None or last is None:
            raise InvalidInput("give both from and to, or neither for the last full week")
        if first > last:
            raise InvalidInput("from must not be after to")
        if (last - first).days >= MAX_REPORT_DAYS:
            raise InvalidInput(f"a report spans at most {MAX_REPORT_DAYS} days")
        previous_first, previous_last = previous_period(first, last)
        tree = await repo.tree()
        code = resolve_unit(tree, principal, unit, prefer_root=campaign is not None)
        owners = row_owners(tree, code)
        docs = await repo.counters_of(list(owners), previous_first.isoformat(), last.isoformat())

        lo, hi = first.isoformat(), last.isoformat()
        current: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        before: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for doc in docs:
            in_period = doc["day"] == STATE_DAY or lo <= doc["day"] <= hi
            (current if in_period else before)[owners[doc["unit"]]].append(doc)

        def status(c: str) -> str:
            return str(tree[c].get("status", "active"))

        name = unit_name(tree, code)
        everything_now = [d for docs_of in current.values() for d in docs_of]
        everything_before = [d for docs_of in before.values() for d in docs_of]
        totals = report_row(code, TOTAL_NAME, "total", status(code), everything_now, everything_before)
        head = ReportTable(
            as_of=datetime.now(UTC),
            unit=code,
            unit_name=name,
            campaign=campaign,
            from_=first,
            to=last,
            previous_from=previous_first,
            previous_to=previous_last,
            columns=list(REPORT_COLUMNS),
            rows_by=rows_by,
            rows=[],
            totals=totals,
        )
        if rows_by is ReportRows.teams:
            teams = {t["_id"]: t for t in await repo.teams_of(list(owners))}
            now: dict[str, Totals] = defaultdict(lambda: Totals({}, {}))
            then: dict[str, Totals] = defaultdict(lambda: Totals({}, {}))
            async for doc in repo.team_counters(list(teams), previous_first.isoformat(), last.isoformat()):
                in_period = doc["day"] == STATE_DAY or lo <= doc["day"] <= hi
                (now if in_period else then)[doc["team"]].add(doc)
            return StreamedReport(head, team_rows(code, totals, teams, now, then))
        rows = []
        own = [*current[code], *before[code]]
        if any(value for doc in own for value in doc["c"].values()):
            rows.append(report_row(code, name + DIRECT_SUFFIX, "direct", status(code), current[code], before[code]))
        children = sorted(c for c, u in tree.items() if u.get("parent_code") == code and c != code)
        for child in children:
            rows.append(report_row(child, unit_name(tree, child), "unit", status(child), current[child], before[child]))
        return StreamedReport(head, iter(rows))

    async def campaign_risk(self, principal: Principal, code: str, today: date) -> CampaignRisk:
        """Each target in the caller's scope: its pace, where that pace leads by ends_on, and its status."""
        repo = await self.projection()
        campaign = await repo.campaign(code)
        if campaign is None:
            raise NotFound(f"campaign {code} is not known", slug="campaign-not-found")
        starts_on, ends_on = date.fromisoformat(campaign["starts_on"]), date.fromisoformat(campaign["ends_on"])
        tree = await repo.tree()
        targets = campaign.get("targets", [])
        visible = [
            t
            for t in targets
            if principal.role is Role.admin
            or (t["unit_code"] in tree and principal.in_scope(path_of(tree, t["unit_code"])))
        ]
        if targets and not visible:
            raise Forbidden(f"no target of campaign {code} lies in your unit scope", slug="out-of-scope")
        below = {t["unit_code"]: set(subtree_of(tree, t["unit_code"])) for t in visible}
        units = sorted(set().union(*below.values()))
        last = min(today, ends_on)
        docs = await repo.counters_of(units, starts_on.isoformat(), last.isoformat()) if units else []
        rows = []
        for t in visible:
            subtree = below[t["unit_code"]]
            found = assess(
                CATALOGUE[t["indicator"]],
                int(t["value"]),
                [d for d in docs if d["unit"] in subtree],
                starts_on,
                ends_on,
                today,
            )
            rows.append(
                TargetRisk(
                    indicator=t["indicator"],
                    unit_code=t["unit_code"],
                    unit_name=unit_name(tree, t["unit_code"]) if t["unit_code"] in tree else None,
                    target=int(t["value"]),
                    actual=found.actual,
                    days_elapsed=found.days_elapsed,
                    days_left=found.days_left,
                    pace_needed=found.pace_needed,
                    pace_last_7_days=found.pace_last_7_days,
                    projected=found.projected,
                    projected_ratio=found.projected_ratio,
                    status=found.status,
                )
            )
        elapsed, total = window_days(starts_on, ends_on, today)
        return CampaignRisk(
            campaign=code,
            name=campaign.get("name", code),
            starts_on=starts_on,
            ends_on=ends_on,
            as_of=today,
            days_elapsed=elapsed,
            days_total=total,
            days_left=total - elapsed,
            targets=rows,
            units_at_risk=units_at_risk(rows),
        )

    async def timeseries(
        self,
        principal: Principal,
        *,
        indicator: str,
        unit: str | None,
        interval: Interval,
        first: date | None,
        last: date | None,
        today: date,
    ) -> Timeseries:
        spec = CATALOGUE[indicator]
        if not spec.dated:
            raise InvalidInput(f"{indicator} counts current state; it has no time series", slug="not-dated")
        last = last or today
        first = first or last - timedelta(days=29)
        if first > last:
            raise InvalidInput("from must not be after to")
        if (last - first).days > MAX_SERIES_DAYS:
            raise InvalidInput(f"a time series spans at most {MAX_SERIES_DAYS} days")
        repo = await self.projection()
        code = await self._unit(repo, principal, unit)
        docs = await repo.counters_in_range(code, first.isoformat(), last.isoformat())
        return Timeseries.model_validate(
            {
                "indicator": indicator,
                "unit": code,
                "interval": interval,
                "from_": first,
                "to": last,
                "points": series(docs, spec, interval, first, last),
            }
        )

    @staticmethod
    def freshness(
        generation: int, topics: Mapping[str, str], last_event_time: Mapping[str, float], lag: Mapping[str, int]
    ) -> Freshness:
        """Per catalogue topic: newest projected event time and lag (``topics``: real -> base name)."""
        rows = []
        for real, base in topics.items():
            ts = last_event_time.get(real)
            lags = [v for k, v in lag.items() if k.rpartition(":")[0] == real]
            rows.append(
                TopicFreshness(
                    topic=base,
                    last_event_time=datetime.fromtimestamp(ts, UTC) if ts is not None else None,
                    lag=sum(lags) if lags else None,
                )
            )
        return Freshness(generation=generation, topics=rows)
