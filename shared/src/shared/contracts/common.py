"""Types shared by several event contracts."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NonNegative = Annotated[int, Field(ge=0)]
# Ancestors of a unit from the province down to the unit itself, e.g. ["QN", "QN-HALONG"]. Events
# carry it so that consumers (metrics rollups, scope checks) never depend on cross-topic ordering.
UnitPath = Annotated[list[str], Field(min_length=1, description="Unit codes from the province root down to the unit.")]


class Contract(BaseModel):
    """Base of every payload: frozen and strict about unknown fields on our side."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Change(Contract):
    """A figure before and after the event, so consumers can apply the difference."""

    before: NonNegative
    after: NonNegative


class UnitKind(StrEnum):
    province = "province"
    commune = "commune"
    ward = "ward"
    special_zone = "special_zone"
    school = "school"


class TeamKind(StrEnum):
    permanent = "permanent"
    mobile = "mobile"
    literacy = "literacy"
    campaign = "campaign"


class Role(StrEnum):
    union_member = "union_member"
    youth = "youth"
    student = "student"
    lecturer = "lecturer"


class Skill(StrEnum):
    it = "it"
    vneid = "vneid"
    teaching = "teaching"
    media = "media"


class Indicator(StrEnum):
    """The indicator catalogue of DOMAIN.md; names are shared by targets, REST and Prometheus."""

    teams = "teams"
    volunteers = "volunteers"
    households_visited = "households_visited"
    people_supported = "people_supported"
    vneid_installs = "vneid_installs"
    online_applications = "online_applications"
    courses = "courses"
    course_participants = "course_participants"
    course_completions = "course_completions"
    outreach_posts = "outreach_posts"
    # Breakdowns the reports quote (see the metrics service's indicator catalogue).
    people_supported_by_area = "people_supported_by_area"
    households_by_area = "households_by_area"
    people_supported_by_group = "people_supported_by_group"
    vneid_activations = "vneid_activations"
    courses_by_mode = "courses_by_mode"
    course_participants_by_mode = "course_participants_by_mode"
    volunteers_by_role = "volunteers_by_role"
    volunteers_by_skill = "volunteers_by_skill"
    team_members = "team_members"


class AgeBand(StrEnum):
    """A volunteer's age, in the bands the union reports by: events carry no birth year (.v2)."""

    under_16 = "under_16"
    from_16_to_30 = "16_30"
    from_31_to_45 = "31_45"
    from_46_to_60 = "46_60"
    over_60 = "over_60"

    @classmethod
    def of(cls, birth_year: int, year: int) -> AgeBand:
        """The band of someone born in ``birth_year``, in ``year`` (age as of the year's end)."""
        age = year - birth_year
        if age < 16:
            return cls.under_16
        if age <= 30:
            return cls.from_16_to_30
        if age <= 45:
            return cls.from_31_to_45
        if age <= 60:
            return cls.from_46_to_60
        return cls.over_60


class Setting(StrEnum):
    household = "household"
    service_centre = "service_centre"


class Area(StrEnum):
    remote = "remote"
    border = "border"
    island = "island"
    rural = "rural"
    urban = "urban"


class Channel(StrEnum):
    fanpage = "fanpage"
    newspaper = "newspaper"
    visual = "visual"


class Audience(StrEnum):
    youth_children = "youth_children"
    elderly_middle_aged = "elderly_middle_aged"
    general = "general"


class Mode(StrEnum):
    in_person = "in_person"
    online = "online"


class Topic(StrEnum):
    vneid = "vneid"
    online_public_services = "online_public_services"
    digital_skills = "digital_skills"
    online_safety = "online_safety"
    other = "other"


class ParticipantGroup(StrEnum):
    youth = "youth"
    child = "child"
    elderly = "elderly"
    middle_aged = "middle_aged"
    other = "other"


__all__ = [
    "Area",
    "Audience",
    "Change",
    "Channel",
    "Contract",
    "Indicator",
    "Mode",
    "NonNegative",
    "ParticipantGroup",
    "Role",
    "Setting",
    "Skill",
    "TeamKind",
    "Topic",
    "UnitKind",
    "UnitPath",
    "date",
]
