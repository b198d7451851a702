"""``GET /v1/audit``: the one route every service serves over its own :class:`shared.audit.AuditTrail`.

The app wires its trail into ``app.state.audit`` and includes :func:`audit_router`.
"""

# No ``from __future__ import annotations``: the route's parameters name a local (``entities``).
from typing import Annotated

from fastapi import APIRouter, Query, Request

from shared.audit import AuditEntry, AuditQuery, AuditTrail
from shared.http import CurrentPrincipal, IsoDateTime
from shared.pagination import MAX_LIMIT, Page

TEXT = 200  # longest code, id or subject a filter takes


def audit_router(entities: str) -> APIRouter:
    """The audit route; ``entities`` names this service's kinds of record for the docs."""
    router = APIRouter(prefix="/v1", tags=["audit"])

    @router.get(
        "/audit",
        summary="Who changed what and when, with the values before and after, in your scope",
        description=(
            f"Entries for {entities}, oldest first. Admins read every entry, managers those of their "
            "unit's subtree (whoever made them), field users the changes they made; other roles get 403."
        ),
        response_model=Page[AuditEntry],
        operation_id="list_audit_entries",
    )
    async def list_audit_entries(
        request: Request,
        principal: CurrentPrincipal,
        entity: Annotated[str | None, Query(max_length=TEXT, description=f"One of: {entities}.")] = None,
        entity_id: Annotated[str | None, Query(max_length=TEXT, description="Id or code of one record.")] = None,
        actor: Annotated[str | None, Query(max_length=TEXT, description="Token subject that made the change.")] = None,
        action: Annotated[str | None, Query(max_length=TEXT, description="e.g. `visit.corrected`.")] = None,
        unit: Annotated[str | None, Query(max_length=TEXT, description="Unit code: it and its subtree.")] = None,
        since: Annotated[IsoDateTime | None, Query(description="From this moment, inclusive.")] = None,
        until: Annotated[IsoDateTime | None, Query(description="Before this moment.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1 to {MAX_LIMIT}.")] = 50,
        cursor: Annotated[str | None, Query(max_length=1000, description="`next_cursor` of the previous page.")] = None,
    ) -> Page[AuditEntry]:
        trail: AuditTrail = request.app.state.audit
        query = AuditQuery(
            entity=entity, entity_id=entity_id, actor=actor, action=action, unit=unit, since=since, until=until
        )
        items, next_cursor = await trail.page(principal, query, limit, cursor)
        return Page[AuditEntry](items=items, next_cursor=next_cursor)

    return router
