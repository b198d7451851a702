"""Wiring of the metrics service: settings, lifespan (runtime, live projector, gauges) and main()."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic_settings import SettingsConfigDict

from metrics.api import router
from metrics.closing import ClosingService
from metrics.gauges import GaugeRefresher
from metrics.generations import LiveProjection, RebuildControl, Rebuilder
from metrics.ledger import EventLog
from metrics.repository import MetricsStore, PeriodRepository
from metrics.service import MetricsService
from shared.audit import AuditTrail
from shared.audit_api import audit_router
from shared.http import BulkAdmission, create_app
from shared.logging import configure_logging
from shared.runtime import Runtime, tune_gc
from shared.server import serve
from shared.settings import ServiceSettings
from shared.topics import COUNTED_TOPICS


class MetricsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METRICS_", extra="ignore")

    service_name: str = "metrics"
    mongo_db: str = "metrics"
    host: str = "127.0.0.1"
    port: int = 8004
    gauge_refresh_seconds: float = 5.0
    # A projector fetch costs one write per counter document it touches, whatever its size, so a
    # backlog (a rebuild, a restart) is drained in large fetches. Fetches keep no records (see
    # shared.consumer.Fetch), so their size no longer shows in memory: draining 200k events peaked
    # at 122-128 MB at 10,000 and 121-122 MB at 20,000, at 28-30k and 32-33k events/s. When each
    # fetch held its records, 10,000 had peaked at 166 MB and 5,000 at 143 MB (28k events/s).
    consumer_max_records: int = 20_000
    # Under a steady stream a fetch should be cut by the linger (time limit below), not by size: every fetch
    # rewrites each unit it touches, so 1 MiB fetches (~1,000 events) at 16,000 events/s meant
    # ~16 rewrites of every unit per second and the projector fell behind (freshness p50 0.7 s).
    consumer_linger_bytes: int = 8 * 1024 * 1024
    # The linger's time limit. At 19,000 events/s (the bench's 50% load), 200 ms gave freshness p99
    # 1.05-1.11 s and 120 ms 0.53 s (p50 0.47-0.49 -> 0.34 s) in the same harness: a fetch's fold
    # and write follow its linger, and shorter fetches cost a little more FerretDB CPU (25 s
    # against 21-23 s over the part).
    consumer_linger_ms: int = 120
    # Raw fetch buffers are the other large part of the projector's memory. Draining 200k events
    # (one topic, 6 partitions), 32/4 MiB fetches peaked at 188-199 MB and 8/2 MiB at 164-174 MB,
    # at the same throughput (27-32k events/s either way); 4/1 MiB peaked at 128 MB but drained at
    # 20-22k events/s (both measured while fetches still held their records). The linger above
    # stays at most this size, so a backlog is answered at once.
    consumer_fetch_max_bytes: int = 8 * 1024 * 1024
    consumer_partition_fetch_bytes: int = 2 * 1024 * 1024
    # A fetch of 8 MiB holds ~10,000 events. Draining 200k events, fetches closed when the buffer
    # ran dry had 8-11k events (23 fetches); waiting up to 50 ms for the next response filled most
    # to the 20,000 cap (14 fetches), and the writes per fetch took 1.6 s in all instead of 2.8 s.
    # It waits only when the broker's answers showed more records waiting (a backlog), so a
    # caught-up projector does not add it to every fetch's latency.
    consumer_fetch_top_up_ms: int = 50
    # How often the live side checks whether a rebuild (maybe in another process) switched generation.
    generation_poll_seconds: float = 2.0
    rebuild_poll_seconds: float = 0.5


def build_app(settings: MetricsSettings | None = None) -> FastAPI:
    settings = settings or MetricsSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, outbox_collections=["period_closes"])
        app.state.runtime = runtime
        service = MetricsService(MetricsStore(runtime.db))
        live = LiveProjection(settings, runtime.db, runtime.producer, poll_seconds=settings.generation_poll_seconds)
        rebuilder = Rebuilder(settings, runtime.db, runtime.producer, poll_seconds=settings.rebuild_poll_seconds)
        control = RebuildControl(rebuilder, live)
        gauges = GaugeRefresher(service, settings.gauge_refresh_seconds)
        periods = PeriodRepository(runtime.db)
        log = EventLog(settings.kafka_bootstrap, {t: settings.topic(t) for t in COUNTED_TOPICS})
        app.state.closing = ClosingService(service, periods, log, runtime.notify_relay)
        app.state.metrics = service
        app.state.audit = AuditTrail(runtime.db, ["period_closes"])
        app.state.live = live
        app.state.rebuild = control
        app.state.gauges = gauges
        await runtime.start()
        await periods.ensure_indexes()
        await live.start()
        await gauges.start()
        try:
            yield
        finally:
            await gauges.stop()
            await control.stop()
            await live.stop()
            await runtime.stop()

    return create_app(
        service="metrics",
        title="Digital Bridge metrics",
        description="Live indicators of the digital-literacy and online-services campaigns, per unit and day.",
        lifespan=lifespan,
        routers=[router, audit_router("period (closes, approvals and reopenings of a unit's reporting period)")],
        max_body_bytes=settings.max_body_bytes,
        bulk=BulkAdmission.from_settings(settings),
    )


def main() -> None:
    settings = MetricsSettings()
    configure_logging("metrics", settings.log_level, settings.log_json)
    # Draining 200k events, four runs each way: 32.7-36.6k events/s with it, 30.1-32.6k without.
    tune_gc()
    serve(build_app(settings), host=settings.host, port=settings.port)
