"""Events published by the visits service on ``visits.events.v1``.

Key: the visit id or the outreach post id. A household appears only as a pseudonymous reference.
Corrections and voids carry the figures they replace or remove, so a consumer can keep exact
totals without its own copy of every visit.
"""

from __future__ import annotations

from datetime import date, datetime

from pydantic import Field

from shared.contracts.common import Area, Channel, Contract, NonNegative, Setting, UnitPath

PREFIX = "org.youthunion.visits."
VISIT_RECORDED = PREFIX + "visit.recorded.v1"
VISIT_CORRECTED = PREFIX + "visit.corrected.v1"
VISIT_VOIDED = PREFIX + "visit.voided.v1"
OUTREACH_PUBLISHED = PREFIX + "outreach.published.v1"
OUTREACH_VOIDED = PREFIX + "outreach.voided.v1"


class People(Contract):
    total: NonNegative
    elderly: NonNegative = 0
    women: NonNegative = 0
    veterans: NonNegative = 0


class Services(Contract):
    vneid_installed: NonNegative = 0
    vneid_activated: NonNegative = 0
    online_applications_l3: NonNegative = 0
    online_applications_l4: NonNegative = 0
    digital_skills_guidance: NonNegative = 0


class VisitFigures(Contract):
    """What a visit contributes to the indicators, and where and when it counts."""

    unit_code: str
    unit_path: UnitPath
    visited_on: date = Field(description="Local date (Asia/Ho_Chi_Minh) of the visit.")
    households: NonNegative
    people: People
    services: Services
    area: Area | None = Field(
        default=None, description="Area type of the visit, so corrections and voids move area figures too."
    )
    team_code: str | None = Field(
        default=None, description="The team that made the visit, so team figures follow corrections and voids."
    )


class VisitRecorded(Contract):
    visit_id: str
    client_ref: str
    team_code: str
    setting: Setting
    area: Area
    household_ref: str | None = Field(default=None, description="Pseudonymous household reference.")
    volunteer_ids: list[str]
    recorded_at: datetime
    figures: VisitFigures


class VisitCorrected(Contract):
    """The full corrected record; ``previous`` are the figures it replaces."""

    visit_id: str
    team_code: str
    setting: Setting
    area: Area
    household_ref: str | None = None
    volunteer_ids: list[str]
    corrected_at: datetime
    figures: VisitFigures
    previous: VisitFigures


class VisitVoided(Contract):
    """The visit no longer counts; ``figures`` are what it had contributed."""

    visit_id: str
    reason: str
    voided_at: datetime
    figures: VisitFigures


class OutreachPublished(Contract):
    post_id: str
    client_ref: str
    unit_code: str
    unit_path: UnitPath
    team_code: str | None = None
    channel: Channel
    published_on: date
    title: str
    url: str | None = None


class OutreachVoided(Contract):
    post_id: str
    reason: str
    unit_code: str
    unit_path: UnitPath
    team_code: str | None = Field(default=None, description="The team that had published the post.")
    channel: Channel
    published_on: date


EVENTS: dict[str, type[Contract]] = {
    VISIT_RECORDED: VisitRecorded,
    VISIT_CORRECTED: VisitCorrected,
    VISIT_VOIDED: VisitVoided,
    OUTREACH_PUBLISHED: OutreachPublished,
    OUTREACH_VOIDED: OutreachVoided,
}
