"""HTTP response models of the metrics API (all endpoints are reads, plus the admin rebuild)."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.audit import AuditEntry
from shared.contracts.common import Indicator


class Interval(StrEnum):
    day = "day"
    week = "week"


class Scope(BaseModel):
    unit: str
    from_: date | None = Field(default=None, serialization_alias="from")
    to: date | None = None
    campaign: str | None = None
    unit_status: Literal["active", "merged", "closed"] = Field(
        default="active",
        description="A merged or closed unit's figures stay readable by its code: its own history (and what "
        "is still below it).",
    )
    merged_into: str | None = Field(
        default=None, description="The successor of a merged unit, whose figures include it."
    )
    successors: list[str] = Field(default_factory=list, description="The units a split unit was divided into.")
    known_at: datetime | None = Field(
        default=None,
        description="With ``known_at``: the dated indicators as the event log held them at that moment "
        "(current-state indicators are as they are now).",
    )
    reported: str | None = Field(
        default=None, description="With ``reported=true``: the closed period whose frozen figures these are."
    )


class TeamsFigures(BaseModel):
    permanent: int
    mobile: int
    literacy: int
    campaign: int
    total: int


class OnlineApplicationsFigures(BaseModel):
    l3: int
    l4: int
    total: int


class AudienceFigures(BaseModel):
    youth_children: int
    elderly_middle_aged: int
    general: int
    total: int


class ChannelFigures(BaseModel):
    fanpage: int
    newspaper: int
    visual: int
    total: int


class AreaFigures(BaseModel):
    remote: int
    border: int
    island: int
    rural: int
    urban: int
    total: int


class GroupFigures(BaseModel):
    elderly: int
    women: int
    veterans: int
    total: int = Field(description="elderly + women + veterans: one person may be in several groups.")


class ModeFigures(BaseModel):
    in_person: int
    online: int
    total: int


class RoleFigures(BaseModel):
    union_member: int
    youth: int
    student: int
    lecturer: int
    total: int = Field(description="The sum of the roles: a volunteer may have several.")


class SkillFigures(BaseModel):
    it: int
    vneid: int
    teaching: int
    media: int
    total: int = Field(description="The sum of the skills: a volunteer may have several.")


SUMMARY_EXAMPLE: dict[str, Any] = {
    "as_of": "2025-08-20T03:00:00Z",
    "scope": {"unit": "QN", "from": "2025-07-01", "to": "2025-09-28", "campaign": "PEAK90"},
    "teams": {"permanent": 55, "mobile": 67, "literacy": 54, "campaign": 61, "total": 237},
    "volunteers": 2380,
    "households_visited": 1440,
    "people_supported": 12000,
    "vneid_installs": 5200,
    "online_applications": {"l3": 3100, "l4": 2700, "total": 5800},
    "courses": {"youth_children": 151, "elderly_middle_aged": 110, "general": 0, "total": 261},
    "course_participants": {"youth_children": 9800, "elderly_middle_aged": 7300, "general": 0, "total": 17100},
    "course_completions": 15200,
    "outreach_posts": {"fanpage": 780, "newspaper": 97, "visual": 2000, "total": 2877},
    "people_supported_by_area": {
        "remote": 2100,
        "border": 1300,
        "island": 1900,
        "rural": 3700,
        "urban": 3000,
        "total": 12000,
    },
    "households_by_area": {"remote": 610, "border": 380, "island": 450, "rural": 0, "urban": 0, "total": 1440},
    "people_supported_by_group": {"elderly": 4100, "women": 5300, "veterans": 600, "total": 10000},
    "vneid_activations": 4800,
    "courses_by_mode": {"in_person": 230, "online": 31, "total": 261},
    "course_participants_by_mode": {"in_person": 15200, "online": 1900, "total": 17100},
    "volunteers_by_role": {"union_member": 1900, "youth": 600, "student": 700, "lecturer": 40, "total": 3240},
    "volunteers_by_skill": {"it": 520, "vneid": 1800, "teaching": 300, "media": 250, "total": 2870},
    "team_members": {"permanent": 2380, "mobile": 800, "literacy": 400, "campaign": 700, "total": 4280},
}


class Summary(BaseModel):
    """Every indicator for a unit's subtree; dated ones summed over ``scope.from``..``scope.to``.

    Each indicator counts on the local date (Asia/Ho_Chi_Minh) on which the thing happened, at the
    unit where it happened; current-state indicators (teams, volunteers, their breakdowns and team
    members) are as they stand now, whatever the dates. Split indicators give each key and their
    ``total``. Breakdowns count only events that carry the field they split by: records of older
    producers without it count in the plain indicator but in no key of the breakdown.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [SUMMARY_EXAMPLE]})

    as_of: datetime
    scope: Scope
    teams: TeamsFigures = Field(description="Active teams (created, not deactivated) by kind. Current state.")
    volunteers: int = Field(description="Registered volunteers who have not left. Current state.")
    households_visited: int = Field(
        description="Sum of households over visits not voided (a correction replaces the earlier values). "
        "Dated by visited_on."
    )
    people_supported: int = Field(description="Sum of people.total over the same visits. Dated by visited_on.")
    vneid_installs: int = Field(description="Sum of services.vneid_installed. Dated by visited_on.")
    online_applications: OnlineApplicationsFigures = Field(
        description="Sums of services.online_applications_l3 and _l4. Dated by visited_on."
    )
    courses: AudienceFigures = Field(description="Courses not cancelled, by audience. Dated by starts_on.")
    course_participants: AudienceFigures = Field(
        description="Roster courses: participants enrolled; head-count courses: the largest session head count "
        "so far, replaced by the final count when the course completes; by audience. Dated by starts_on."
    )
    course_completions: int = Field(
        description="Participants marked complete, plus final completion counts of head-count courses. "
        "Dated by ends_on."
    )
    outreach_posts: ChannelFigures = Field(description="Posts not voided, by channel. Dated by published_on.")
    people_supported_by_area: AreaFigures = Field(
        description="people_supported by the visit's area type (remote, border, island, rural, urban); a "
        "correction moves people to the corrected area. Visits without an area count in no key. Dated by visited_on."
    )
    households_by_area: AreaFigures = Field(
        description="households_visited by the visit's area type, as people_supported_by_area. Dated by visited_on."
    )
    people_supported_by_group: GroupFigures = Field(
        description="Sums of people.elderly, people.women and people.veterans over the visits counted in "
        "people_supported; total is their sum (one person may be in several groups, so it is not a head count). "
        "Dated by visited_on."
    )
    vneid_activations: int = Field(description="Sum of services.vneid_activated. Dated by visited_on.")
    courses_by_mode: ModeFigures = Field(
        description="Courses not cancelled, by mode (in_person, online). Courses without a mode count in no key. "
        "Dated by starts_on."
    )
    course_participants_by_mode: ModeFigures = Field(
        description="course_participants by the course's mode. Dated by starts_on."
    )
    volunteers_by_role: RoleFigures = Field(
        description="Volunteers who have not left, having each role; total is the sum of the roles (a volunteer "
        "may have several). Current state."
    )
    volunteers_by_skill: SkillFigures = Field(
        description="Volunteers who have not left, having each skill; total is the sum of the skills. Current state."
    )
    team_members: TeamsFigures = Field(
        description="Active memberships of active teams, by the team's kind, counted at the team's unit. Current state."
    )


