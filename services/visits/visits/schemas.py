"""HTTP request and response models of the visits service."""

from __future__ import annotations

import unicodedata
from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.contracts.common import Area, Channel, Setting

LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")
MAX_BATCH = 500
# One record is one household visit or one day at a service centre: these bounds are far above any
# real one and keep every count a small integer in Mongo and in the metrics sums.
MAX_PEOPLE = 5_000
MAX_HOUSEHOLDS = 1_000


def local_today() -> date:
    """Today's calendar date where the teams work; a field date after it is a typo or a bad clock."""
    return datetime.now(LOCAL_TZ).date()


def _nfc(value: str) -> str:
    return unicodedata.normalize("NFC", value)


def _not_in_future(value: date) -> date:
    today = local_today()
    if value > today:
        raise ValueError(f"{value.isoformat()} is in the future (today is {today.isoformat()} in Asia/Ho_Chi_Minh)")
    return value


Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^.$\s]+$")]
Text = Annotated[str, AfterValidator(_nfc)]
PastDate = Annotated[date, AfterValidator(_not_in_future)]
VisitStatus = Literal["recorded", "pending", "rejected", "voided"]
PostStatus = Literal["published", "pending", "rejected", "voided"]
BatchStatus = Literal["created", "pending", "duplicate", "rejected"]
RESOLVED_FROM = (
    "The unit code the record named, when that unit had been merged into another: the record is "
    "stored (and counted) under its successor, `unit_code`. Absent when the named unit takes records itself."
)

_PEOPLE_PARTS = ("elderly", "women", "veterans")
People = Annotated[int, Field(ge=0, le=MAX_PEOPLE, description=f"0 to {MAX_PEOPLE} in one record.")]


class PeopleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    total: People
    elderly: People = 0
    women: People = 0
    veterans: People = 0

    @model_validator(mode="after")
    def _parts_within_total(self) -> PeopleIn:
        over = [p for p in _PEOPLE_PARTS if getattr(self, p) > self.total]
        if over:
            parts = ", ".join(f"people.{p} ({getattr(self, p)})" for p in over)
            raise ValueError(f"{parts} cannot exceed people.total ({self.total})")
        return self


class ServicesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vneid_installed: People = 0
    vneid_activated: People = 0
    online_applications_l3: People = 0
    online_applications_l4: People = 0
    digital_skills_guidance: People = 0


_VISIT_EXAMPLE: dict[str, Any] = {
    "client_ref": "0b7f3c1e-2a4d-4f5e-9c61-3d2a1b0c9e88",
    "team_code": "QN-VD-MOBILE-1",
    "unit_code": "QN-VD",
    "visited_on": "2025-08-14",
    "setting": "household",
    "area": "island",
    "household_ref": "hh-7f3a91",
    "households": 1,
    "people": {"total": 3, "elderly": 2, "women": 2, "veterans": 1},
    "services": {"vneid_installed": 2, "vneid_activated": 2, "online_applications_l3": 1},
    "volunteer_ids": ["vol-001", "vol-002"],
    "notes": "Cụ ông Nguyễn Văn Bình cần hỗ trợ thêm về dịch vụ công mức độ 4.",
}


class VisitFields(BaseModel):
    """The record a team captures, as the device sends it."""

    model_config = ConfigDict(extra="forbid")

    team_code: Code
    unit_code: Code
    visited_on: PastDate = Field(description="Local date (Asia/Ho_Chi_Minh) of the visit.")
    setting: Setting
    area: Area
    household_ref: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)] | None = Field(
        default=None, description="Pseudonymous household reference; household visits only."
    )
    households: Annotated[int, Field(ge=0, le=MAX_HOUSEHOLDS)] | None = Field(
        default=None,
        description=f"Households reached (at most {MAX_HOUSEHOLDS}); defaults to 1 for a household visit, "
        "0 at a service centre.",
    )
    people: PeopleIn
    services: ServicesIn = Field(default_factory=ServicesIn)
    volunteer_ids: list[Code] = Field(default_factory=list, max_length=100)
    notes: Annotated[Text, Field(max_length=500)] | None = None

    @model_validator(mode="after")
    def _setting_rules(self) -> VisitFields:
        if self.setting is Setting.service_centre and self.household_ref is not None:
            raise ValueError("household_ref is only allowed on a household visit, not at a service_centre")
        if self.households is None:
            self.households = 1 if self.setting is Setting.household else 0
        return self

    @field_validator("volunteer_ids")
    @classmethod
    def _distinct_volunteers(cls, ids: list[str]) -> list[str]:
        return list(dict.fromkeys(ids))


