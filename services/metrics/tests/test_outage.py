"""The projector through a database outage: events wait for the database, none is dead-lettered.

The runner's rule (an unreachable database never uses up the retries) is tested on a plain consumer
in shared/tests/test_consumer.py; this test holds the projector to it as a whole process would run
it, with its own fold-then-write path and in-memory state dropped after each failed write.
"""

from __future__ import annotations

import asyncio
from datetime import date

import pytest
from prometheus_client import REGISTRY
from pymongo.errors import ServerSelectionTimeoutError

from metrics.app import MetricsSettings
from metrics.generations import projector_runner
from metrics.repository import ProjectionRepository
from shared.infra import FerretDB, KafkaBroker
from shared.kafka import EventProducer
from shared.mongo import connect
from shared.testing import wait_until
from shared.topics import VISITS_TOPIC

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

HALONG = ["QN", "QN-HALONG"]


def dead_lettered(name: str, topic: str) -> float:
    labels = {"consumer": name, "topic": topic}
    return REGISTRY.get_sample_value("bridge_consumer_events_dead_lettered_total", labels) or 0.0


async def test_events_that_arrive_while_the_database_is_down_are_applied_once_it_is_back(
    ev, send, make_settings, kafka: KafkaBroker, own_ferretdb: FerretDB, run_id: str
) -> None:
    # A retry budget spent within a second: an outage must not count against it.
    settings = make_settings(MetricsSettings, mongo_url=own_ferretdb.url, consumer_retries=1)
    client = connect(own_ferretdb.url, timeout_ms=300)
    db = client[settings.mongo_db]
    producer = EventProducer(kafka.bootstrap, client_id="outage-test")
    name = f"outage-{run_id}"
    runner = projector_runner(settings, db, producer, 1, name=name)
    repo = ProjectionRepository(db, 1)

    async def households(expected: int) -> bool:
        # Only Phường Hạ Long is visited, and no unit events come: its own rows hold every visit.
        try:
            rows = await repo.counters_all_time("QN-HALONG")
        except ServerSelectionTimeoutError:
            # Just after the restart this client may not have found the server again yet (it checks
            # at most every 500 ms, and selects within 300 ms here): not an answer yet.
            return False
        return sum(r["c"].get("households_visited", 0) for r in rows) == expected

    day = date(2025, 7, 3)
    try:
        await runner.start()
        await send(settings, [ev.visit(f"before-{i}", ev.figures(HALONG, day)) for i in range(3)])
        await wait_until(lambda: households(3), timeout=30)

        own_ferretdb.stop()
        await send(settings, [ev.visit(f"during-{i}", ev.figures(HALONG, day)) for i in range(5)])
        # Long enough for many write attempts, each failing fast on the 300 ms server selection.
        await asyncio.sleep(6)
        assert runner.running
        own_ferretdb.start()

        await wait_until(lambda: households(8), timeout=60)
        await send(settings, [ev.visit("after", ev.figures(HALONG, day))])
        await wait_until(lambda: households(9), timeout=30)
    finally:
        await runner.stop()
        await producer.stop()
        await client.close()
    assert dead_lettered(name, settings.topic(VISITS_TOPIC)) == 0
