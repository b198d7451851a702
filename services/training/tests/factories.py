"""What the training tests share: request bodies (a course of the Hạ Long literacy team, a session)
and a request sent by a process that dies at one repository step."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest


def course(code: str, **over: Any) -> dict[str, Any]:
    """A valid course of LIT-HL at Phường Hạ Long in July 2025; ``over`` replaces any field."""
    body = {
        "client_ref": f"ref-{code}",
        "code": code,
        "title": "Hướng dẫn cài đặt VNeID cho người cao tuổi",
        "team_code": "LIT-HL",
        "unit_code": "QN-HL",
        "audience": "elderly_middle_aged",
        "mode": "in_person",
        "topics": ["vneid", "online_public_services"],
        "starts_on": "2025-07-01",
        "ends_on": "2025-07-31",
    }
    return {**body, **over}


def session(ref: str, held_on: str = "2025-07-05", **attendance: Any) -> dict[str, Any]:
    """A 90-minute session; ``attendance`` is ``count=n`` or ``participant_ids=[...]``."""
    return {"client_ref": ref, "held_on": held_on, "duration_minutes": 90, "attendance": attendance}


async def dies_at(
    training: Any, monkeypatch: pytest.MonkeyPatch, step: str, send: Callable[[], Awaitable[Any]]
) -> None:
    """Run ``send`` in a process that dies at the repository's ``step``, then give the step back.

    The in-process transport re-raises what a real server would answer with a 500.
    """
    repo = training.app.state.training._repo
    real = getattr(repo, step)

    async def died(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError(f"process died at {step}")

    monkeypatch.setattr(repo, step, died)
    with pytest.raises(ConnectionError):
        await send()
    monkeypatch.setattr(repo, step, real)
