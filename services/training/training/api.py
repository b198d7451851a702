"""Routes of the training service (``/v1``): parse, authorize, call the service, shape the answer."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from pydantic import Discriminator, Tag

from shared.auth import READ_ROLES, require_role
from shared.contracts.common import Audience, Mode
from shared.http import CurrentPrincipal
from shared.mongo import Document
from shared.pagination import MAX_LIMIT, Page, next_cursor
from shared.registry_view import KnownUnit
from training.schemas import (
    BatchOut,
    CancelIn,
    CompleteIn,
    Counting,
    CourseIn,
    CourseOut,
    CourseStatus,
    ParticipantBatchIn,
    ParticipantIn,
    ParticipantOut,
    SessionBatchIn,
    SessionIn,
    SessionOut,
)
from training.service import TrainingService

router = APIRouter(prefix="/v1", tags=["training"])


def _service(request: Request) -> TrainingService:
    service: TrainingService = request.app.state.training
    return service


Service = Annotated[TrainingService, Depends(_service)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")]
Cursor = Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page.")]
Code = Annotated[str, Path(max_length=64)]


def _body_kind(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "items" in value else "body"


# The single form is tagged "body" because the problem renderer drops that location part, so its
# errors name plain fields ("group") rather than "single.group".
ParticipantBody = Annotated[
    Annotated[ParticipantIn, Tag("body")] | Annotated[ParticipantBatchIn, Tag("batch")],
    Discriminator(_body_kind),
    Body(description='One participant, or a batch as {"items": [...]} (at most 500).'),
]


def course_out(d: Document) -> CourseOut:
    enrolled = d["enrolled"]
    counting = Counting.roster if enrolled > 0 else (Counting.head_count if d["sessions_held"] > 0 else None)
    return CourseOut(
        code=d["_id"],
        client_ref=d["client_ref"],
        title=d["title"],
        team_code=d["team_code"],
        unit_code=d["unit_code"],
        unit_path=d.get("unit_path"),
        resolved_from=d.get("resolved_from"),
        audience=d["audience"],
        mode=d["mode"],
        topics=d["topics"],
        starts_on=d["starts_on"],
        ends_on=d["ends_on"],
        capacity=d.get("capacity"),
        status=d["status"],
        problem=d.get("problem"),
        counting=counting,
        participants=d["participants_counted"],
        completions=d["completions_counted"],
        enrolled=enrolled,
        completed_participants=d["completed"],
        largest_head_count=d["largest_head_count"],
        sessions_held=d["sessions_held"],
        started_on=d.get("started_on"),
        final_participants=d.get("final_participants"),
        final_completions=d.get("final_completions"),
        cancel_reason=d.get("cancel_reason"),
        created_at=d["created_at"],
    )


def participant_out(d: Document) -> ParticipantOut:
    return ParticipantOut(
        id=d["_id"],
        client_ref=d["client_ref"],
        course_code=d["course_code"],
        display_name=d.get("display_name"),
        birth_year=d.get("birth_year"),
        group=d["group"],
        status=d["status"],
        enrolled_at=d["enrolled_at"],
    )


def session_out(d: Document) -> SessionOut:
    return SessionOut(
        id=d["_id"],
        client_ref=d["client_ref"],
        course_code=d["course_code"],
        held_on=d["held_on"],
        duration_minutes=d["duration_minutes"],
        attendance_kind=d["attendance_kind"],
        attendance=d["attendance"],
        participant_ids=d.get("participant_ids"),
    )


def _created(response: Response, created: bool) -> None:
    response.status_code = 201 if created else 200


@router.post(
    "/courses",
    status_code=201,
    response_model=CourseOut,
    summary="Schedule a course (idempotent by client_ref: a retry answers 200 with the stored course)",
    responses={
        200: {"model": CourseOut, "description": "Already recorded under this client_ref"},
        409: {
            "description": "Problem `unit-closed`: the unit was closed or split and takes no new courses "
            "(a merged unit's code is accepted for its successor, see `resolved_from`)"
        },
    },
)
async def create_course(body: CourseIn, principal: CurrentPrincipal, service: Service, response: Response) -> CourseOut:
    doc, created = await service.create_course(principal, body)
    _created(response, created)
    return course_out(doc)


@router.get(
    "/units/{code}",
    summary="A unit as training knows it from the registry: whether courses naming it are taken, and for which unit",
    response_model=KnownUnit,
    tags=["units"],
)
async def known_unit(code: Code, principal: CurrentPrincipal, service: Service) -> KnownUnit:
    require_role(principal, *READ_ROLES)
    return await service.known_unit(code)


@router.get("/courses", response_model=Page[CourseOut], summary="List courses in your scope")
async def list_courses(
    principal: CurrentPrincipal,
    service: Service,
    unit: Annotated[str | None, Query(max_length=64, description="Only this unit's subtree.")] = None,
    team: Annotated[str | None, Query(max_length=64, description="Only this team's courses.")] = None,
    audience: Audience | None = None,
    mode: Mode | None = None,
    status: CourseStatus | None = None,
    starts_from: Annotated[date | None, Query(description="Courses starting on or after this date.")] = None,
    starts_to: Annotated[date | None, Query(description="Courses starting on or before this date.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[CourseOut]:
    filters = {
        "unit_code": unit,
        "team_code": team,
        "audience": audience.value if audience else None,
        "mode": mode.value if mode else None,
        "status": status.value if status else None,
        "starts_from": starts_from,
        "starts_to": starts_to,
    }
    docs = await service.list_courses(principal, filters, cursor, limit)
    return Page[CourseOut](items=[course_out(d) for d in docs[:limit]], next_cursor=next_cursor(docs, limit))


@router.get("/courses/{code}", response_model=CourseOut, summary="One course with its counted figures")
async def get_course(code: Code, principal: CurrentPrincipal, service: Service) -> CourseOut:
    return course_out(await service.get_course(principal, code))


@router.post(
    "/courses/{code}:cancel",
    response_model=CourseOut,
    summary="Cancel a course; it stops counting (cancelling twice answers the same)",
)
async def cancel_course(code: Code, body: CancelIn, principal: CurrentPrincipal, service: Service) -> CourseOut:
    return course_out(await service.cancel_course(principal, code, body))


@router.post(
    "/courses/{code}:complete",
    response_model=CourseOut,
    summary="Complete a course with its final counts (completing twice answers the same, no second event)",
)
async def complete_course(
    code: Code, principal: CurrentPrincipal, service: Service, body: CompleteIn | None = None
) -> CourseOut:
    return course_out(await service.complete_course(principal, code, body or CompleteIn()))


@router.post(
    "/courses/{code}/sessions",
    status_code=201,
    response_model=SessionOut,
    summary="Record a held session with a head count or a list of participant ids (idempotent by client_ref)",
    responses={200: {"model": SessionOut, "description": "Already recorded under this client_ref"}},
)
async def record_session(
    code: Code, body: SessionIn, principal: CurrentPrincipal, service: Service, response: Response
) -> SessionOut:
    doc, created = await service.record_session(principal, code, body)
    _created(response, created)
    return session_out(doc)


@router.post(
    "/courses/{code}/sessions:batch",
    response_model=BatchOut,
    summary="Record up to 500 sessions (offline upload); one result per item, in request order",
)
async def record_sessions_batch(
    code: Code, body: SessionBatchIn, principal: CurrentPrincipal, service: Service
) -> BatchOut:
    return BatchOut(items=await service.record_sessions_batch(principal, code, body.items))


@router.get("/courses/{code}/sessions", response_model=Page[SessionOut], summary="Sessions of a course")
async def list_sessions(
    code: Code, principal: CurrentPrincipal, service: Service, limit: Limit = 50, cursor: Cursor = None
) -> Page[SessionOut]:
    docs = await service.list_sessions(principal, code, cursor, limit)
    return Page[SessionOut](items=[session_out(d) for d in docs[:limit]], next_cursor=next_cursor(docs, limit))


@router.post(
    "/courses/{code}/participants",
    status_code=201,
    response_model=ParticipantOut | BatchOut,
    summary="Enrol one participant (201, or 200 if the client_ref is known) or a batch of up to 500 (200)",
    responses={
        200: {
            "model": ParticipantOut | BatchOut,
            "description": "A batch's results, or the participant already enrolled under this client_ref",
        }
    },
)
async def enrol(
    code: Code, body: ParticipantBody, principal: CurrentPrincipal, service: Service, response: Response
) -> ParticipantOut | BatchOut:
    if isinstance(body, ParticipantBatchIn):
        response.status_code = 200
        return BatchOut(items=await service.enrol_batch(principal, code, body.items))
    doc, created = await service.enrol(principal, code, body)
    _created(response, created)
    return participant_out(doc)


@router.get(
    "/courses/{code}/participants",
    response_model=Page[ParticipantOut],
    summary="Enrolled participants (head-count courses have none: see the course's participants figure)",
)
async def list_participants(
    code: Code, principal: CurrentPrincipal, service: Service, limit: Limit = 50, cursor: Cursor = None
) -> Page[ParticipantOut]:
    docs = await service.list_participants(principal, code, cursor, limit)
    return Page[ParticipantOut](items=[participant_out(d) for d in docs[:limit]], next_cursor=next_cursor(docs, limit))


@router.post(
    "/courses/{code}/participants/{participant_id}:complete",
    response_model=ParticipantOut,
    summary="Mark an enrolled participant complete (idempotent)",
)
async def complete_participant(
    code: Code, participant_id: Code, principal: CurrentPrincipal, service: Service
) -> ParticipantOut:
    doc, _ = await service.complete_participant(principal, code, participant_id)
    return participant_out(doc)
