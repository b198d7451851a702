"""A minimal service built on the shared library, used to test the plumbing end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field

from shared.auth import Role, require_role
from shared.contracts import registry as ev
from shared.envelope import make_event
from shared.http import CurrentPrincipal, create_app
from shared.mongo import insert_once
from shared.outbox import outbox_fields
from shared.runtime import Runtime
from shared.settings import ServiceSettings


class SampleSettings(ServiceSettings):
    service_name: str = "sample"


class UnitIn(BaseModel):
    code: str = Field(min_length=1, max_length=40)
    name: str


router = APIRouter()


@router.post("/v1/units", status_code=201)
async def create_unit(body: UnitIn, principal: CurrentPrincipal, request: Request) -> dict[str, Any]:
    require_role(principal, Role.admin)
    runtime: Runtime = request.app.state.runtime
    event = make_event(
        ev.UNIT_CREATED,
        ev.UnitCreated(code=body.code, name=body.name, kind="province", parent_code=None, path=[body.code]),
        source="/sample",
        key=body.code,
    )
    doc, _ = await insert_once(
        runtime.db["units"], {"_id": body.code, "name": body.name, **outbox_fields([event])}, {"_id": body.code}
    )
    runtime.notify_relay()
    return {"code": doc["_id"], "name": doc["name"]}


def build_app(settings: SampleSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, outbox_collections=["units"])
        app.state.runtime = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    return create_app(service="sample", title="sample", description="test", lifespan=lifespan, routers=[router])
