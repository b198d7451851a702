"""Events published by the metrics service on ``reporting.events.v1``: the weekly reporting cycle.

Key: ``<period>/<unit code>``, so every event of one unit's period is in order. A period is an ISO
week (``2025-W28``, Monday to Sunday, Asia/Ho_Chi_Minh) or ``campaign-<code>`` for a campaign's
window. The actor is a pseudonymous subject of the identity provider, never a name.
"""

from __future__ import annotations

from datetime import date, datetime

from pydantic import Field

from shared.contracts.common import Contract, UnitPath

PREFIX = "org.youthunion.reporting."
PERIOD_CLOSED = PREFIX + "period.closed.v1"
PERIOD_APPROVED = PREFIX + "period.approved.v1"
PERIOD_REOPENED = PREFIX + "period.reopened.v1"


class PeriodRef(Contract):
    period: str = Field(description="``2025-W28`` or ``campaign-<code>``.")
    first: date
    last: date
    unit_code: str
    unit_path: UnitPath


class PeriodClosed(Contract):
    """A unit's manager closed the period: ``reported`` are its frozen figures, shaped as ``/v1/summary``."""

    period: PeriodRef
    closed_at: datetime
    closed_by: str = Field(description="Subject of the closing manager.")
    reported: dict[str, int | dict[str, int]] = Field(
        description="Indicator -> value, or split key -> value for split indicators (as in ``/v1/summary``)."
    )
    version: int = Field(ge=1, description="1 for the first close, more after each reopen.")


class PeriodApproved(Contract):
    period: PeriodRef
    approved_at: datetime
    approved_by: str = Field(description="Subject of the parent unit's manager (or an admin).")
    version: int = Field(ge=1)


class PeriodReopened(Contract):
    period: PeriodRef
    reopened_at: datetime
    reopened_by: str
    reason: str
    version: int = Field(ge=1)


EVENTS: dict[str, type[Contract]] = {
    PERIOD_CLOSED: PeriodClosed,
    PERIOD_APPROVED: PeriodApproved,
    PERIOD_REOPENED: PeriodReopened,
}
