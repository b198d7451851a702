"""Routes of the visits service (all under /v1)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from shared.auth import READ_ROLES, require_role
from shared.contracts.common import Channel, Setting
from shared.http import CurrentPrincipal
from shared.pagination import MAX_LIMIT, Page
from shared.registry_view import KnownUnit
from visits.repository import Document
from visits.schemas import (
    BatchIn,
    BatchItemOut,
    BatchOut,
    OutreachIn,
    OutreachOut,
    PostStatus,
    VisitCorrectionIn,
    VisitIn,
    VisitOut,
    VisitStatus,
    VoidIn,
)
from visits.service import BatchResult, OutreachService, VisitService

router = APIRouter(prefix="/v1")


# async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, one hop per request
# (measured: the largest share of dependency solving under 64 concurrent POSTs).
async def _visits(request: Request) -> VisitService:
    service: VisitService = request.app.state.visits
    return service


async def _outreach(request: Request) -> OutreachService:
    service: OutreachService = request.app.state.outreach
    return service


Visits = Annotated[VisitService, Depends(_visits)]
Outreach = Annotated[OutreachService, Depends(_outreach)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page.")]
UnitFilter = Annotated[str | None, Query(max_length=64, description="Unit code: the unit and its whole subtree.")]
TeamFilter = Annotated[str | None, Query(max_length=64, description="Team code.")]
Code = Annotated[str, Path(max_length=64)]
DateFrom = Annotated[date | None, Query(alias="from", description="First local date, inclusive.")]
DateTo = Annotated[date | None, Query(alias="to", description="Last local date, inclusive.")]

CREATED_STATUS = {"created": 201, "pending": 202, "duplicate": 200}
INTAKE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Already received (same `client_ref`): the existing record"},
    201: {"description": "Recorded"},
    202: {"description": "Held as `pending` until the registry read model knows its team, unit or volunteers"},
    409: {
        "description": "Problem `unit-closed`: the unit was closed or split and takes no new records "
        "(a merged unit's code is accepted for its successor, see `resolved_from`)"
    },
}


def visit_out(doc: Document) -> VisitOut:
    return VisitOut.model_validate({**doc, "id": doc["_id"]})


def post_out(doc: Document) -> OutreachOut:
    return OutreachOut.model_validate({**doc, "id": doc["_id"]})


def batch_out(results: list[BatchResult]) -> BatchOut:
    return BatchOut(
        items=[
            BatchItemOut(
                client_ref=r.client_ref, status=r.status, id=r.id, problem=r.problem, resolved_from=r.resolved_from
            )
            for r in results
        ]
    )


# --- units as this service knows them -------------------------------------------------------------------


@router.get(
    "/units/{code}",
    summary="A unit as visits knows it from the registry: whether records naming it are taken, and for which unit",
    response_model=KnownUnit,
    tags=["units"],
)
async def known_unit(code: Code, principal: CurrentPrincipal, service: Visits) -> KnownUnit:
    require_role(principal, *READ_ROLES)
    return await service.known_unit(code)


# --- visits --------------------------------------------------------------------------------------------


@router.post(
    "/visits", summary="Record a visit (idempotent on client_ref)", response_model=VisitOut, responses=INTAKE_RESPONSES
)
async def record_visit(body: VisitIn, principal: CurrentPrincipal, service: Visits, response: Response) -> VisitOut:
    doc, outcome = await service.record(principal, body)
    response.status_code = CREATED_STATUS[outcome]
    return visit_out(doc)


@router.post(
    "/visits:batch",
    summary="Upload up to 500 offline visit records; each is accepted or rejected on its own",
    response_model=BatchOut,
)
async def record_visit_batch(body: BatchIn, principal: CurrentPrincipal, service: Visits) -> BatchOut:
    return batch_out(await service.record_batch(principal, body.items))


@router.get("/visits", summary="List visits", response_model=Page[VisitOut])
async def list_visits(
    principal: CurrentPrincipal,
    service: Visits,
    unit: UnitFilter = None,
    team: TeamFilter = None,
    date_from: DateFrom = None,
    date_to: DateTo = None,
    setting: Setting | None = None,
    status: VisitStatus | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[VisitOut]:
    require_role(principal, *READ_ROLES)
    docs, next_cursor = await service.list_visits(
        principal,
        unit=unit,
        team=team,
        date_from=date_from,
        date_to=date_to,
        setting=setting.value if setting else None,
        status=status,
        limit=limit,
        cursor=cursor,
    )
    return Page[VisitOut](items=[visit_out(d) for d in docs], next_cursor=next_cursor)


@router.get("/visits/{visit_id}", summary="Get a visit, including its status", response_model=VisitOut)
async def get_visit(visit_id: Code, principal: CurrentPrincipal, service: Visits) -> VisitOut:
    require_role(principal, *READ_ROLES)
    return visit_out(await service.get(principal, visit_id))


@router.post(
    "/visits/{visit_id}:correct",
    summary="Replace a recorded visit with its corrected record",
    response_model=VisitOut,
    responses={409: INTAKE_RESPONSES[409]},
)
async def correct_visit(
    visit_id: Code, body: VisitCorrectionIn, principal: CurrentPrincipal, service: Visits
) -> VisitOut:
    return visit_out(await service.correct(principal, visit_id, body))


@router.post("/visits/{visit_id}:void", summary="Void a visit (idempotent)", response_model=VisitOut)
async def void_visit(visit_id: Code, body: VoidIn, principal: CurrentPrincipal, service: Visits) -> VisitOut:
    return visit_out(await service.void(principal, visit_id, body.reason))


# --- outreach posts --------------------------------------------------------------------------------------


@router.post(
    "/outreach",
    summary="Record an outreach post (idempotent on client_ref)",
    response_model=OutreachOut,
    responses=INTAKE_RESPONSES,
)
async def record_post(
    body: OutreachIn, principal: CurrentPrincipal, service: Outreach, response: Response
) -> OutreachOut:
    doc, outcome = await service.record(principal, body)
    response.status_code = CREATED_STATUS[outcome]
    return post_out(doc)


@router.post(
    "/outreach:batch",
    summary="Upload up to 500 outreach posts; each is accepted or rejected on its own",
    response_model=BatchOut,
)
async def record_post_batch(body: BatchIn, principal: CurrentPrincipal, service: Outreach) -> BatchOut:
    return batch_out(await service.record_batch(principal, body.items))


@router.get("/outreach", summary="List outreach posts", response_model=Page[OutreachOut])
async def list_posts(
    principal: CurrentPrincipal,
    service: Outreach,
    unit: UnitFilter = None,
    team: TeamFilter = None,
    channel: Channel | None = None,
    date_from: DateFrom = None,
    date_to: DateTo = None,
    status: PostStatus | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[OutreachOut]:
    require_role(principal, *READ_ROLES)
    docs, next_cursor = await service.list_posts(
        principal,
        unit=unit,
        team=team,
        channel=channel.value if channel else None,
        date_from=date_from,
        date_to=date_to,
        status=status,
        limit=limit,
        cursor=cursor,
    )
    return Page[OutreachOut](items=[post_out(d) for d in docs], next_cursor=next_cursor)


@router.get("/outreach/{post_id}", summary="Get an outreach post, including its status", response_model=OutreachOut)
async def get_post(post_id: Code, principal: CurrentPrincipal, service: Outreach) -> OutreachOut:
    require_role(principal, *READ_ROLES)
    return post_out(await service.get(principal, post_id))


@router.post("/outreach/{post_id}:void", summary="Void an outreach post (idempotent)", response_model=OutreachOut)
async def void_post(post_id: Code, body: VoidIn, principal: CurrentPrincipal, service: Outreach) -> OutreachOut:
    return post_out(await service.void(principal, post_id, body.reason))
