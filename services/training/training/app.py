"""Wiring of the training service: settings, runtime, registry read model, routes."""

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
from shared.registry_view import RegistryView
from shared.runtime import Runtime
from shared.server import serve
from shared.settings import ServiceSettings
from shared.topics import REGISTRY_TOPIC
from training.api import router
from training.handlers import registry_handlers
from training.repository import COURSES, INDEXES, PARTICIPANTS, SESSIONS, TrainingRepository
from training.service import TrainingService


class TrainingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINING_", extra="ignore")

    service_name: str = "training"
    mongo_db: str = "training"
    host: str = "127.0.0.1"
    port: int = 8003


def build_app(settings: TrainingSettings | None = None) -> FastAPI:
    settings = settings or TrainingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every training event lives in its course's document, so one outbox collection keeps per-course order.
        runtime = Runtime(settings, outbox_collections=[COURSES], indexes=INDEXES, view_indexes=rm.INDEXES)
        view = RegistryView(runtime.view_db)
        repo = TrainingRepository(runtime.db)
        service = TrainingService(repo, view, runtime.notify_relay)
        runtime.add_consumer(
            "registry-view", [REGISTRY_TOPIC], registry_handlers(view, service), per_event=False, db=runtime.view_db
        )
        app.state.runtime = runtime
        app.state.training = service
        app.state.audit = AuditTrail(runtime.db, [COURSES, PARTICIPANTS, SESSIONS])
        # Before the registry-view consumer starts: its listener reads the index.
        await repo.migrate_pending_index()
        await move_registry_view(runtime.db, runtime.view_db, rm.COLLECTIONS, [runtime.group_of("registry-view")])
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    return create_app(
        service="training",
        title="Digital Bridge — training",
        description="Digital-literacy courses run by grassroots teams: sessions, participants and completions.",
        lifespan=lifespan,
        routers=[router, audit_router("course, participant, session")],
        max_body_bytes=settings.max_body_bytes,
        bulk=BulkAdmission.from_settings(settings),
    )


def main() -> None:
    settings = TrainingSettings()
    configure_logging("training", settings.log_level, settings.log_json)
    serve(build_app(settings), host=settings.host, port=settings.port)
