"""HTTP request and response models of the training service."""

from __future__ import annotations

import unicodedata
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.batch import BatchStatus
from shared.contracts.common import Audience, Mode, NonNegative, ParticipantGroup, Topic

MAX_BATCH = 500
# A course's head counts and final figures: far above any class, and small integers in Mongo and the sums.
MAX_PARTICIPANTS = 100_000
Count = Annotated[int, Field(ge=0, le=MAX_PARTICIPANTS, description=f"0 to {MAX_PARTICIPANTS}.")]

Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
ClientRef = Annotated[
    str,
    Field(min_length=1, max_length=128, description="Client-generated reference; a retry with it never doubles."),
]


def _nfc(value: str | None) -> str | None:
    return unicodedata.normalize("NFC", value) if value is not None else None


class CourseStatus(StrEnum):
    pending = "pending"  # waiting for the registry to tell us about its team or unit
    scheduled = "scheduled"
    running = "running"
    completed = "completed"
    cancelled = "cancelled"
    rejected = "rejected"  # the registry showed its references to be invalid


class Counting(StrEnum):
    roster = "roster"
    head_count = "head_count"


class CourseIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "client_ref": "tab-07/2025-07-02/1",
                    "code": "HL-VNEID-0701",
                    "title": "Hướng dẫn cài đặt VNeID cho người cao tuổi",
                    "team_code": "HL-LIT-01",
                    "unit_code": "QN-HALONG",
                    "audience": "elderly_middle_aged",
                    "mode": "in_person",
                    "topics": ["vneid", "online_public_services"],
                    "starts_on": "2025-07-02",
                    "ends_on": "2025-07-30",
                    "capacity": 40,
                }
            ]
        },
    )

    client_ref: ClientRef
    code: Code
    title: str = Field(min_length=1, max_length=300)
    team_code: Code
    unit_code: Code
    audience: Audience
    mode: Mode
    topics: list[Topic] = Field(min_length=1, max_length=10)
    starts_on: date
    ends_on: date
    capacity: int | None = Field(default=None, gt=0, le=MAX_PARTICIPANTS)

    @field_validator("title")
    @classmethod
    def _title_nfc(cls, v: str) -> str:
        return unicodedata.normalize("NFC", v)

    @field_validator("topics")
    @classmethod
    def _unique_topics(cls, v: list[Topic]) -> list[Topic]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _dates_in_order(self) -> CourseIn:
        if self.ends_on < self.starts_on:
            raise ValueError("ends_on must not be before starts_on")
        return self


class CourseOut(BaseModel):
    code: str
    client_ref: str
    title: str
    team_code: str
    unit_code: str
    unit_path: list[str] | None = Field(description="Known once the registry has confirmed the unit.")
    resolved_from: str | None = Field(
        default=None,
        description="The unit code the course named, when that unit had been merged into another: the course "
        "is scheduled (and counted) in its successor, `unit_code`. Absent when the named unit takes courses itself.",
    )
    audience: Audience
    mode: Mode
    topics: list[Topic]
    starts_on: date
    ends_on: date
    capacity: int | None
    status: CourseStatus
    problem: str | None = Field(default=None, description="Why a course is still pending, or was rejected.")
    counting: Counting | None = Field(
        description="roster once anyone is enrolled; head_count while only head counts were recorded."
    )
    participants: NonNegative = Field(description="The counted course_participants figure (DOMAIN.md).")
    completions: NonNegative = Field(description="The counted course_completions figure (DOMAIN.md).")
    enrolled: NonNegative
    completed_participants: NonNegative = Field(description="Enrolled participants marked complete.")
    largest_head_count: NonNegative
    sessions_held: NonNegative
    started_on: date | None = None
    final_participants: NonNegative | None = None
    final_completions: NonNegative | None = None
    cancel_reason: str | None = None
    created_at: datetime


class HeadCount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: Count


class Roster(BaseModel):
    model_config = ConfigDict(extra="forbid")
    participant_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(max_length=10_000)

    @field_validator("participant_ids")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("participant_ids must not repeat")
        return v


class SessionIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "client_ref": "tab-07/s/1",
                    "held_on": "2025-07-05",
                    "duration_minutes": 90,
                    "attendance": {"count": 38},
                },
                {
                    "client_ref": "tab-07/s/2",
                    "held_on": "2025-07-06",
                    "duration_minutes": 120,
                    "attendance": {"participant_ids": ["3f2c9a1e7b4d4e0f9a8b7c6d5e4f3a2b"]},
                },
            ]
        },
    )

    client_ref: ClientRef
    held_on: date = Field(description="Local date (Asia/Ho_Chi_Minh) the session took place.")
    duration_minutes: int = Field(gt=0, le=24 * 60)
    attendance: HeadCount | Roster = Field(description='{"count": n} or {"participant_ids": [...]}')


class SessionOut(BaseModel):
    id: str
    client_ref: str
    course_code: str
    held_on: date
    duration_minutes: int
    attendance_kind: Counting
    attendance: NonNegative
    participant_ids: list[str] | None = None


class BatchIn(BaseModel):
    """Up to 500 items, each validated on its own: one bad item never blocks the others."""

    model_config = ConfigDict(extra="forbid")
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)


class SessionBatchIn(BatchIn):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "client_ref": "tab-07/s/1",
                            "held_on": "2025-07-05",
                            "duration_minutes": 90,
                            "attendance": {"count": 38},
                        }
                    ]
                }
            ]
        }
    )


class BatchItemResult(BaseModel):
    client_ref: str | None
    status: BatchStatus
    id: str | None = None
    problem: dict[str, Any] | None = Field(default=None, description="RFC 9457 problem of a rejected item.")


class BatchOut(BaseModel):
    items: list[BatchItemResult] = Field(description="One result per request item, in request order.")


class ParticipantIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"client_ref": "tab-07/p/1", "display_name": "Nguyễn Thị Hương", "birth_year": 1956, "group": "elderly"}
            ]
        },
    )

    client_ref: ClientRef
    display_name: str | None = Field(default=None, max_length=200, description="Personal data; never in events.")
    birth_year: int | None = Field(default=None, ge=1900, le=2100)
    group: ParticipantGroup

    @field_validator("display_name")
    @classmethod
    def _name_nfc(cls, v: str | None) -> str | None:
        return _nfc(v)


class ParticipantBatchIn(BatchIn):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"client_ref": "tab-07/p/1", "display_name": "Nguyễn Thị Hương", "group": "elderly"},
                        {"client_ref": "tab-07/p/2", "display_name": "Trần Văn Đức", "group": "middle_aged"},
                    ]
                }
            ]
        }
    )


class ParticipantStatus(StrEnum):
    enrolled = "enrolled"
    completed = "completed"


class ParticipantOut(BaseModel):
    id: str
    client_ref: str
    course_code: str
    display_name: str | None
    birth_year: int | None
    group: ParticipantGroup
    status: ParticipantStatus
    enrolled_at: datetime


class CancelIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "Bão số 3: lớp học tạm dừng"}]}
    )
    reason: str = Field(min_length=1, max_length=500)

    @field_validator("reason")
    @classmethod
    def _reason_nfc(cls, v: str) -> str:
        return unicodedata.normalize("NFC", v)


class CompleteIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"final_participants": 42, "final_completions": 35}, {}]},
    )
    final_participants: Count | None = None
    final_completions: Count | None = None
