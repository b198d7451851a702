"""Fixtures: a running visits app on the real broker and database, and a registry event feeder.

No registry service runs in these tests: registry contract events are produced straight into Kafka,
which is exactly what visits depends on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from shared.envelope import Envelope
from shared.kafka import EventProducer
from shared.runtime import Runtime
from shared.testing import running_app, wait_until
from shared.topics import REGISTRY_TOPIC
from visits.app import VisitsSettings, build_app

from .factories import province_tree


@dataclass
class Visits:
    """A running visits app and what a test needs to drive it."""

    client: httpx.AsyncClient
    runtime: Runtime
    settings: VisitsSettings
    producer: EventProducer
    app: Any = None

    async def registry_sends(self, *events: Envelope) -> None:
        """Publish registry contract events and wait until the read model has applied them all."""
        await self.producer.send_all({REGISTRY_TOPIC: self.settings.topic(REGISTRY_TOPIC)}, list(events))
        runner = next(c for c in self.runtime.consumers if c.name == "visits.registry-view")
        assert runner.processed is not None

        async def applied() -> bool:
            assert runner.processed is not None
            where = await runner.processed.positions(e.id for e in events)
            return len(where) == len(events) and all(
                (runner.committed(tp) or 0) > offset for tp, offset in where.values()
            )

        await wait_until(applied, timeout=60)

    def visits(self) -> Any:
        return self.runtime.db["visits"]


@pytest.fixture
async def visits_app(make_settings: Callable[..., Any]) -> AsyncIterator[Visits]:
    settings: VisitsSettings = make_settings(VisitsSettings)
    app = build_app(settings)
    producer = EventProducer(settings.kafka_bootstrap, client_id="visits-tests")
    async with running_app(app) as client:
        try:
            yield Visits(client, app.state.runtime, settings, producer, app)
        finally:
            await producer.stop()


@pytest.fixture
async def seeded(visits_app: Visits) -> Visits:
    await visits_app.registry_sends(*province_tree())
    return visits_app
