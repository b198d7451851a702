"""Events published by the registry service on ``registry.events.v1``.

Key: the unit code, team code, volunteer id, ``<team_code>/<volunteer_id>`` for a membership, or the
campaign code. Volunteers' names and contact details never appear here.
"""

from __future__ import annotations

from datetime import date

from pydantic import Field

from shared.contracts.common import AgeBand, Contract, Indicator, Role, Skill, TeamKind, UnitKind, UnitPath

PREFIX = "org.youthunion.registry."
UNIT_CREATED = PREFIX + "unit.created.v1"
UNIT_UPDATED = PREFIX + "unit.updated.v1"
TEAM_CREATED = PREFIX + "team.created.v1"
TEAM_UPDATED = PREFIX + "team.updated.v1"
TEAM_DEACTIVATED = PREFIX + "team.deactivated.v1"
# .v1 carried the birth year; producers send .v2 (an age band) since contract v2. Both stay readable:
# the log keeps every .v1 event ever sent.
VOLUNTEER_REGISTERED = PREFIX + "volunteer.registered.v1"
VOLUNTEER_UPDATED = PREFIX + "volunteer.updated.v1"
VOLUNTEER_REGISTERED_V2 = PREFIX + "volunteer.registered.v2"
VOLUNTEER_UPDATED_V2 = PREFIX + "volunteer.updated.v2"
VOLUNTEER_LEFT = PREFIX + "volunteer.left.v1"
MEMBERSHIP_STARTED = PREFIX + "membership.started.v1"
MEMBERSHIP_ENDED = PREFIX + "membership.ended.v1"
UNIT_MERGED = PREFIX + "unit.merged.v1"
UNIT_SPLIT = PREFIX + "unit.split.v1"
UNIT_CLOSED = PREFIX + "unit.closed.v1"
CAMPAIGN_CREATED = PREFIX + "campaign.created.v1"
CAMPAIGN_TARGETS_SET = PREFIX + "campaign.targets_set.v1"


class UnitCreated(Contract):
    """A unit joined the organisation tree."""

    code: str
    name: str = Field(description="Official name in Vietnamese (NFC).")
    kind: UnitKind
    parent_code: str | None
    path: UnitPath


class UnitUpdated(Contract):
    """A unit's name, kind or parent changed; ``previous_path`` is its path before the change."""

    code: str
    name: str
    kind: UnitKind
    parent_code: str | None
    path: UnitPath
    previous_path: UnitPath


class UnitMerged(Contract):
    """A unit was merged into ``successor_code``.

    Its teams, volunteers, child units and campaign targets moved to the successor before this
    event; from now on its code resolves to the successor, and its history counts under it.
    """

    code: str
    successor_code: str
    successor_path: UnitPath
    merged_on: date


class TeamAssignment(Contract):
    team_code: str
    unit_code: str


class UnitSplit(Contract):
    """A unit was split into ``successors``; ``teams`` says where each of its teams went.

    The unit itself is closed: no new records, its history stays under its own code and parent.
    """

    code: str
    successors: list[str] = Field(min_length=1)
    teams: list[TeamAssignment]
    split_on: date


class UnitClosed(Contract):
    """A unit takes no new records; its history stays where it is."""

    code: str
    path: UnitPath
    reason: str = Field(description="Why, in the words of whoever closed it.")
    closed_on: date


class TeamCreated(Contract):
    code: str
    name: str
    kind: TeamKind
    unit_code: str
    unit_path: UnitPath
    base: str | None = Field(default=None, description="Public-administration centre the team is based at.")
    campaign_code: str | None = None


class TeamUpdated(Contract):
    """A team changed; ``previous_*`` let consumers move its count between kinds and units."""

    code: str
    name: str
    kind: TeamKind
    unit_code: str
    unit_path: UnitPath
    base: str | None = None
    campaign_code: str | None = None
    active: bool
    previous_kind: TeamKind
    previous_unit_path: UnitPath
    members: int | None = Field(
        default=None, ge=0, description="Active members, which move with the team's kind and unit."
    )
    previous_active: bool | None = Field(default=None, description="Whether it was active before this change.")