class TargetProgress(BaseModel):
    indicator: Indicator
    unit_code: str
    target: int
    actual: int
    percent: float | None = Field(description="actual / target * 100; null when the target is 0.")
    projected: float = Field(description="Actual extrapolated to the whole window at the current pace.")
    merged_from: list[str] = Field(
        default_factory=list, description="Units merged into this one whose targets were added into ``target``."
    )


class CampaignProgress(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "campaign": "PEAK30",
                    "name": "Cao điểm 30 ngày",
                    "starts_on": "2025-07-01",
                    "ends_on": "2025-07-30",
                    "as_of": "2025-07-15",
                    "days_elapsed": 15,
                    "days_total": 30,
                    "targets": [
                        {
                            "indicator": "courses",
                            "unit_code": "QN",
                            "target": 250,
                            "actual": 140,
                            "percent": 56.0,
                            "projected": 280.0,
                        }
                    ],
                }
            ]
        }
    )

    campaign: str
    name: str
    starts_on: date
    ends_on: date
    as_of: date
    days_elapsed: int
    days_total: int
    targets: list[TargetProgress]


class Point(BaseModel):
    start: date
    value: int
    by: dict[str, int]


class Timeseries(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "indicator": "online_applications",
                    "unit": "QN-HALONG",
                    "interval": "week",
                    "from": "2025-07-07",
                    "to": "2025-07-20",
                    "points": [
                        {"start": "2025-07-07", "value": 42, "by": {"l3": 30, "l4": 12}},
                        {"start": "2025-07-14", "value": 51, "by": {"l3": 33, "l4": 18}},
                    ],
                }
            ]
        }
    )

    indicator: Indicator
    unit: str
    interval: Interval
    from_: date = Field(serialization_alias="from")
    to: date
    points: list[Point]


