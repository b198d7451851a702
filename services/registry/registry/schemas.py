"""HTTP request and response models of the registry API."""

from __future__ import annotations

import unicodedata
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator

from shared.batch import BatchStatus
from shared.contracts.common import Indicator, Role, Skill, TeamKind, UnitKind

LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")
MIN_BIRTH_YEAR = 1930
MIN_AGE = 10
# Above any target a province (or the whole country) could set, and a small integer in Mongo and the sums.
MAX_TARGET = 100_000_000


def local_today() -> date:
    return datetime.now(LOCAL_TZ).date()


def _nfc(value: str) -> str:
    value = unicodedata.normalize("NFC", value)
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _birth_year(value: int) -> int:
    latest = local_today().year - MIN_AGE
    if not MIN_BIRTH_YEAR <= value <= latest:
        raise ValueError(f"must be between {MIN_BIRTH_YEAR} and {latest}")
    return value


def _unique(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


# Codes end up in Kafka keys ("<team>/<volunteer>") and in paths like /teams/{code}:deactivate, so
# "/", ":" and "." are kept out of them.
Code = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="Stable identifier chosen by the client (letters, digits, '-' and '_').",
        examples=["QN-HALONG"],
    ),
]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_nfc)]
BirthYear = Annotated[
    int,
    Field(ge=MIN_BIRTH_YEAR, le=9999, description=f"From {MIN_BIRTH_YEAR} to {MIN_AGE} years before this year."),
    AfterValidator(_birth_year),
]
Phone = Annotated[str, Field(pattern=r"^\+?[0-9][0-9 .-]{5,19}$", max_length=21)]
Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
Roles = Annotated[list[Role], Field(min_length=1, max_length=4), AfterValidator(_unique)]
Skills = Annotated[list[Skill], Field(max_length=4), AfterValidator(_unique)]