class VisitIn(VisitFields):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_VISIT_EXAMPLE]})

    client_ref: UUID = Field(description="Generated by the device; sending it again returns the first copy.")


class VisitCorrectionIn(VisitFields):
    """The full corrected record; ``client_ref`` may be repeated but cannot change."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{**_VISIT_EXAMPLE, "people": {"total": 4, "elderly": 2, "women": 2}}]},
    )

    client_ref: UUID | None = None


class VoidIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "Ghi trùng với phiếu của đội khác"}]}
    )

    reason: Annotated[Text, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class BatchIn(BaseModel):
    """Up to 500 records; each is validated on its own, so one bad record does not fail the rest."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"items": [_VISIT_EXAMPLE]}]})

    items: list[Any] = Field(max_length=MAX_BATCH)


class BatchItemOut(BaseModel):
    client_ref: str | None
    status: BatchStatus
    id: str | None = None
    problem: dict[str, Any] | None = Field(
        default=None,
        description="Problem details when rejected (e.g. `unit-closed`, status 409: the unit was closed or split).",
    )
    resolved_from: str | None = Field(default=None, description=RESOLVED_FROM)


class BatchOut(BaseModel):
    items: list[BatchItemOut] = Field(description="One result per request item, in request order.")


class PeopleOut(BaseModel):
    total: int
    elderly: int
    women: int
    veterans: int


class ServicesOut(BaseModel):
    vneid_installed: int
    vneid_activated: int
    online_applications_l3: int
    online_applications_l4: int
    digital_skills_guidance: int


class VisitOut(BaseModel):
    id: str
    client_ref: str
    status: VisitStatus
    team_code: str
    unit_code: str
    unit_path: list[str] | None = Field(description="Null while the unit is not known to the read model yet.")
    resolved_from: str | None = Field(default=None, description=RESOLVED_FROM)
    visited_on: date
    setting: Setting
    area: Area
    household_ref: str | None
    households: int
    people: PeopleOut
    services: ServicesOut
    volunteer_ids: list[str]
    notes: str | None
    created_at: datetime
    recorded_at: datetime | None = None
    corrected_at: datetime | None = None
    voided_at: datetime | None = None
    void_reason: str | None = None
    problem: dict[str, Any] | None = Field(default=None, description="Why a pending record was rejected.")


_POST_EXAMPLE: dict[str, Any] = {
    "client_ref": "5d0c2b8e-7e1f-4a55-8f0e-2b7c9d4e1a10",
    "unit_code": "QN-HL",
    "team_code": "QN-HL-SHINING-RED",
    "channel": "fanpage",
    "published_on": "2025-08-10",
    "title": "Phường Hạ Long: thanh niên hỗ trợ người dân cài đặt VNeID",
    "url": "https://facebook.com/doanphuonghalong/posts/123",
}


class OutreachIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_POST_EXAMPLE]})

    client_ref: UUID
    unit_code: Code
    team_code: Code | None = None
    channel: Channel
    published_on: PastDate = Field(description="Local date (Asia/Ho_Chi_Minh) of publication.")
    title: Annotated[Text, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
    url: Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://\S+$")] | None = None


class OutreachOut(BaseModel):
    id: str
    client_ref: str
    status: PostStatus
    unit_code: str
    unit_path: list[str] | None
    resolved_from: str | None = Field(default=None, description=RESOLVED_FROM)
    team_code: str | None
    channel: Channel
    published_on: date
    title: str
    url: str | None
    created_at: datetime
    recorded_at: datetime | None = None
    voided_at: datetime | None = None
    void_reason: str | None = None
    problem: dict[str, Any] | None = None