class TopicFreshness(BaseModel):
    topic: str
    last_event_time: datetime | None
    lag: int | None = Field(description="Messages not yet projected, summed over the topic's partitions.")


class Freshness(BaseModel):
    generation: int
    topics: list[TopicFreshness]


class RebuildAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"generation": 2, "state": "running", "status_url": "/v1/admin/rebuild"}]}
    )

    generation: int
    state: str
    status_url: str


class RebuildStatus(BaseModel):
    active_generation: int
    generation: int | None = None
    state: str = Field(description="idle, running, done or failed.")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    events_to_replay: int | None = None
    events_replayed: int | None = None
    error: str | None = None


# --- the report table ---------------------------------------------------------------------------------
class ReportFormat(StrEnum):
    json = "json"
    csv = "csv"
    xlsx = "xlsx"


class ReportColumn(BaseModel):
    key: str = Field(description="Flattened summary key: ``households_visited``, ``teams.mobile``, ...")
    label_vi: str
    label_en: str
    dated: bool = Field(
        description="False for current-state indicators (teams, volunteers and their breakdowns, team members): "
        "no previous period."
    )


class ReportRows(StrEnum):
    units = "units"
    teams = "teams"


class ReportRow(BaseModel):
    unit: str = Field(description="The row's unit; for a team row, the unit the team belongs to now.")
    name: str = Field(description="The unit's name as stored (NFC); the direct row adds ``(trực tiếp / direct)``.")
    row: Literal["unit", "direct", "team", "unattributed", "total"] = Field(
        description="``unit``: a direct child unit with its subtree; ``direct``: the unit's own records; "
        "``team``: one team of the subtree (its records wherever they were made); ``unattributed``: the "
        "totals minus every team row (records without a team, registry figures kept per unit, and teams "
        "that moved in or out); ``total``: the whole subtree (equal to ``/v1/summary`` of the unit for the period)."
    )
    unit_status: Literal["active", "merged", "closed"] = "active"
    team: str | None = Field(default=None, description="Team code of a ``team`` row.")
    team_kind: str | None = Field(default=None, description="Team kind of a ``team`` row.")
    team_active: bool | None = Field(default=None, description="Whether a ``team`` row's team is active now.")
    figures: dict[str, int] = Field(description="Every column key over the period.")
    previous: dict[str, int | None] = Field(
        description="The same keys over the previous period of equal length; null for current-state indicators."
    )
    change: dict[str, int | None] = Field(description="``figures - previous``; null where ``previous`` is.")