class Body(BaseModel):
    """Request bodies reject unknown fields so a misspelt field is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class PatchBody(Body):
    """A PATCH body: absent fields stay as they are; ``null`` clears only the fields that allow it."""

    required_fields: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _no_null_for_required(self) -> PatchBody:
        for name in self.model_fields_set & self.required_fields:
            if getattr(self, name) is None:
                raise ValueError(f"{name} may not be null")
        return self

    def changes(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set}


# --- units ------------------------------------------------------------------------------------------


class UnitIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"code": "QN", "name": "Tỉnh Quảng Ninh", "kind": "province", "parent_code": None},
                {"code": "QN-HALONG", "name": "Phường Hạ Long", "kind": "ward", "parent_code": "QN"},
            ]
        }
    )

    code: Code
    name: Name
    kind: UnitKind
    parent_code: Code | None = Field(default=None, description="Null only for the province (the root).")


class UnitPatch(PatchBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "Đặc khu Vân Đồn"}, {"parent_code": "QN"}]},
    )
    required_fields: ClassVar[frozenset[str]] = frozenset({"name", "kind"})

    name: Name | None = None
    kind: UnitKind | None = None
    parent_code: Code | None = Field(default=None, description="Moving a unit moves its whole subtree.")


class UnitStatus(StrEnum):
    active = "active"
    merged = "merged"
    closed = "closed"


class UnitOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "QN-HALONG",
                    "name": "Phường Hạ Long",
                    "kind": "ward",
                    "parent_code": "QN",
                    "path": ["QN", "QN-HALONG"],
                    "status": "active",
                    "successor_code": None,
                    "successors": [],
                    "closed_on": None,
                },
                {
                    "code": "QN-HONGGAI",
                    "name": "Phường Hồng Gai",
                    "kind": "ward",
                    "parent_code": "QN",
                    "path": ["QN", "QN-HONGGAI"],
                    "status": "merged",
                    "successor_code": "QN-HALONG",
                    "successors": [],
                    "closed_on": "2025-07-01",
                },
            ]
        }
    )

    code: str
    name: str
    kind: UnitKind
    parent_code: str | None
    path: list[str] = Field(description="Unit codes from the province root down to this unit.")
    status: UnitStatus = Field(
        default=UnitStatus.active,
        description="`merged` and `closed` units take no new records; their codes stay readable.",
    )
    successor_code: str | None = Field(default=None, description="The unit a merged unit was merged into.")
    successors: list[str] = Field(default_factory=list, description="The units a split unit was split into.")
    closed_on: date | None = Field(
        default=None, description="Local date the unit stopped taking records (merged, split or closed)."
    )


def _no_province(kind: UnitKind) -> UnitKind:
    if kind is UnitKind.province:
        raise ValueError("the province is the root; a reorganisation cannot create another one")
    return kind


SuccessorKind = Annotated[UnitKind, AfterValidator(_no_province)]
ReorgDate = Annotated[
    date | None, Field(description="Local date (Asia/Ho_Chi_Minh) it takes effect; today if omitted.")
]


class NewUnitIn(Body):
    name: Name
    kind: SuccessorKind
    parent_code: Code


class MergeIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sources": ["QN-HONGGAI", "QN-BACHDANG", "QN-HONGHA"],
                    "into": "QN-HALONG",
                    "new_unit": None,
                    "merged_on": "2025-07-01",
                },
                {
                    "sources": ["QN-VANDON", "QN-COTO"],
                    "into": "QN-VANDON-MOI",
                    "new_unit": {"name": "Đặc khu Vân Đồn", "kind": "special_zone", "parent_code": "QN"},
                    "merged_on": None,
                },
            ]
        }
    )

    sources: Annotated[list[Code], Field(min_length=1, max_length=50), AfterValidator(_unique)] = Field(
        description="Units to merge; `into` may be listed too (it is not merged into itself)."
    )
    into: Code = Field(description="The surviving unit, or the code of the unit `new_unit` creates.")
    new_unit: NewUnitIn | None = Field(
        default=None, description="Required when `into` does not exist yet: the unit to create first."
    )
    merged_on: ReorgDate = None


class MergeOut(BaseModel):
    successor: UnitOut
    merged: list[UnitOut] = Field(description="The merged units, in request order (without `into`).")


class SuccessorIn(Body):
    code: Code
    name: Name
    kind: SuccessorKind


class TeamAssignmentIn(Body):
    team_code: Code
    unit_code: Code = Field(description="One of the new units.")


class SplitIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "into": [
                        {"code": "QN-VANDON-B", "name": "Đặc khu Vân Đồn Bắc", "kind": "special_zone"},
                        {"code": "QN-VANDON-N", "name": "Đặc khu Vân Đồn Nam", "kind": "special_zone"},
                    ],
                    "teams": [
                        {"team_code": "VD-TT01", "unit_code": "QN-VANDON-B"},
                        {"team_code": "VD-LD02", "unit_code": "QN-VANDON-N"},
                    ],
                    "volunteers_to": "QN-VANDON-B",
                    "split_on": "2025-07-01",
                }
            ]
        }
    )

    into: list[SuccessorIn] = Field(
        min_length=1, max_length=20, description="New units, created under the split unit's parent."
    )
    teams: list[TeamAssignmentIn] = Field(
        default_factory=list, max_length=500, description="Where each active team of the split unit goes."
    )
    volunteers_to: Code | None = Field(
        default=None, description="The new unit that takes the volunteers; required if the unit has any."
    )
    split_on: ReorgDate = None

    @model_validator(mode="after")
    def _consistent(self) -> SplitIn:
        codes = [u.code for u in self.into]
        if len(set(codes)) != len(codes):
            raise ValueError("a new unit is listed twice")
        teams = [t.team_code for t in self.teams]
        if len(set(teams)) != len(teams):
            raise ValueError("a team is assigned twice")
        strays = sorted({t.unit_code for t in self.teams} - set(codes))
        if strays:
            raise ValueError(f"teams are assigned to units that are not new units of this split: {', '.join(strays)}")
        if self.volunteers_to is not None and self.volunteers_to not in codes:
            raise ValueError(f"volunteers_to {self.volunteers_to} is not one of the new units")
        return self


class SplitOut(BaseModel):
    closed: UnitOut
    successors: list[UnitOut] = Field(description="The new units, in request order.")


class CloseIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"reason": "Sáp nhập vào đặc khu mới theo Nghị quyết 1679", "closed_on": "2025-07-01"}]
        }
    )

    reason: Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_nfc)]
    closed_on: ReorgDate = None


# --- teams ------------------------------------------------------------------------------------------


class TeamIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "HL-TT01",
                    "name": "Đội thanh niên tình nguyện thường trực Hạ Long",
                    "kind": "permanent",
                    "unit_code": "QN-HALONG",
                    "base": "Trung tâm Phục vụ hành chính công phường Hạ Long",
                },
                {
                    "code": "HL-TXD",
                    "name": "Đội Thắp sáng đỏ",
                    "kind": "campaign",
                    "unit_code": "QN-HALONG",
                    "campaign_code": "PEAK90",
                },
            ]
        }
    )

    code: Code
    name: Name
    kind: TeamKind
    unit_code: Code
    base: Name | None = Field(default=None, description="Public-administration centre the team is based at.")
    campaign_code: Code | None = Field(default=None, description="An existing campaign this team belongs to.")


class TeamPatch(PatchBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"kind": "mobile", "base": None}]})
    required_fields: ClassVar[frozenset[str]] = frozenset({"name", "kind", "unit_code"})

    name: Name | None = None
    kind: TeamKind | None = None
    unit_code: Code | None = None
    base: Name | None = None
    campaign_code: Code | None = None


class TeamOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "HL-TT01",
                    "name": "Đội thanh niên tình nguyện thường trực Hạ Long",
                    "kind": "permanent",
                    "unit_code": "QN-HALONG",
                    "unit_path": ["QN", "QN-HALONG"],
                    "base": "Trung tâm Phục vụ hành chính công phường Hạ Long",
                    "campaign_code": None,
                    "active": True,
                }
            ]
        }
    )

    code: str
    name: str
    kind: TeamKind
    unit_code: str
    unit_path: list[str]
    base: str | None
    campaign_code: str | None
    active: bool


# --- volunteers -------------------------------------------------------------------------------------


class VolunteerIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "full_name": "Nguyễn Thị Hương",
                    "birth_year": 2001,
                    "unit_code": "QN-HALONG",
                    "roles": ["union_member", "student"],
                    "skills": ["it", "vneid"],
                    "phone": "+84 912 345 678",
                    "email": "huong.nguyen@example.vn",
                }
            ]
        }
    )

    full_name: Name
    birth_year: BirthYear
    unit_code: Code
    roles: Roles
    skills: Skills = Field(default_factory=list)
    phone: Phone | None = None
    email: Email | None = None


class VolunteerPatch(PatchBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"skills": ["it", "teaching"], "phone": None}]})
    required_fields: ClassVar[frozenset[str]] = frozenset({"full_name", "birth_year", "unit_code", "roles", "skills"})

    full_name: Name | None = None
    birth_year: BirthYear | None = None
    unit_code: Code | None = None
    roles: Roles | None = None
    skills: Skills | None = None
    phone: Phone | None = None
    email: Email | None = None


class VolunteerLeave(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"left_on": "2025-08-20"}]})

    left_on: date | None = Field(default=None, description="Local date; today (Asia/Ho_Chi_Minh) if omitted.")


MASK = "***"


class VolunteerOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b6c8f4e-3f57-4d39-a7a4-0d1f2d0c9a11",
                    "full_name": "Nguyễn Thị Hương",
                    "birth_year": 2001,
                    "unit_code": "QN-HALONG",
                    "unit_path": ["QN", "QN-HALONG"],
                    "roles": ["union_member", "student"],
                    "skills": ["it", "vneid"],
                    "phone": "+84 912 345 678",
                    "email": "huong.nguyen@example.vn",
                    "active": True,
                    "left_on": None,
                    "personal_data_masked": False,
                }
            ]
        }
    )

    id: str
    full_name: str = Field(description=f"'{MASK}' unless the caller is admin or a manager of the volunteer's unit.")
    birth_year: int
    unit_code: str
    unit_path: list[str]
    roles: list[Role]
    skills: list[Skill]
    phone: str | None = Field(description=f"'{MASK}' (or null) unless the caller may see personal data.")
    email: str | None = Field(description=f"'{MASK}' (or null) unless the caller may see personal data.")
    active: bool
    left_on: date | None
    personal_data_masked: bool


# --- memberships ------------------------------------------------------------------------------------


class MemberIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"volunteer_id": "0b6c8f4e-3f57-4d39-a7a4-0d1f2d0c9a11", "since": "2025-07-01"}]
        }
    )

    volunteer_id: str = Field(min_length=1, max_length=64)
    since: date


class Period(BaseModel):
    since: date
    until: date | None = Field(description="Null while the membership is current.")


class MembershipOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "team_code": "HL-TT01",
                    "volunteer_id": "0b6c8f4e-3f57-4d39-a7a4-0d1f2d0c9a11",
                    "active": True,
                    "since": "2025-07-01",
                    "until": None,
                    "periods": [{"since": "2025-07-01", "until": None}],
                }
            ]
        }
    )

    team_code: str
    volunteer_id: str
    active: bool
    since: date = Field(description="Start of the latest period.")
    until: date | None = Field(description="End of the latest period; null while current.")
    periods: list[Period]


# --- campaigns --------------------------------------------------------------------------------------


class TargetIn(Body):
    indicator: Indicator
    unit_code: Code
    value: int = Field(ge=0, le=MAX_TARGET, description=f"0 to {MAX_TARGET:,}.")
    merged_from: Annotated[list[Code], Field(max_length=200), AfterValidator(_unique)] = Field(
        default_factory=list,
        description="Units merged into `unit_code` whose targets were added into `value` (kept by a merge).",
    )


def _distinct_targets(targets: list[TargetIn]) -> list[TargetIn]:
    seen: set[tuple[str, str]] = set()
    for t in targets:
        key = (t.indicator.value, t.unit_code)
        if key in seen:
            raise ValueError(f"target {t.indicator.value} for {t.unit_code} appears twice")
        seen.add(key)
    return targets


Targets = Annotated[list[TargetIn], Field(max_length=1000), AfterValidator(_distinct_targets)]

_TARGETS_EXAMPLE: list[JsonValue] = [
    {"indicator": "households_visited", "unit_code": "QN", "value": 1440},
    {"indicator": "people_supported", "unit_code": "QN-HALONG", "value": 1200},
]


class CampaignIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "PEAK90",
                    "name": "Cao điểm 90 ngày hỗ trợ dịch vụ công trực tuyến",
                    "starts_on": "2025-07-01",
                    "ends_on": "2025-09-28",
                    "targets": _TARGETS_EXAMPLE,
                }
            ]
        }
    )

    code: Code
    name: Name
    starts_on: date
    ends_on: date = Field(description="Inclusive; not before starts_on.")
    targets: Targets = Field(default_factory=list)

    @model_validator(mode="after")
    def _window(self) -> CampaignIn:
        if self.ends_on < self.starts_on:
            raise ValueError("ends_on is before starts_on")
        return self


class TargetsIn(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"targets": _TARGETS_EXAMPLE}]})

    targets: Targets


class TargetOut(BaseModel):
    indicator: Indicator
    unit_code: str
    value: int
    merged_from: list[str] = Field(default_factory=list)


class CampaignOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "PEAK90",
                    "name": "Cao điểm 90 ngày hỗ trợ dịch vụ công trực tuyến",
                    "starts_on": "2025-07-01",
                    "ends_on": "2025-09-28",
                    "targets": _TARGETS_EXAMPLE,
                }
            ]
        }
    )

    code: str
    name: str
    starts_on: date
    ends_on: date
    targets: list[TargetOut]


# --- roster import ------------------------------------------------------------------------------------

MAX_ROSTER = 500
ClientRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        description="The sender's unique reference for this person; a re-sent item with the same reference "
        "is answered as a duplicate with the same volunteer id.",
        examples=["tinh-doan/roster-2025/0042"],
    ),
]


class RosterMembership(Body):
    code: Code
    since: date


class RosterItemIn(VolunteerIn):
    """A volunteer and the teams they join, as one row of a roster spreadsheet."""

    client_ref: ClientRef
    teams: list[RosterMembership] = Field(default_factory=list, max_length=8)

    @model_validator(mode="after")
    def _distinct_teams(self) -> RosterItemIn:
        codes = [t.code for t in self.teams]
        if len(set(codes)) != len(codes):
            raise ValueError("a team is listed twice")
        return self


class RosterIn(Body):
    """Up to 500 rows, each validated on its own: one bad row never blocks the others."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "client_ref": "tinh-doan/roster-2025/0042",
                            "full_name": "Nguyễn Thị Hương",
                            "birth_year": 2001,
                            "unit_code": "QN-HALONG",
                            "roles": ["union_member"],
                            "skills": ["it", "vneid"],
                            "teams": [{"code": "HL-TT01", "since": "2025-07-01"}],
                        }
                    ]
                }
            ]
        }
    )

    items: list[dict[str, JsonValue]] = Field(min_length=1, max_length=MAX_ROSTER)


