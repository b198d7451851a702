"""Wiring of the registry service: settings, runtime, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic_settings import SettingsConfigDict

from registry.api import router
from registry.repository import COLLECTIONS, INDEXES, Repository
from registry.service import RegistryService
from shared.audit import AuditTrail
from shared.audit_api import audit_router
from shared.http import BulkAdmission, create_app
from shared.logging import configure_logging
from shared.runtime import Runtime
from shared.server import serve
from shared.settings import ServiceSettings
from shared.topics import REGISTRY_TOPIC


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore")

    service_name: str = "registry"
    mongo_db: str = "registry"
    host: str = "127.0.0.1"
    port: int = 8001
    # The read models that must know a roster before the field's records naming it count (visits and
    # training hold those records as pending until then): a roster upload waits while either is
    # further behind than this, or the outbox holds more (ADR 0005, sixth pass).
    backpressure_groups: list[str] = ["visits.registry-view", "training.registry-view"]
    backpressure_topics: list[str] = [REGISTRY_TOPIC]
    backpressure_max_lag_events: int = 2000
    backpressure_max_outbox_events: int = 5000
    # Large enough to take turns and to wait for the read models: a roster of ~20 rows or more.
    bulk_request_min_bytes: int = 8 * 1024


DESCRIPTION = """The source of truth for the organisation: units, teams, volunteers, memberships and
campaigns. Other services learn about it only from its events on `registry.events.v1`.

Admins write anywhere; managers write inside their unit's subtree; field, viewer and integrator
tokens read, with volunteers' personal data masked."""


def build_app(settings: RegistrySettings | None = None) -> FastAPI:
    settings = settings or RegistrySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, outbox_collections=COLLECTIONS, indexes=INDEXES)
        app.state.runtime = runtime
        repo = Repository(runtime.db, runtime.notify_relay)
        app.state.registry = RegistryService(repo)
        app.state.audit = AuditTrail(runtime.db, COLLECTIONS)
        await runtime.start()
        try:
            await repo.migrate_membership_hints()
            yield
        finally:
            await runtime.stop()

    return create_app(
        service=settings.service_name,
        title="Digital Bridge registry",
        description=DESCRIPTION,
        lifespan=lifespan,
        routers=[router, audit_router("unit, team, volunteer, membership, campaign")],
        max_body_bytes=settings.max_body_bytes,
        bulk=BulkAdmission.from_settings(settings),
    )


def main() -> None:
    settings = RegistrySettings()
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    serve(build_app(settings), host=settings.host, port=settings.port)