REPORT_EXAMPLE: dict[str, Any] = {
    "as_of": "2025-07-14T01:00:00Z",
    "unit": "QN",
    "unit_name": "Tỉnh Quảng Ninh",
    "campaign": None,
    "from": "2025-07-07",
    "to": "2025-07-13",
    "previous_from": "2025-06-30",
    "previous_to": "2025-07-06",
    "columns": [
        {
            "key": "households_visited",
            "label_vi": "Hộ gia đình được thăm",
            "label_en": "Households visited",
            "dated": True,
        }
    ],
    "rows": [
        {
            "unit": "QN-HALONG",
            "name": "Phường Hạ Long",
            "row": "unit",
            "unit_status": "active",
            "figures": {"households_visited": 42},
            "previous": {"households_visited": 35},
            "change": {"households_visited": 7},
        }
    ],
    "totals": {
        "unit": "QN",
        "name": "Tổng cộng / Total",
        "row": "total",
        "unit_status": "active",
        "figures": {"households_visited": 42},
        "previous": {"households_visited": 35},
        "change": {"households_visited": 7},
    },
}


class ReportTable(BaseModel):
    """A unit's report: its direct child units (and its own records) by every indicator, with the
    previous period of equal length beside each figure."""

    model_config = ConfigDict(json_schema_extra={"examples": [REPORT_EXAMPLE]})

    as_of: datetime
    unit: str
    unit_name: str
    campaign: str | None = None
    from_: date = Field(serialization_alias="from")
    to: date
    previous_from: date
    previous_to: date
    rows_by: ReportRows = Field(
        default=ReportRows.units, description="``units``: child units as rows; ``teams``: the subtree's teams."
    )
    known_at: datetime | None = Field(
        default=None,
        description="With ``known_at``: dated figures as the event log held them then (current state: as now).",
    )
    columns: list[ReportColumn]
    rows: list[ReportRow] = Field(
        description="The direct row first (when the unit has records of its own), then the child units by code."
    )
    totals: ReportRow


# --- targets at risk ----------------------------------------------------------------------------------
class RiskStatus(StrEnum):
    done = "done"
    on_track = "on_track"
    at_risk = "at_risk"
    behind = "behind"
    not_started = "not_started"


class TargetRisk(BaseModel):
    indicator: Indicator
    unit_code: str
    unit_name: str | None
    target: int
    actual: int = Field(description="Counted from starts_on to as_of (or ends_on, whichever is first).")
    days_elapsed: int = Field(description="Days of the window up to and including as_of.")
    days_left: int = Field(description="Days of the window after as_of.")
    pace_needed: float | None = Field(
        description="Per day, to reach the target by ends_on from now; 0 when reached; null when no day is left "
        "or the indicator counts current state."
    )
    pace_last_7_days: float | None = Field(
        description="Per day over the last 7 local days inside the window; null for current-state indicators."
    )
    projected: float = Field(description="At ends_on, at the last-7-days pace (current state: the actual).")
    projected_ratio: float | None = Field(description="projected / target; null when the target is 0.")
    status: RiskStatus = Field(
        description="``done``: actual >= target; ``not_started``: the window has not begun; ``on_track``: "
        "projected >= target; ``at_risk``: projected >= 80% of target; ``behind`` otherwise."
    )


class UnitAtRisk(BaseModel):
    unit_code: str
    unit_name: str | None
    status: RiskStatus = Field(description="The status of its worst target.")
    projected_ratio: float = Field(description="The lowest projected / target of its targets at risk.")
    indicators: list[Indicator] = Field(description="Its targets at risk or behind, worst first.")


