"""Wiring of the visits service: settings, runtime, read-model consumer, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic_settings import SettingsConfigDict

from shared import registry_view as rm
from shared.audit import AuditTrail
from shared.audit_api import audit_router
from shared.http import BulkAdmission, create_app
from shared.logging import configure_logging
from shared.migrations import move_registry_view
from shared.registry_view import ReadModelCache, RegistryView
from shared.runtime import Runtime, tune_gc
from shared.server import serve
from shared.settings import ServiceSettings
from shared.topics import REGISTRY_TOPIC
from visits.api import router
from visits.handlers import registry_handlers
from visits.repository import (
    INDEXES,
    OUTREACH,
    PENDING,
    PENDING_KEYS,
    VISITS,
    PendingIndex,
    RecordRepository,
    RegistryReader,
    drop_team_members,
)
from visits.service import OutreachService, VisitService


class VisitsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VISITS_", extra="ignore")

    service_name: str = "visits"
    mongo_db: str = "visits"
    host: str = "127.0.0.1"
    port: int = 8002
    # How long a read-model document answers reference checks from memory. Changes this process
    # applies are forgotten at once; this bounds how stale a change applied by another replica (its
    # own partitions) can be here. 0 reads the database for every check.
    read_model_cache_seconds: float = 5.0


DESCRIPTION = """Field visits and outreach posts of the youth union's digital-transformation teams.

Records arrive late, in batches and sometimes twice: `client_ref` makes every upload idempotent.
References (team, unit, volunteers) are checked against a local read model of the registry, so the
service keeps accepting records while the registry is down; records that mention something the
read model does not know yet are held as `pending` and validated when the registry event arrives.
A record naming a merged unit's old code is stored under its successor (`resolved_from` says so);
a closed or split unit takes no new records (problem `unit-closed`, 409).
"""


def build_app(settings: VisitsSettings | None = None) -> FastAPI:
    cfg = settings or VisitsSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(cfg, outbox_collections=[VISITS, OUTREACH], indexes=INDEXES, view_indexes=rm.INDEXES)
        cache = ReadModelCache(cfg.read_model_cache_seconds)
        reader = RegistryReader(runtime.view_db, cache)
        pending = PendingIndex(runtime.db[PENDING], runtime.db[PENDING_KEYS])
        visits = VisitService(
            RecordRepository(runtime.db[VISITS]),
            pending,
            reader,
            lambda ids, written: runtime.notify_relay(VISITS, ids, written),
        )
        outreach = OutreachService(
            RecordRepository(runtime.db[OUTREACH]),
            pending,
            reader,
            lambda ids, written: runtime.notify_relay(OUTREACH, ids, written),
        )
        view = RegistryView(runtime.view_db, cache=cache, team_members=False)
        handler = registry_handlers(view, visits.on_registry_change, outreach.on_registry_change)
        runtime.add_consumer("registry-view", [REGISTRY_TOPIC], handler, per_event=False, db=runtime.view_db)
        app.state.runtime = runtime
        app.state.visits = visits
        app.state.outreach = outreach
        app.state.audit = AuditTrail(runtime.db, [VISITS, OUTREACH])
        # Before the registry-view consumer starts.
        await move_registry_view(runtime.db, runtime.view_db, rm.COLLECTIONS, [runtime.group_of("registry-view")])
        await drop_team_members(runtime.view_db)
        await pending.migrate_keys(runtime.db)
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    return create_app(
        service="visits",
        title="Digital Bridge — visits",
        description=DESCRIPTION,
        lifespan=lifespan,
        routers=[router, audit_router("visit, outreach_post")],
        max_body_bytes=cfg.max_body_bytes,
        bulk=BulkAdmission.from_settings(cfg),
    )


def main() -> None:
    settings = VisitsSettings()
    configure_logging("visits", settings.log_level, settings.log_json)
    tune_gc()
    serve(build_app(settings), host=settings.host, port=settings.port)
