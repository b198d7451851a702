"""The campaign page: one self-contained HTML page for operators, in Vietnamese with English beside it.

It shows a unit (the province by default) and its communes, the indicators over a campaign's window,
each target with a progress bar and its projections, and how fresh the figures are. Everything comes
from the service functions behind ``/v1/summary``, ``/v1/reports/table``,
``/v1/campaigns/{code}/progress``, ``/v1/campaigns/{code}/risk`` and ``/v1/freshness``, so the page
and the API never disagree, and the caller's unit scope applies exactly as in the API.

Authentication: the same JWTs as the API. A browser cannot send a bearer header when it opens a link,
so ``?token=<jwt>`` (the link ``make run`` prints) is checked, stored in an HttpOnly cookie scoped to
this page and removed from the address bar by a redirect; ``Authorization: Bearer`` works too. No
valid token gives a 401 sign-in form. The page is read-only (GET only), so a cookie brings no CSRF
risk, and a Content-Security-Policy forbids every request to anywhere: the page needs none (inline
CSS, system fonts, no script).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from metrics.generations import LiveProjection, base_topics
from metrics.repository import path_of
from metrics.schemas import CampaignProgress, CampaignRisk, Freshness, ReportTable, RiskStatus, Summary
from metrics.service import COLUMN_LABELS, HEADLINE_KEYS, LOCAL_TZ, MetricsService, local_today
from shared.auth import Authenticator, Principal
from shared.errors import ProblemError, Unauthorized

PAGE_DIR = Path(__file__).parent / "page"
PATH = "/v1/campaign-page"
COOKIE = "bridge_page_token"
MAX_COOKIE_SECONDS = 12 * 3600
REFRESH_SECONDS = 60
NO_VALUE = "\u2013"  # an en dash
# No request may leave the page: styles are inline, fonts are the system's, there is no script.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

# Indicator cards, in the order an operator reads them.
CARDS = (*HEADLINE_KEYS, "teams.total", "volunteers", "team_members.total")
# Columns of the communes table: the dated indicators campaigns set targets on.
UNIT_COLUMNS = (
    "households_visited",
    "people_supported",
    "vneid_installs",
    "online_applications.total",
    "courses.total",
    "course_participants.total",
    "outreach_posts.total",
)
STATUS_LABELS: dict[RiskStatus, tuple[str, str]] = {
    RiskStatus.done: ("Đã đạt", "Done"),
    RiskStatus.on_track: ("Đúng tiến độ", "On track"),
    RiskStatus.at_risk: ("Có nguy cơ", "At risk"),
    RiskStatus.behind: ("Chậm tiến độ", "Behind"),
    RiskStatus.not_started: ("Chưa bắt đầu", "Not started"),
}
STATUS_ORDER = (RiskStatus.behind, RiskStatus.at_risk, RiskStatus.on_track, RiskStatus.not_started, RiskStatus.done)
PROBLEM_TITLES = {
    403: ("Ngoài phạm vi đơn vị của bạn", "Outside your unit scope"),
    404: ("Không tìm thấy", "Not found"),
    422: ("Yêu cầu không hợp lệ", "Invalid request"),
}
UNIT_STATUS_LABELS = {"merged": ("đã sáp nhập", "merged"), "closed": ("đã giải thể", "closed")}


def label(key: str) -> tuple[str, str]:
    """Vietnamese and English name of a flattened indicator key (``courses`` means its total)."""
    return COLUMN_LABELS.get(key) or COLUMN_LABELS.get(f"{key}.total") or (key, key)


def number(value: float | int | None, decimals: int = 0) -> str:
    """Digits grouped by a narrow space and a decimal comma: unambiguous in Vietnamese and English."""
    if value is None:
        return NO_VALUE
    text = f"{value:,.{decimals}f}"
    return text.replace(",", "\u202f").replace(".", ",")


def rate(value: float | None) -> str:
    """A pace per day: two decimals below 10, so a slow pace does not read as zero."""
    return number(value, 2 if value is not None and abs(value) < 10 else 1)


def local_time(moment: datetime | None) -> str:
    if moment is None:
        return NO_VALUE
    return moment.astimezone(LOCAL_TZ).strftime("%H:%M:%S %d/%m/%Y")


def age(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "chưa có sự kiện / no event yet"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} giây trước / {seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} phút trước / {seconds // 60} min ago"
    return f"{seconds // 3600} giờ trước / {seconds // 3600} h ago"


def flatten(summary: Summary) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in summary.model_dump(exclude={"as_of", "scope"}).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": int(v) for k, v in value.items()})
        else:
            out[key] = int(value)
    return out


def pick_campaign(campaigns: Sequence[Mapping[str, Any]], today: date) -> str | None:
    """The campaign running today that started last; else the one that started last; else the next one."""
    iso = today.isoformat()
    running = [c for c in campaigns if c["starts_on"] <= iso <= c["ends_on"]]
    started = [c for c in campaigns if c["starts_on"] <= iso]
    for group in (running, started):
        if group:
            return str(max(group, key=lambda c: (c["starts_on"], c["_id"]))["_id"])
    return str(min(campaigns, key=lambda c: (c["starts_on"], c["_id"]))["_id"]) if campaigns else None


@dataclass(frozen=True)
class TargetView:
    indicator: str
    label_vi: str
    label_en: str
    unit_code: str
    unit_name: str
    target: int
    actual: int
    percent: float | None
    bar: float  # width of the bar, 0..100
    projected: float
    projected_share: float | None
    risk_projected: float | None
    risk_share: float | None
    marker: float | None  # where the 7-day projection lands on the bar, 0..100
    status: RiskStatus | None
    status_vi: str
    status_en: str
    pace_needed: float | None
    pace_last_7_days: float | None


def target_views(progress: CampaignProgress, risk: CampaignRisk | None, names: Mapping[str, str]) -> list[TargetView]:
    """Each target joined with its risk row (same indicator and unit)."""
    risks = {(r.indicator.value, r.unit_code): r for r in (risk.targets if risk else [])}
    views = []
    for t in progress.targets:
        r = risks.get((t.indicator.value, t.unit_code))
        vi, en = label(t.indicator.value)
        status = r.status if r else None
        status_vi, status_en = STATUS_LABELS[status] if status else (NO_VALUE, NO_VALUE)
        views.append(
            TargetView(
                indicator=t.indicator.value,
                label_vi=vi,
                label_en=en,
                unit_code=t.unit_code,
                unit_name=(r.unit_name if r and r.unit_name else None) or names.get(t.unit_code, t.unit_code),
                target=t.target,
                actual=t.actual,
                percent=t.percent,
                bar=min(100.0, t.percent or 0.0),
                projected=t.projected,
                projected_share=round(t.projected / t.target * 100, 1) if t.target else None,
                risk_projected=r.projected if r else None,
                risk_share=round(r.projected_ratio * 100, 1) if r and r.projected_ratio is not None else None,
                marker=min(100.0, r.projected_ratio * 100) if r and r.projected_ratio is not None else None,
                status=status,
                status_vi=status_vi,
                status_en=status_en,
                pace_needed=r.pace_needed if r else None,
                pace_last_7_days=r.pace_last_7_days if r else None,
            )
        )
    return views


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PAGE_DIR),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["number"] = number
    env.filters["rate"] = rate
    env.globals["label"] = label
    return env


@cache
def _css() -> str:
    return (PAGE_DIR / "page.css").read_text(encoding="utf-8")


def render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(css=_css(), path=PATH, **context)


def html(body: str, status: int = 200, headers: Mapping[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def sign_in(request: Request, message: str | None = None) -> HTMLResponse:
    body = render(
        "sign_in.html", message=message, query={k: v for k, v in request.query_params.items() if k != "token"}
    )
    return html(body, 401, {"WWW-Authenticate": "Bearer"})


def authenticate(request: Request, token: str | None) -> tuple[Principal | None, str | None]:
    """``(principal, None)`` from the Authorization header or the cookie; ``(None, error)`` otherwise."""
    authenticator: Authenticator = request.app.state.runtime.authenticator
    header = request.headers.get("authorization", "")
    scheme, _, bearer = header.partition(" ")
    presented = token or (bearer if scheme.lower() == "bearer" and bearer else None) or request.cookies.get(COOKIE)
    if not presented:
        return None, None
    try:
        return authenticator.decode(presented), None
    except Unauthorized as exc:
        return None, exc.detail


def cookie_seconds(token: str) -> int:
    """Until the token expires, at most 12 hours (the cookie must not outlive the token)."""
    import jwt

    try:
        exp = int(jwt.decode(token, options={"verify_signature": False}).get("exp", 0))
    except (jwt.PyJWTError, TypeError, ValueError):
        return 0
    return max(0, min(MAX_COOKIE_SECONDS, exp - int(time.time())))


async def campaign_page(
    request: Request, service: MetricsService, *, campaign: str | None, unit: str | None, token: str | None
) -> Response:
    principal, error = authenticate(request, token)
    if principal is None:
        return sign_in(request, error)
    if token is not None:
        # Keep the token out of the address bar, history and any copied link.
        # Re-encoded: the values arrive decoded, and a bare "&", "#" or "%" in one would otherwise
        # change the redirect's parameters or make its URL invalid.
        query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
        response = RedirectResponse(PATH + (f"?{query}" if query else ""), status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            token,
            max_age=cookie_seconds(token),
            path=PATH,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response
    try:
        body = await _page(request, service, principal, campaign, unit)
    except ProblemError as exc:
        vi, en = PROBLEM_TITLES.get(exc.status, (exc.title, exc.title))
        return html(render("problem.html", problem=exc, title_vi=vi, title_en=en, principal=principal), exc.status)
    return html(body)


async def _page(
    request: Request, service: MetricsService, principal: Principal, code: str | None, unit: str | None
) -> str:
    today = local_today()
    repo = await service.projection()
    campaigns = await repo.all_campaigns()
    code = code or pick_campaign(campaigns, today)
    chosen = next((c for c in campaigns if c["_id"] == code), None) if code else None
    # The reads are independent: together they take as long as the slowest one.
    summary, table, (progress, risk, targets_note) = await asyncio.gather(
        service.summary(principal, unit=unit, campaign=code, first=None, last=None),
        _table(service, principal, unit, code if chosen else None, today),
        _targets(service, principal, code if chosen else None, today),
    )
    unit_code = summary.scope.unit
    tree = await repo.tree()
    names = {c: str(u.get("name") or c) for c, u in tree.items()}
    targets: list[TargetView] = []
    if progress is not None:
        below = {c for c in tree if unit_code in path_of(tree, c)}
        progress = progress.model_copy(update={"targets": [t for t in progress.targets if t.unit_code in below]})
        targets = _by_depth(target_views(progress, risk, names), tree)
    live: LiveProjection = request.app.state.live
    runner = live.runner
    freshness: Freshness = MetricsService.freshness(
        live.generation or 0,
        base_topics(request.app.state.runtime.settings),
        dict(runner.last_event_time) if runner else {},
        dict(runner.lag) if runner else {},
    )
    now = datetime.now(UTC)
    figures = flatten(summary)
    rows = [r for r in table.rows if r.row in ("unit", "direct")] if table else []
    return render(
        "campaign.html",
        principal=principal,
        today=today,
        campaigns=[{"code": str(c["_id"]), "name": str(c.get("name") or c["_id"])} for c in campaigns],
        campaign=chosen,
        code=code,
        progress=progress,
        risk=risk,
        targets=targets,
        targets_note=targets_note,
        unit_code=unit_code,
        unit_name=names.get(unit_code, unit_code),
        # Links only to the units the caller may open.
        unit_path=[(c, names.get(c, c), principal.in_scope(path_of(tree, c))) for c in path_of(tree, unit_code)[:-1]]
        if unit_code in tree
        else [],
        window=_window(chosen),
        summary=summary,
        figures=figures,
        cards=[(key, *label(key), figures.get(key)) for key in CARDS],
        columns=[(key, *label(key)) for key in UNIT_COLUMNS],
        rows=rows,
        totals=table.totals if table else None,
        unit_status=UNIT_STATUS_LABELS,
        freshness=freshness,
        freshness_rows=[(t, local_time(t.last_event_time), age(t.last_event_time, now)) for t in freshness.topics],
        as_of=local_time(summary.as_of),
        refresh=REFRESH_SECONDS,
    )


def _window(campaign: Mapping[str, Any] | None) -> str:
    if campaign is None:
        return ""
    days = (date.fromisoformat(campaign["starts_on"]), date.fromisoformat(campaign["ends_on"]))
    return " – ".join(d.strftime("%d/%m/%Y") for d in days)  # noqa: RUF001 (an en dash between dates)


async def _table(
    service: MetricsService, principal: Principal, unit: str | None, code: str | None, today: date
) -> ReportTable | None:
    if code is None:
        return None
    report = await service.report_stream(principal, unit=unit, campaign=code, first=None, last=None, today=today)
    return report.collected()


async def _targets(
    service: MetricsService, principal: Principal, code: str | None, today: date
) -> tuple[CampaignProgress | None, CampaignRisk | None, str | None]:
    """Progress and risk of the campaign's targets, or why the caller sees none."""
    if code is None:
        return None, None, None
    try:
        progress, risk = await asyncio.gather(
            service.progress(principal, code, today), service.campaign_risk(principal, code, today)
        )
    except ProblemError as exc:
        vi, en = PROBLEM_TITLES.get(exc.status, (exc.title, exc.title))
        return None, None, f"{vi} / {en}: {exc.detail}"
    return progress, risk, None


