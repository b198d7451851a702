"""``python -m metrics.rebuild`` (``make rebuild-metrics``): rebuild the projection and switch to it.

A running metrics service notices the switch within ``generation_poll_seconds`` and continues
projecting in the rebuilt generation's consumer group (see :mod:`metrics.generations`).
"""

from __future__ import annotations

import asyncio

from metrics.app import MetricsSettings
from metrics.generations import Rebuilder
from shared.kafka import EventProducer
from shared.logging import configure_logging, get_logger
from shared.mongo import connect
from shared.topics import ensure_topics

log = get_logger(__name__)


async def rebuild(settings: MetricsSettings) -> int:
    client = connect(settings.mongo_url, max_pool_size=settings.mongo_max_pool_size)
    producer = EventProducer(settings.kafka_bootstrap, client_id="metrics-rebuild")
    try:
        if settings.create_topics:
            await ensure_topics(settings.kafka_bootstrap, settings.topic_prefix)
        rebuilder = Rebuilder(settings, client[settings.mongo_db], producer, poll_seconds=settings.rebuild_poll_seconds)
        return await rebuilder.run()
    finally:
        await producer.stop()
        await client.close()


def main() -> None:
    settings = MetricsSettings()
    configure_logging("metrics-rebuild", settings.log_level, settings.log_json)
    generation = asyncio.run(rebuild(settings))
    log.info("rebuild_done", generation=generation)


if __name__ == "__main__":
    main()
