"""Closing the weeks as the campaign goes (issue #21), through the metrics API only.

After each simulated week, every ISO week (Monday to Sunday) whose days have all been replayed is
closed bottom-up: the deepest units first, each approved by its parent (here the admin the replay
runs as), then the province, which the admin approves. Records that reach the log later (the
typhoon week's uploads, the corrections and voids at the end) become adjustments of the closed
weeks, and the province's narrative of the last closed week lists them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx

# A week is closed once its figures stop moving: the records of its days are then in the event log.
STABLE_SECONDS = 1.5
STABLE_TIMEOUT = 120.0


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def weeks_ended_by(first_day: date, last_replayed: date) -> list[tuple[str, date, date]]:
    """ISO weeks from the one holding ``first_day`` whose Sunday is on or before ``last_replayed``."""
    monday = first_day - timedelta(days=first_day.weekday())
    out = []
    while monday + timedelta(days=6) <= last_replayed:
        out.append((iso_week(monday), monday, monday + timedelta(days=6)))
        monday += timedelta(days=7)
    return out


@dataclass
class WeekCloser:
    """Closes ISO weeks of ``root``'s tree as the replay reaches their Sunday."""

    call: Callable[..., Awaitable[httpx.Response]]  # Api.call
    root: str
    first_day: date
    depth_of: Callable[[str], int]  # a unit's depth in the tree (the province: 0)
    closed: list[str] = field(default_factory=list)
    weeks: dict[str, tuple[date, date]] = field(default_factory=dict)

    async def after(self, last_replayed: date) -> None:
        for week, monday, sunday in weeks_ended_by(self.first_day, last_replayed):
            if week not in self.closed:
                await self._settled(monday, sunday)
                await self.close(week)
                self.closed.append(week)
                self.weeks[week] = (monday, sunday)

    async def _settled(self, monday: date, sunday: date) -> None:
        """Wait until the week's figures stay the same for a moment (its records were all published)."""
        params = {"unit": self.root, "from": monday.isoformat(), "to": sunday.isoformat()}
        last: Any = None
        since = time.monotonic()
        deadline = since + STABLE_TIMEOUT
        while time.monotonic() < deadline:
            resp = await self.call("metrics", "GET", "/v1/summary", params=params, ok=(200, 404), count=False)
            if resp.status_code == 404:
                # The root's creation is not projected yet: visits and training, which the replay
                # waits on, can know the tree before the metrics projector has applied it.
                last, since = None, time.monotonic()
                await asyncio.sleep(0.3)
                continue
            body = resp.json()
            body.pop("as_of", None)
            if body != last:
                last, since = body, time.monotonic()
            elif time.monotonic() - since >= STABLE_SECONDS:
                return
            await asyncio.sleep(0.3)

    async def close(self, week: str) -> None:
        """Close ``week`` for every active unit, deepest first, approving each level before the next."""
        status = (
            await self.call("metrics", "GET", f"/v1/periods/{week}", params={"unit": self.root}, count=False)
        ).json()
        by_depth: dict[int, list[str]] = {}
        for u in status["units"]:
            if u["status"] == "open":
                by_depth.setdefault(self.depth_of(u["unit"]), []).append(u["unit"])
        for depth in sorted(by_depth, reverse=True):
            units = by_depth[depth]
            await _each(
                units, lambda u: self.call("metrics", "POST", f"/v1/periods/{week}/units/{u}:close", count=False)
            )
            await _each(
                units, lambda u: self.call("metrics", "POST", f"/v1/periods/{week}/units/{u}:approve", count=False)
            )

    async def narrative(self, week: str, fmt: str) -> str:
        resp = await self.call(
            "metrics", "GET", f"/v1/periods/{week}/units/{self.root}/narrative", params={"format": fmt}, count=False
        )
        return resp.text

    async def figures(self, week: str) -> dict[str, Any]:
        resp = await self.call("metrics", "GET", f"/v1/periods/{week}/units/{self.root}/figures", count=False)
        body: dict[str, Any] = resp.json()
        return body


async def _each(units: Sequence[str], work: Callable[[str], Awaitable[Any]], limit: int = 8) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(unit: str) -> None:
        async with gate:
            await work(unit)

    await asyncio.gather(*(one(u) for u in units))