def _by_depth(targets: list[TargetView], tree: Mapping[str, Mapping[str, Any]]) -> list[TargetView]:
    """Higher units' targets first (the province's, then the communes'), each level worst first."""
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}

    def key(v: TargetView) -> tuple[int, int, float, str, str]:
        depth = len(path_of(tree, v.unit_code)) if v.unit_code in tree else 99
        share = v.risk_share if v.risk_share is not None else math.inf
        return (depth, rank.get(v.status, len(rank)) if v.status else len(rank), share, v.unit_code, v.indicator)

    return sorted(targets, key=key)


# --- how api.py declares the route --------------------------------------------------------------------
CampaignParam = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Campaign code; defaults to the campaign running today (the one that started last).",
        examples=["PEAK90"],
    ),
]
TokenParam = Annotated[
    str | None,
    Query(
        max_length=8192,
        description="A bearer token (JWT) for a browser that cannot send the Authorization header: it is stored "
        "in an HttpOnly cookie for this page and the answer is a 303 to the same URL without it.",
    ),
]
ROUTE: dict[str, Any] = {
    "summary": "Campaign page for operators (HTML, Vietnamese with English)",
    "description": "The unit (default: the province for admins, else your own) and its child units, the "
    "indicators over the campaign's window, each target with a progress bar and projections, and the freshness "
    "of the figures; the same data and unit scope as `/v1/summary`, `/v1/reports/table`, "
    "`/v1/campaigns/{code}/progress`, `/v1/campaigns/{code}/risk` and `/v1/freshness`. Self-contained: no "
    "script and no request to anywhere else. Sign in with `Authorization: Bearer`, the `token` query "
    "parameter (kept in a cookie) or the cookie.",
    "response_class": HTMLResponse,
    "responses": {
        200: {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}},
        303: {"description": "`token` was valid: it is now in a cookie; the same URL without it"},
        401: {
            "description": "No valid token: a sign-in form",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
        403: {"description": "The unit lies outside your unit scope (an HTML page)"},
        404: {"description": "The unit or the campaign is not known (an HTML page)"},
    },
}