class TeamDeactivated(Contract):
    code: str
    kind: TeamKind
    unit_code: str
    unit_path: UnitPath
    members: int | None = Field(default=None, ge=0, description="Active members when it was deactivated.")


class VolunteerRegistered(Contract):
    volunteer_id: str
    unit_code: str
    unit_path: UnitPath
    roles: list[Role]
    skills: list[Skill]
    birth_year: int


class VolunteerUpdated(Contract):
    volunteer_id: str
    unit_code: str
    unit_path: UnitPath
    roles: list[Role]
    skills: list[Skill]
    birth_year: int
    active: bool
    previous_unit_path: UnitPath
    previous_roles: list[Role] | None = None
    previous_skills: list[Skill] | None = None


class VolunteerRegisteredV2(Contract):
    """A volunteer joined: no personal data but an age band."""

    volunteer_id: str
    unit_code: str
    unit_path: UnitPath
    roles: list[Role]
    skills: list[Skill]
    age_band: AgeBand


class VolunteerUpdatedV2(Contract):
    volunteer_id: str
    unit_code: str
    unit_path: UnitPath
    roles: list[Role]
    skills: list[Skill]
    age_band: AgeBand
    active: bool
    previous_unit_path: UnitPath
    previous_roles: list[Role] | None = None
    previous_skills: list[Skill] | None = None


class VolunteerLeft(Contract):
    volunteer_id: str
    unit_code: str
    unit_path: UnitPath
    roles: list[Role] = Field(default_factory=list)
    skills: list[Skill] = Field(default_factory=list)


class MembershipStarted(Contract):
    team_code: str
    volunteer_id: str
    since: date
    team_kind: TeamKind | None = Field(default=None, description="The team's kind when the membership started.")
    team_unit_path: UnitPath | None = Field(default=None, description="The team's unit path then.")
    team_active: bool | None = Field(default=None, description="Whether the team was active then.")


class MembershipEnded(Contract):
    team_code: str
    volunteer_id: str
    until: date
    team_kind: TeamKind | None = None
    team_unit_path: UnitPath | None = None
    team_active: bool | None = None


class Target(Contract):
    indicator: Indicator
    unit_code: str
    value: int = Field(ge=0)
    merged_from: list[str] = Field(
        default_factory=list,
        description="Units merged into ``unit_code`` whose targets for this indicator were added into ``value``.",
    )


class CampaignCreated(Contract):
    code: str
    name: str
    starts_on: date
    ends_on: date
    targets: list[Target]


class CampaignTargetsSet(Contract):
    """The campaign's whole target list, replacing the previous one."""

    code: str
    targets: list[Target]


EVENTS: dict[str, type[Contract]] = {
    UNIT_CREATED: UnitCreated,
    UNIT_UPDATED: UnitUpdated,
    UNIT_MERGED: UnitMerged,
    UNIT_SPLIT: UnitSplit,
    UNIT_CLOSED: UnitClosed,
    TEAM_CREATED: TeamCreated,
    TEAM_UPDATED: TeamUpdated,
    TEAM_DEACTIVATED: TeamDeactivated,
    VOLUNTEER_REGISTERED: VolunteerRegistered,
    VOLUNTEER_UPDATED: VolunteerUpdated,
    VOLUNTEER_REGISTERED_V2: VolunteerRegisteredV2,
    VOLUNTEER_UPDATED_V2: VolunteerUpdatedV2,
    VOLUNTEER_LEFT: VolunteerLeft,
    MEMBERSHIP_STARTED: MembershipStarted,
    MEMBERSHIP_ENDED: MembershipEnded,
    CAMPAIGN_CREATED: CampaignCreated,
    CAMPAIGN_TARGETS_SET: CampaignTargetsSet,
}
