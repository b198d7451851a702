"""Routes of the metrics API: reads for every role (unit-scoped) and the admin rebuild."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request

from metrics.generations import LiveProjection, RebuildControl, base_topics
from metrics.schemas import CampaignProgress, Freshness, Interval, RebuildAccepted, RebuildStatus, Summary, Timeseries
from metrics.service import MetricsService
from shared.auth import Role, require_role
from shared.contracts.common import Indicator
from shared.http import CurrentPrincipal
from shared.settings import ServiceSettings

router = APIRouter(prefix="/v1", tags=["metrics"])
LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")


def _service(request: Request) -> MetricsService:
    service: MetricsService = request.app.state.metrics
    return service


def _live(request: Request) -> LiveProjection:
    live: LiveProjection = request.app.state.live
    return live


def _rebuild(request: Request) -> RebuildControl:
    control: RebuildControl = request.app.state.rebuild
    return control


def _settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.runtime.settings
    return settings


Service = Annotated[MetricsService, Depends(_service)]
Live = Annotated[LiveProjection, Depends(_live)]
Rebuild = Annotated[RebuildControl, Depends(_rebuild)]
Settings = Annotated[ServiceSettings, Depends(_settings)]
UnitParam = Annotated[
    str | None,
    Query(
        description="Unit code; defaults to your own unit (admins: the province).",
        openapi_examples={"ward": {"value": "QN-HALONG"}},
    ),
]
FromParam = Annotated[
    date | None, Query(alias="from", description="First local date counted.", examples=["2025-07-01"])
]
ToParam = Annotated[date | None, Query(alias="to", description="Last local date counted.", examples=["2025-09-28"])]


def local_today() -> date:
    return datetime.now(LOCAL_TZ).date()


@router.get("/summary", summary="Every indicator for a unit's subtree", response_model=Summary)
async def summary(
    principal: CurrentPrincipal,
    service: Service,
    unit: UnitParam = None,
    campaign: Annotated[
        str | None,
        Query(description="Campaign code: count its window (default unit: the province).", examples=["PEAK90"]),
    ] = None,
    first: FromParam = None,
    last: ToParam = None,
) -> Summary:
    return await service.summary(principal, unit=unit, campaign=campaign, first=first, last=last)


@router.get(
    "/campaigns/{code}/progress",
    summary="Actual against target for each of a campaign's targets",
    response_model=CampaignProgress,
)
async def campaign_progress(code: str, principal: CurrentPrincipal, service: Service) -> CampaignProgress:
    return await service.progress(principal, code, local_today())


@router.get("/timeseries", summary="One dated indicator per day or week", response_model=Timeseries)
async def timeseries(
    principal: CurrentPrincipal,
    service: Service,
    indicator: Annotated[Indicator, Query(examples=["households_visited"])],
    unit: UnitParam = None,
    interval: Annotated[Interval, Query(description="Bucket size; weeks start on Monday.")] = Interval.day,
    first: FromParam = None,
    last: ToParam = None,
) -> Timeseries:
    return await service.timeseries(
        principal,
        indicator=indicator.value,
        unit=unit,
        interval=interval,
        first=first,
        last=last,
        today=local_today(),
    )


@router.get("/freshness", summary="Newest projected event and consumer lag per topic", response_model=Freshness)
async def freshness(principal: CurrentPrincipal, live: Live, settings: Settings) -> Freshness:
    runner = live.runner
    return MetricsService.freshness(
        live.generation or 0,
        base_topics(settings),
        dict(runner.last_event_time) if runner else {},
        dict(runner.lag) if runner else {},
    )


@router.post(
    "/admin/rebuild",
    status_code=202,
    summary="Rebuild the projection from the beginning of every topic (admin)",
    response_model=RebuildAccepted,
)
async def start_rebuild(principal: CurrentPrincipal, control: Rebuild) -> RebuildAccepted:
    require_role(principal, Role.admin)
    generation = await control.trigger()
    return RebuildAccepted(generation=generation, state="running", status_url="/v1/admin/rebuild")


@router.get("/admin/rebuild", summary="Status of the latest rebuild (admin)", response_model=RebuildStatus)
async def rebuild_status(principal: CurrentPrincipal, service: Service) -> RebuildStatus:
    require_role(principal, Role.admin)
    active = await service.meta.active_generation()
    status = await service.meta.rebuild_status() or {}
    status.pop("updated_at", None)
    return RebuildStatus.model_validate({"state": "idle", **status, "active_generation": active})