class RosterItemOut(BaseModel):
    row: int | None = Field(
        default=None,
        description="The row of the uploaded sheet this result is for, as the spreadsheet numbers it; "
        "null for JSON imports (their results are in request order).",
    )
    client_ref: str | None
    status: BatchStatus
    id: str | None = Field(default=None, description="The volunteer id (the same on every re-send).")
    teams: list[str] = Field(default_factory=list, description="Teams the volunteer is a member of after this row.")
    problem: dict[str, Any] | None = Field(default=None, description="RFC 9457 problem of a rejected row.")


class RosterOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "row": 2,
                            "client_ref": "tinh-doan/roster-2025/0042",
                            "status": "created",
                            "id": "0b6c8f4e-3f57-4d39-a7a4-0d1f2d0c9a11",
                            "teams": ["HL-TT01"],
                            "problem": None,
                        },
                        {
                            "row": 3,
                            "client_ref": "tinh-doan/roster-2025/0043",
                            "status": "rejected",
                            "id": None,
                            "teams": [],
                            "problem": {
                                "type": "https://digital-bridge.youthunion.vn/problems/validation",
                                "title": "The request is not valid",
                                "status": 422,
                                "detail": "birth_year: Value error, must be between 1930 and 2016",
                                "errors": [{"field": "birth_year", "message": "...", "type": "value_error"}],
                            },
                        },
                    ]
                }
            ]
        }
    )

    items: list[RosterItemOut] = Field(description="One result per row, in request (or sheet) order.")
