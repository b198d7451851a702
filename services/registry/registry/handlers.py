"""The registry consumes no events: it is the producer of the organisation's facts."""

from __future__ import annotations

from shared.consumer import EventHandler

HANDLERS: dict[str, EventHandler] = {}
