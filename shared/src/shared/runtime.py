"""What a running service holds: database, producer, outbox relay, consumers and authenticator.

Each service's ``app.py`` builds one :class:`Runtime` in its lifespan and keeps it in
``app.state.runtime``; the shared HTTP layer reads readiness and auth from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from shared.auth import Authenticator
from shared.backpressure import DownstreamLag, Limits
from shared.consumer import PROCESSED_EVENTS, BatchHandler, ConsumerRunner, ProcessedEvents
from shared.http import ReadinessCheck
from shared.kafka import EventProducer
from shared.logging import get_logger
from shared.migrations import migrate_outboxes
from shared.mongo import Document, connect, ensure_indexes, ping
from shared.outbox import OutboxRelay
from shared.settings import ServiceSettings
from shared.topics import EVENT_TOPICS, ensure_topics
from shared.tracing import configure_tracing

log = get_logger(__name__)

SHUTDOWN_STEP_SECONDS = 10.0


async def _settle(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _bounded(step: Coroutine[Any, Any, None], what: str) -> None:
    # asyncio.wait, not wait_for: wait_for would wait for a step that ignores cancellation.
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_STEP_SECONDS)
    if not done:
        log.warning("shutdown_step_timed_out", step=what, seconds=SHUTDOWN_STEP_SECONDS)
        return
    with contextlib.suppress(asyncio.CancelledError):
        exc = task.exception()
        if exc is not None:
            log.warning("shutdown_step_failed", step=what, error=str(exc) or type(exc).__name__)


def tune_gc(gen0_threshold: int = 20_000) -> None:
    """Keep the objects alive at start-up out of the cyclic GC's passes, and make the passes rarer.

    Call once per process before serving. Refcounting still frees everything acyclic at once; only
    cycles wait longer. Measured in the visits process under 64 concurrent POSTs, about 25 s: with
    the default thresholds 11 full passes took 0.85 s in all and up to 139 ms each, a pause every
    request in flight waits out; with start-up objects frozen and this threshold, no full pass ran.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0_threshold, 50, 100)


class Runtime:
    def __init__(
        self,
        settings: ServiceSettings,
        *,
        outbox_collections: Sequence[str] = (),
        indexes: Mapping[str, Sequence[IndexModel]] | None = None,
        view_indexes: Mapping[str, Sequence[IndexModel]] | None = None,
    ) -> None:
        self.settings = settings
        # Spans are exported only when an OTLP endpoint is set (``otlp_endpoint`` or OTEL_EXPORTER_OTLP_ENDPOINT).
        configure_tracing(settings.service_name, settings.otlp_endpoint)
        self.client = connect(
            settings.mongo_url, max_pool_size=settings.mongo_max_pool_size, slow_ms=settings.mongo_slow_ms
        )
        self.db = self.client[settings.mongo_db]
        # The registry read model's database (``settings.view_db_name``), for the services that keep one.
        self.view_db = self.client[settings.view_db_name]
        self.producer = EventProducer(settings.kafka_bootstrap, client_id=settings.service_name)
        self.authenticator = Authenticator.from_settings(settings)
        self.topic_of = {t: settings.topic(t) for t in EVENT_TOPICS}
        self._indexes = dict(indexes or {})
        self._view_indexes = dict(view_indexes or {})
        self._outbox_collections = list(outbox_collections)
        self.relay = (
            OutboxRelay(
                self.db,
                outbox_collections,
                self.producer,
                service=settings.service_name,
                topic_of=self.topic_of,
                poll_seconds=settings.relay_poll_seconds,
                batch_size=settings.relay_batch_size,
                heartbeat_seconds=settings.relay_heartbeat_seconds,
                stale_after_seconds=settings.relay_stale_after_seconds,
            )
            if outbox_collections
            else None
        )
        self.consumers: list[ConsumerRunner] = []
        self._background: list[asyncio.Task[Any]] = []
        self.backpressure = (
            DownstreamLag(
                settings.kafka_bootstrap,
                settings.service_name,
                Limits(
                    groups=tuple(settings.group(g) for g in settings.backpressure_groups),
                    topics=tuple(settings.topic(t) for t in settings.backpressure_topics),
                    max_lag_events=settings.backpressure_max_lag_events,
                    max_outbox_events=settings.backpressure_max_outbox_events,
                ),
                outbox=lambda: self.relay.waiting() if self.relay else 0,
            )
            if settings.backpressure_groups or settings.backpressure_max_outbox_events > 0
            else None
        )

    def add_consumer(
        self,
        name: str,
        topics: Sequence[str],
        handler: BatchHandler,
        *,
        per_event: bool = True,
        dedup: bool = True,
        db: AsyncDatabase[Document] | None = None,
    ) -> ConsumerRunner:
        """Register a consumer group (started with the runtime). ``topics`` are base names.

        A batch handler (``per_event=False``) gets the configured linger, so it sees real batches.
        The group's processed event ids are kept in ``db`` (default: the service's database), the
        database its handler writes.
        """
        group = self.group_of(name)
        runner = ConsumerRunner.from_settings(
            self.settings,
            name=f"{self.settings.service_name}.{name}",
            topics=topics,
            group_id=group,
            handler=handler,
            producer=self.producer,
            dedup=ProcessedEvents((self.db if db is None else db)[PROCESSED_EVENTS], group) if dedup else None,
            per_event=per_event,
        )
        self.consumers.append(runner)
        return runner

    def group_of(self, consumer: str) -> str:
        """The consumer group id of this service's consumer ``consumer``."""
        return self.settings.group(f"{self.settings.service_name}.{consumer}")

    def notify_relay(
        self, collection: str | None = None, ids: Iterable[Any] = (), written: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Wake the outbox relay; naming the written documents spares it a sweep, handing it the
        documents just inserted spares it reading them (see OutboxRelay.notify)."""
        if self.relay:
            self.relay.notify(collection, ids, written)

    async def start(self) -> None:
        await ensure_indexes(self.db, self._indexes)
        if self._view_indexes:
            await ensure_indexes(self.view_db, self._view_indexes)
        if self.settings.create_topics:
            self._background.append(asyncio.create_task(self._create_topics()))
        if self.relay:
            await migrate_outboxes(self.db, self._outbox_collections)
            await self.relay.start()
        for c in self.consumers:
            await c.start()
        if self.backpressure:
            await self.backpressure.start()

    async def _create_topics(self) -> None:
        delay = 0.5
        while True:
            try:
                await ensure_topics(self.settings.kafka_bootstrap, self.settings.topic_prefix)
                return
            except Exception as exc:
                log.warning("topic_creation_retry", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def stop(self) -> None:
        """Stop everything; each step gets ``SHUTDOWN_STEP_SECONDS`` so a stuck one cannot hang shutdown.

        A step still running after that is logged and left behind (the process is exiting): a relay
        cancelled while its producer was connecting to Kafka was seen to never finish stopping.
        """
        for c in self.consumers:
            await _bounded(c.stop(), f"consumer {c.name}")
        if self.backpressure:
            await _bounded(self.backpressure.stop(), "backpressure")
        if self.relay:
            await _bounded(self.relay.stop(), "outbox relay")
        for t in self._background:
            t.cancel()
            await _bounded(_settle(t), t.get_name())
        await _bounded(self.producer.stop(), "producer")
        await _bounded(self.client.close(), "mongo client")

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        return {"mongo": lambda: ping(self.client), "kafka": self.producer.ping}
