"""Routes of the metrics API: reads and report tables for every role (unit-scoped) and the admin rebuild."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from metrics import narrative, page
from metrics.closing import ClosingService, with_figures
from metrics.generations import LiveProjection, RebuildControl, base_topics
from metrics.schemas import (
    CampaignProgress,
    CampaignRisk,
    CloseRequest,
    Completeness,
    Freshness,
    Interval,
    PeriodFigures,
    PeriodOut,
    PeriodUnit,
    RebuildAccepted,
    RebuildStatus,
    ReopenRequest,
    ReportFormat,
    ReportRows,
    ReportTable,
    Summary,
    Timeseries,
)
from metrics.service import MetricsService, local_today
from metrics.spreadsheets import CSV_MEDIA_TYPE, XLSX_MEDIA_TYPE, csv_chunks, filename, json_chunks, xlsx_bytes
from shared.auth import Role, require_role
from shared.contracts.common import Indicator
from shared.errors import InvalidInput
from shared.http import PROBLEM_RESPONSES, CurrentPrincipal, IsoDateTime
from shared.settings import ServiceSettings

router = APIRouter(prefix="/v1", tags=["metrics"])


def _service(request: Request) -> MetricsService:
    service: MetricsService = request.app.state.metrics
    return service


def _live(request: Request) -> LiveProjection:
    live: LiveProjection = request.app.state.live
    return live


def _rebuild(request: Request) -> RebuildControl:
    control: RebuildControl = request.app.state.rebuild
    return control


def _closing(request: Request) -> ClosingService:
    closing: ClosingService = request.app.state.closing
    return closing


def _settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.runtime.settings
    return settings


Service = Annotated[MetricsService, Depends(_service)]
Live = Annotated[LiveProjection, Depends(_live)]
Rebuild = Annotated[RebuildControl, Depends(_rebuild)]
Settings = Annotated[ServiceSettings, Depends(_settings)]
Closing = Annotated[ClosingService, Depends(_closing)]
UnitParam = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Unit code; defaults to your own unit (admins: the province).",
        openapi_examples={"ward": {"value": "QN-HALONG"}},
    ),
]
CampaignCode = Annotated[str, Path(max_length=64, description="Campaign code.", examples=["PEAK90"])]
FromParam = Annotated[
    date | None, Query(alias="from", description="First local date counted.", examples=["2025-07-01"])
]
ToParam = Annotated[date | None, Query(alias="to", description="Last local date counted.", examples=["2025-09-28"])]
AsOfParam = Annotated[
    date | None,
    Query(
        description="The local date taken as today (reports as of a past day, tests); defaults to today in "
        "Asia/Ho_Chi_Minh.",
        examples=["2025-07-16"],
    ),
]


KnownAtParam = Annotated[
    IsoDateTime | None,
    Query(
        description="Answer as the system knew it then: dated indicators from the event log up to this moment "
        "(current-state indicators as they are now; a summary needs a period: from/to or campaign).",
        examples=["2025-07-14T09:00:00+07:00"],
    ),
]


def problems(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """Problem responses of a route, each saying what it means there."""
    return {status: {**PROBLEM_RESPONSES[status], "description": text} for status, text in described.items()}


def negotiated(accept: str | None) -> ReportFormat:
    """The format an Accept header prefers among ours (highest q; JSON when nothing else fits)."""
    media = {"text/csv": ReportFormat.csv, XLSX_MEDIA_TYPE: ReportFormat.xlsx, "application/json": ReportFormat.json}
    best, best_q = ReportFormat.json, 0.0
    for part in (accept or "").split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if kind in media and q > best_q:
            best, best_q = media[kind], q
    return best


async def _streamed(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    # An async iterator: a sync one would hop to a worker thread for every line. Making the rows is
    # CPU work on the event loop, so other requests get a turn between chunks.
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)


@router.get("/summary", summary="Every indicator for a unit's subtree", response_model=Summary)
async def summary(
    principal: CurrentPrincipal,
    service: Service,
    closing: Closing,
    unit: UnitParam = None,
    campaign: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Campaign code: count its window (default unit: the province).",
            examples=["PEAK90"],
        ),
    ] = None,
    first: FromParam = None,
    last: ToParam = None,
    known_at: KnownAtParam = None,
    reported: Annotated[
        bool,
        Query(description="Answer with the figures frozen when this period (a week or a campaign) was closed."),
    ] = False,
) -> Summary:
    live = await service.summary(principal, unit=unit, campaign=campaign, first=first, last=last)
    if not known_at and not reported:
        return live
    if live.scope.from_ is None or live.scope.to is None:
        raise InvalidInput("known_at and reported need a period: from and to, or campaign")
    if reported:
        period, frozen = await closing.reported(principal, live.scope.unit, live.scope.from_, live.scope.to)
        return with_figures(live, frozen, reported=period)
    assert known_at is not None
    then = await closing.known_at(principal, live.scope.unit, live.scope.from_, live.scope.to, known_at)
    return with_figures(live, then, known_at=known_at)


@router.get(
    "/campaigns/{code}/progress",
    summary="Actual against target for each of a campaign's targets",
    response_model=CampaignProgress,
)
async def campaign_progress(code: CampaignCode, principal: CurrentPrincipal, service: Service) -> CampaignProgress:
    return await service.progress(principal, code, local_today())


@router.get(
    "/campaigns/{code}/risk",
    summary="Targets at risk: pace, projection at ends_on and status of each target in your scope",
    response_model=CampaignRisk,
    responses=problems(
        {
            403: "No target of the campaign lies in your unit scope",
            404: "The campaign is not known",
            422: "as_of is not a date",
        }
    ),
)
async def campaign_risk(
    code: CampaignCode, principal: CurrentPrincipal, service: Service, as_of: AsOfParam = None
) -> CampaignRisk:
    return await service.campaign_risk(principal, code, as_of or local_today())


@router.get("/campaign-page", **page.ROUTE)
async def campaign_page(
    request: Request,
    service: Service,
    campaign: page.CampaignParam = None,
    unit: UnitParam = None,
    token: page.TokenParam = None,
) -> Response:
    return await page.campaign_page(request, service, campaign=campaign, unit=unit, token=token)


REPORT_CONTENT: dict[str, Any] = {
    "text/csv": {
        "schema": {"type": "string"},
        "example": "\ufeffMã đơn vị / Unit code,Đơn vị / Unit,Hộ gia đình được thăm / Households visited,...\r\n"
        "QN-HALONG,Phường Hạ Long,42,35,7,...\r\n",
    },
    XLSX_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
}


@router.get(
    "/reports/table",
    summary="A unit's report table: child units by indicator, with the previous period and the change",
    description="Rows are the unit's direct child units as the tree stands now (each with its whole subtree), "
    "preceded by the unit's own records when it has any, and followed by the totals, which equal "
    "`/v1/summary` for the unit and period. With `rows=teams` the rows are the teams of the unit's subtree "
    "(active ones always, inactive ones with figures), then a row of what no team of the subtree accounts for, "
    "then the same totals, which equal "
    "`/v1/summary` for the unit and period. Each figure has the previous period of equal length and the change "
    "beside it. `format` (or the Accept header) picks JSON or CSV (UTF-8 with BOM), both streamed as the rows "
    "are made, or XLSX; the "
    "period defaults to the campaign's window with `campaign`, else the last full Monday-Sunday week.",
    response_model=ReportTable,
    responses={
        200: {"description": "The table, in the format asked for", "content": REPORT_CONTENT},
        **problems(
            {
                403: "The unit lies outside your unit scope",
                404: "The unit or the campaign is not known",
                422: "Bad dates (from after to, only one of them, over 800 days) or an unknown format",
            }
        ),
    },
)
async def report_table(
    request: Request,
    principal: CurrentPrincipal,
    service: Service,
    closing: Closing,
    unit: UnitParam = None,
    campaign: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Campaign code: report its window (default unit: the province).",
            examples=["PEAK90"],
        ),
    ] = None,
    first: Annotated[
        date | None, Query(alias="from", description="First local date of the period.", examples=["2025-07-07"])
    ] = None,
    last: Annotated[
        date | None, Query(alias="to", description="Last local date of the period.", examples=["2025-07-13"])
    ] = None,
    fmt: Annotated[
        ReportFormat | None,
        Query(alias="format", description="json, csv or xlsx; overrides the Accept header."),
    ] = None,
    as_of: AsOfParam = None,
    rows: Annotated[
        ReportRows,
        Query(description="units: the unit's direct child units as rows; teams: every team of its subtree."),
    ] = ReportRows.units,
    known_at: KnownAtParam = None,
) -> ReportTable | Response:
    report = await service.report_stream(
        principal, unit=unit, campaign=campaign, first=first, last=last, today=as_of or local_today(), rows_by=rows
    )
    if known_at is not None:
        report = await closing.table_known_at(principal, report, known_at)
    chosen = fmt or negotiated(request.headers.get("accept"))
    if chosen is ReportFormat.json:
        return StreamingResponse(_streamed(json_chunks(report)), media_type="application/json")
    disposition = {"Content-Disposition": f'attachment; filename="{filename(report.head, chosen.value)}"'}
    if chosen is ReportFormat.csv:
        return StreamingResponse(_streamed(csv_chunks(report)), media_type=CSV_MEDIA_TYPE, headers=disposition)
    # Writing the workbook is CPU work: keep it off the event loop.
    return Response(await asyncio.to_thread(xlsx_bytes, report), media_type=XLSX_MEDIA_TYPE, headers=disposition)


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


# --- closing the week ---------------------------------------------------------------------------------
PeriodParam = Annotated[
    str,
    Path(
        description="An ISO week, Monday to Sunday local (``2025-W28``), or a campaign's window (``campaign-<code>``).",
        max_length=80,
        examples=["2025-W28"],
    ),
]
UnitPath = Annotated[str, Path(description="Unit code.", max_length=80, examples=["QN-HALONG"])]
NarrativeFormat = Annotated[
    Literal["md", "html"], Query(alias="format", description="md (Markdown) or html (a printable page).")
]
PERIOD_PROBLEMS = problems(
    {
        403: "Your role or unit scope does not allow it",
        404: "The unit or the campaign is not known",
        409: "The period is not in a state that allows it (see the problem's slug)",
        422: "A malformed period or body",
    }
)


@router.get(
    "/periods/{period}",
    summary="Which units of a subtree have closed or approved a period",
    response_model=PeriodOut,
    responses=PERIOD_PROBLEMS,
)
async def period_status(
    period: PeriodParam, principal: CurrentPrincipal, closing: Closing, unit: UnitParam = None
) -> PeriodOut:
    return await closing.status(principal, period, unit)


@router.post(
    "/periods/{period}/units/{unit}:close",
    summary="Close a period for your unit: freeze its reported figures (every active child unit approved first)",
    response_model=PeriodUnit,
    responses=PERIOD_PROBLEMS,
)
async def close_period(
    period: PeriodParam,
    unit: UnitPath,
    principal: CurrentPrincipal,
    closing: Closing,
    body: Annotated[CloseRequest | None, Body()] = None,
) -> PeriodUnit:
    return await closing.close(principal, period, unit, body.note if body else None)


@router.post(
    "/periods/{period}/units/{unit}:approve",
    summary="Approve a child unit's closed period (its parent's manager, or an admin)",
    response_model=PeriodUnit,
    responses=PERIOD_PROBLEMS,
)
async def approve_period(
    period: PeriodParam, unit: UnitPath, principal: CurrentPrincipal, closing: Closing
) -> PeriodUnit:
    return await closing.approve(principal, period, unit)


@router.post(
    "/periods/{period}/units/{unit}:reopen",
    summary="Reopen a closed or approved period, with a reason (admin)",
    response_model=PeriodUnit,
    responses=PERIOD_PROBLEMS,
)
async def reopen_period(
    period: PeriodParam, unit: UnitPath, body: ReopenRequest, principal: CurrentPrincipal, closing: Closing
) -> PeriodUnit:
    return await closing.reopen(principal, period, unit, body.reason)


@router.get(
    "/periods/{period}/units/{unit}/figures",
    summary="Reported (at the close), revised and the difference, with every adjustment that arrived later",
    response_model=PeriodFigures,
    responses=PERIOD_PROBLEMS,
)
async def period_figures(
    period: PeriodParam, unit: UnitPath, principal: CurrentPrincipal, closing: Closing
) -> PeriodFigures:
    return await closing.figures(principal, period, unit)


@router.get(
    "/periods/{period}/units/{unit}/completeness",
    summary="Teams expected to report, those that did (on time or late), and units that have not closed",
    response_model=Completeness,
    responses=PERIOD_PROBLEMS,
)
async def period_completeness(
    period: PeriodParam, unit: UnitPath, principal: CurrentPrincipal, closing: Closing
) -> Completeness:
    return await closing.completeness(principal, period, unit)


@router.get(
    "/periods/{period}/units/{unit}/narrative",
    summary="The weekly narrative in Vietnamese and English, as Markdown or HTML",
    response_class=Response,
    responses={
        200: {"description": "The narrative", "content": {"text/markdown": {}, "text/html": {}}},
        **PERIOD_PROBLEMS,
    },
)
async def period_narrative(
    period: PeriodParam,
    unit: UnitPath,
    principal: CurrentPrincipal,
    closing: Closing,
    live: Live,
    settings: Settings,
    fmt: NarrativeFormat = "md",
) -> Response:
    inputs = await closing.narrative_inputs(principal, period, unit)
    runner = live.runner
    fresh = MetricsService.freshness(
        live.generation or 0,
        base_topics(settings),
        dict(runner.last_event_time) if runner else {},
        dict(runner.lag) if runner else {},
    )
    story = narrative.build(inputs, fresh, datetime.now(UTC))
    if fmt == "html":
        return Response(narrative.to_html(story), media_type="text/html; charset=utf-8")
    return Response(narrative.to_markdown(story), media_type="text/markdown; charset=utf-8")
