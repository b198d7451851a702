"""Registry routes: parse, authenticate, call the service, shape the response."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from registry.roster_file import ROSTER_FILE_BODY, ROSTER_FILE_DESCRIPTION, read_roster_file, roster_file_type
from registry.schemas import (
    CampaignIn,
    CampaignOut,
    CloseIn,
    MemberIn,
    MembershipOut,
    MergeIn,
    MergeOut,
    RosterIn,
    RosterOut,
    SplitIn,
    SplitOut,
    TargetsIn,
    TeamIn,
    TeamOut,
    TeamPatch,
    UnitIn,
    UnitOut,
    UnitPatch,
    UnitStatus,
    VolunteerIn,
    VolunteerLeave,
    VolunteerOut,
    VolunteerPatch,
)
from registry.service import RegistryService
from shared.contracts.common import Skill, TeamKind, UnitKind
from shared.http import PROBLEM_JSON, CurrentPrincipal
from shared.pagination import MAX_LIMIT, Page


def _service(request: Request) -> RegistryService:
    service: RegistryService = request.app.state.registry
    return service


Service = Annotated[RegistryService, Depends(_service)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1 to {MAX_LIMIT}.")]
Cursor = Annotated[str | None, Query(max_length=512, description="`next_cursor` from the previous page.")]
UnitCode = Annotated[str, Path(max_length=64, description="Unit code, e.g. QN-HALONG.", examples=["QN-HALONG"])]
TeamCode = Annotated[str, Path(max_length=64, description="Team code.", examples=["HL-TT01"])]
VolunteerId = Annotated[str, Path(max_length=64, description="Server-generated volunteer id (uuid4).")]
CampaignCode = Annotated[str, Path(max_length=64, description="Campaign code.", examples=["PEAK90"])]
SubtreeOf = Annotated[
    str | None,
    Query(max_length=64, description="Only records in this unit's subtree (the unit itself and everything below it)."),
]

router = APIRouter(prefix="/v1")

# --- units ------------------------------------------------------------------------------------------


@router.post("/units", status_code=201, response_model=UnitOut, tags=["units"], summary="Add a unit to the tree")
async def create_unit(body: UnitIn, principal: CurrentPrincipal, service: Service) -> UnitOut:
    return await service.create_unit(principal, body)


@router.get("/units", response_model=Page[UnitOut], tags=["units"], summary="List units")
async def list_units(
    principal: CurrentPrincipal,
    service: Service,
    parent_code: Annotated[str | None, Query(max_length=64, description="Only direct children of this unit.")] = None,
    kind: Annotated[UnitKind | None, Query(description="Only units of this kind.")] = None,
    status: Annotated[
        UnitStatus | None, Query(description="Only units in this state (active, merged or closed).")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[UnitOut]:
    return await service.list_units(parent_code=parent_code, kind=kind, status=status, limit=limit, cursor=cursor)


@router.post(
    "/units:merge",
    response_model=MergeOut,
    tags=["units"],
    summary="Merge units into a surviving or new unit, with their child units, teams, volunteers and targets",
    description="Re-sending the same request finishes a merge a crash interrupted; after it finished it "
    "changes nothing. Merged units stay readable under their codes and take no new records.",
)
async def merge_units(body: MergeIn, principal: CurrentPrincipal, service: Service) -> MergeOut:
    return await service.merge_units(principal, body)


@router.get("/units/{code}", response_model=UnitOut, tags=["units"], summary="Get a unit")
async def get_unit(code: UnitCode, principal: CurrentPrincipal, service: Service) -> UnitOut:
    return await service.get_unit(code)


@router.patch(
    "/units/{code}",
    response_model=UnitOut,
    tags=["units"],
    summary="Rename a unit, change its kind or move it (with its subtree) under another parent",
)
async def update_unit(code: UnitCode, body: UnitPatch, principal: CurrentPrincipal, service: Service) -> UnitOut:
    return await service.update_unit(principal, code, body)


@router.post(
    "/units/{code}:split",
    response_model=SplitOut,
    tags=["units"],
    summary="Split a unit into new units beside it, assigning each of its teams; the unit is closed",
    description="Child units must be moved first. Re-sending the same request finishes an interrupted "
    "split; the closed unit keeps its history under its own code.",
)
async def split_unit(code: UnitCode, body: SplitIn, principal: CurrentPrincipal, service: Service) -> SplitOut:
    return await service.split_unit(principal, code, body)


@router.post(
    "/units/{code}:close",
    response_model=UnitOut,
    tags=["units"],
    summary="Close a unit: it takes no new records, its history stays (repeating it changes nothing)",
)
async def close_unit(code: UnitCode, body: CloseIn, principal: CurrentPrincipal, service: Service) -> UnitOut:
    return await service.close_unit(principal, code, body)


# --- teams ------------------------------------------------------------------------------------------


@router.post("/teams", status_code=201, response_model=TeamOut, tags=["teams"], summary="Create a team")
async def create_team(body: TeamIn, principal: CurrentPrincipal, service: Service) -> TeamOut:
    return await service.create_team(principal, body)


@router.get("/teams", response_model=Page[TeamOut], tags=["teams"], summary="List teams")
async def list_teams(
    principal: CurrentPrincipal,
    service: Service,
    unit: SubtreeOf = None,
    kind: Annotated[TeamKind | None, Query(description="Only teams of this kind.")] = None,
    active: Annotated[bool | None, Query(description="true: open teams only; false: deactivated only.")] = None,
    campaign_code: Annotated[str | None, Query(max_length=64, description="Only teams of this campaign.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[TeamOut]:
    return await service.list_teams(
        unit=unit, kind=kind, active=active, campaign_code=campaign_code, limit=limit, cursor=cursor
    )


@router.get("/teams/{code}", response_model=TeamOut, tags=["teams"], summary="Get a team")
async def get_team(code: TeamCode, principal: CurrentPrincipal, service: Service) -> TeamOut:
    return await service.get_team(code)


@router.patch("/teams/{code}", response_model=TeamOut, tags=["teams"], summary="Change a team")
async def update_team(code: TeamCode, body: TeamPatch, principal: CurrentPrincipal, service: Service) -> TeamOut:
    return await service.update_team(principal, code, body)


@router.post(
    "/teams/{code}:deactivate",
    response_model=TeamOut,
    tags=["teams"],
    summary="Close a team (kept as a record; repeating it changes nothing)",
)
async def deactivate_team(code: TeamCode, principal: CurrentPrincipal, service: Service) -> TeamOut:
    return await service.deactivate_team(principal, code)


# --- memberships ------------------------------------------------------------------------------------


@router.post(
    "/teams/{code}/members",
    status_code=201,
    response_model=MembershipOut,
    tags=["memberships"],
    summary="Start a volunteer's membership of a team",
)
async def add_member(code: TeamCode, body: MemberIn, principal: CurrentPrincipal, service: Service) -> MembershipOut:
    return await service.add_member(principal, code, body)


@router.get(
    "/teams/{code}/members",
    response_model=Page[MembershipOut],
    tags=["memberships"],
    summary="List a team's members",
)
async def list_members(
    code: TeamCode,
    principal: CurrentPrincipal,
    service: Service,
    include_ended: Annotated[bool, Query(description="Also list ended memberships (history).")] = False,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[MembershipOut]:
    return await service.list_members(code, include_ended=include_ended, limit=limit, cursor=cursor)


@router.delete(
    "/teams/{code}/members/{volunteer_id}",
    response_model=MembershipOut,
    tags=["memberships"],
    summary="End a membership (kept as history)",
)
async def end_member(
    code: TeamCode,
    volunteer_id: VolunteerId,
    principal: CurrentPrincipal,
    service: Service,
    until: Annotated[
        date | None, Query(description="Last day of the membership; today (Asia/Ho_Chi_Minh) if omitted.")
    ] = None,
) -> MembershipOut:
    return await service.end_member(principal, code, volunteer_id, until)


# --- volunteers -------------------------------------------------------------------------------------


@router.post(
    "/volunteers:import",
    response_model=RosterOut,
    tags=["volunteers"],
    summary="Register up to 500 volunteers with their team memberships (a roster); one result per row",
)
async def import_roster(body: RosterIn, principal: CurrentPrincipal, service: Service) -> RosterOut:
    return RosterOut(items=await service.import_roster(principal, body.items))


@router.post(
    "/volunteers:import-file",
    response_model=RosterOut,
    tags=["volunteers"],
    summary="Register volunteers from a roster spreadsheet (XLSX or CSV, up to 500 rows); one result per row",
    description=ROSTER_FILE_DESCRIPTION,
    responses={
        415: {
            "description": "The body is not an XLSX or CSV file",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    },
    openapi_extra={"requestBody": ROSTER_FILE_BODY},
)
async def import_roster_file(request: Request, principal: CurrentPrincipal, service: Service) -> RosterOut:
    service.authorize_roster_import(principal)
    media_type = roster_file_type(request.headers.get("content-type"))
    # Unpacking a workbook is CPU work that grows with the file, so it runs off the event loop.
    sheet = await run_in_threadpool(read_roster_file, await request.body(), media_type)
    results = await service.import_roster(principal, [r.item for r in sheet])
    return RosterOut(items=[res.model_copy(update={"row": r.row}) for r, res in zip(sheet, results, strict=True)])


@router.post(
    "/volunteers", status_code=201, response_model=VolunteerOut, tags=["volunteers"], summary="Register a volunteer"
)
async def register_volunteer(body: VolunteerIn, principal: CurrentPrincipal, service: Service) -> VolunteerOut:
    return await service.register_volunteer(principal, body)


@router.get(
    "/volunteers",
    response_model=Page[VolunteerOut],
    tags=["volunteers"],
    summary="List volunteers (personal data masked unless admin or a manager of their unit)",
)
async def list_volunteers(
    principal: CurrentPrincipal,
    service: Service,
    unit: SubtreeOf = None,
    skill: Annotated[Skill | None, Query(description="Only volunteers with this skill.")] = None,
    team: Annotated[str | None, Query(max_length=64, description="Only current members of this team.")] = None,
    active: Annotated[bool | None, Query(description="true: not left; false: left only.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[VolunteerOut]:
    return await service.list_volunteers(
        principal,
        unit=unit,
        skill=skill.value if skill else None,
        team=team,
        active=active,
        limit=limit,
        cursor=cursor,
    )


@router.get("/volunteers/{volunteer_id}", response_model=VolunteerOut, tags=["volunteers"], summary="Get a volunteer")
async def get_volunteer(volunteer_id: VolunteerId, principal: CurrentPrincipal, service: Service) -> VolunteerOut:
    return await service.get_volunteer(principal, volunteer_id)


@router.patch(
    "/volunteers/{volunteer_id}", response_model=VolunteerOut, tags=["volunteers"], summary="Change a volunteer"
)
async def update_volunteer(
    volunteer_id: VolunteerId, body: VolunteerPatch, principal: CurrentPrincipal, service: Service
) -> VolunteerOut:
    return await service.update_volunteer(principal, volunteer_id, body)


@router.post(
    "/volunteers/{volunteer_id}:leave",
    response_model=VolunteerOut,
    tags=["volunteers"],
    summary="Mark a volunteer as left (ends their current memberships)",
)
async def volunteer_leaves(
    volunteer_id: VolunteerId,
    principal: CurrentPrincipal,
    service: Service,
    body: VolunteerLeave | None = None,
) -> VolunteerOut:
    return await service.volunteer_leaves(principal, volunteer_id, body.left_on if body else None)


# --- campaigns --------------------------------------------------------------------------------------


@router.post("/campaigns", status_code=201, response_model=CampaignOut, tags=["campaigns"], summary="Create a campaign")
async def create_campaign(body: CampaignIn, principal: CurrentPrincipal, service: Service) -> CampaignOut:
    return await service.create_campaign(principal, body)


@router.get("/campaigns", response_model=Page[CampaignOut], tags=["campaigns"], summary="List campaigns")
async def list_campaigns(
    principal: CurrentPrincipal,
    service: Service,
    active_on: Annotated[date | None, Query(description="Only campaigns whose window contains this date.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[CampaignOut]:
    return await service.list_campaigns(active_on=active_on, limit=limit, cursor=cursor)


@router.get("/campaigns/{code}", response_model=CampaignOut, tags=["campaigns"], summary="Get a campaign")
async def get_campaign(code: CampaignCode, principal: CurrentPrincipal, service: Service) -> CampaignOut:
    return await service.get_campaign(code)


@router.put(
    "/campaigns/{code}/targets",
    response_model=CampaignOut,
    tags=["campaigns"],
    summary="Replace a campaign's whole target list",
)
async def set_targets(
    code: CampaignCode, body: TargetsIn, principal: CurrentPrincipal, service: Service
) -> CampaignOut:
    return await service.set_targets(principal, code, body.targets)
