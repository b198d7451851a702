"""Calendar dates are local dates in Asia/Ho_Chi_Minh (DOMAIN.md), whatever the machine's zone."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")


def local_today() -> date:
    return datetime.now(LOCAL_TZ).date()