class CampaignRisk(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "campaign": "PEAK30",
                    "name": "Cao điểm 30 ngày",
                    "starts_on": "2025-07-01",
                    "ends_on": "2025-07-30",
                    "as_of": "2025-07-10",
                    "days_elapsed": 10,
                    "days_total": 30,
                    "days_left": 20,
                    "targets": [
                        {
                            "indicator": "courses",
                            "unit_code": "QN-HALONG",
                            "unit_name": "Phường Hạ Long",
                            "target": 30,
                            "actual": 6,
                            "days_elapsed": 10,
                            "days_left": 20,
                            "pace_needed": 1.2,
                            "pace_last_7_days": 0.57,
                            "projected": 17.4,
                            "projected_ratio": 0.581,
                            "status": "behind",
                        }
                    ],
                    "units_at_risk": [
                        {
                            "unit_code": "QN-HALONG",
                            "unit_name": "Phường Hạ Long",
                            "status": "behind",
                            "projected_ratio": 0.581,
                            "indicators": ["courses"],
                        }
                    ],
                }
            ]
        }
    )

    campaign: str
    name: str
    starts_on: date
    ends_on: date
    as_of: date
    days_elapsed: int
    days_total: int
    days_left: int
    targets: list[TargetRisk]
    units_at_risk: list[UnitAtRisk] = Field(description="Units with a target at risk or behind, worst ratio first.")


# --- closing the week --------------------------------------------------------------------------------
PeriodStatus = Literal["open", "closed", "approved"]


class PeriodActor(BaseModel):
    sub: str
    role: str
    unit: str | None = None


class PeriodUnit(BaseModel):
    """One unit's state for one period."""

    period: str
    unit: str
    name: str
    status: PeriodStatus
    closed_at: datetime | None = None
    closed_by: PeriodActor | None = None
    approved_at: datetime | None = None
    approved_by: PeriodActor | None = None
    reopened_at: datetime | None = None
    reopen_reason: str | None = None
    note: str | None = None
    reported: dict[str, int] | None = Field(
        default=None, description="The figures frozen at the close (flattened summary keys); null while open."
    )
    history: list[AuditEntry] = Field(
        default_factory=list, description="Who closed, approved and reopened it: its entries of the audit trail."
    )


class PeriodOut(BaseModel):
    period: str = Field(description="An ISO week (``2025-W28``, Monday to Sunday local) or ``campaign-<code>``.")
    kind: Literal["week", "campaign"]
    first: date
    last: date
    unit: str
    units: list[PeriodUnit] = Field(description="The unit and every active unit below it, top down.")
    not_closed: list[str] = Field(description="Units of the list whose period is still open.")


class CloseRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"note": "Đã rà soát số liệu tuần / Week checked"}]})

    note: str | None = Field(default=None, max_length=1000)


class ReopenRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"reason": "Số liệu bão số 3 về muộn / Typhoon week's late records"}]}
    )

    reason: str = Field(min_length=3, max_length=1000)


class Adjustment(BaseModel):
    """One event that reached the log after the close and changes the closed period's figures."""

    event_id: str
    event_type: str
    subject: str | None = Field(description="The record it concerns (visit id, course code, post id).")
    arrived_at: datetime = Field(description="When it reached the event log.")
    units: list[str]
    days: list[date]
    teams: list[str]
    changes: dict[str, int] = Field(description="By how much each flattened key moved (zeros left out).")


class PeriodFigures(BaseModel):
    period: str
    unit: str
    status: PeriodStatus
    closed_at: datetime
    reported: dict[str, int] = Field(description="Frozen at the close.")
    revised: dict[str, int] = Field(
        description="Reported plus every adjustment (dated keys); current-state keys as they are now."
    )
    difference: dict[str, int] = Field(description="revised - reported.")
    adjustments: list[Adjustment] = Field(description="Late and changed records, in the order they arrived.")


class TeamReporting(BaseModel):
    team: str
    name: str
    unit: str
    kind: str | None
    active: bool
    status: Literal["on_time", "late", "silent"] = Field(
        description="``on_time``: sent records for the period before the close (or so far, while open); "
        "``late``: only after the close; ``silent``: nothing."
    )


class Completeness(BaseModel):
    period: str
    unit: str
    closed: bool
    teams_expected: int = Field(description="Active teams of the subtree.")
    teams_reported: int
    teams_on_time: int
    teams_late: int
    reporting_rate: float | None = Field(description="Percent of expected teams that sent records.")
    teams: list[TeamReporting]
    silent_teams: list[str]
    units_not_closed: list[str]
