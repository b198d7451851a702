"""One running training service per test module, fed with registry contract events through Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from pydantic import BaseModel

from shared.contracts import registry as reg
from shared.envelope import Envelope, decode, make_event
from shared.infra import FerretDB, KafkaBroker
from shared.kafka import EventProducer
from shared.mongo import Document
from shared.testing import running_app, wait_until
from shared.topics import REGISTRY_TOPIC, TRAINING_TOPIC, ensure_topics_sync
from training.app import TrainingSettings, build_app


@dataclass
class Published:
    envelope: Envelope
    partition: int


@dataclass
class Training:
    """The running service, its database and everything it published."""

    client: httpx.AsyncClient
    settings: TrainingSettings
    app: Any
    producer: EventProducer
    received: list[Published] = field(default_factory=list)

    @property
    def db(self) -> Any:
        return self.app.state.runtime.db

    @property
    def view_db(self) -> Any:
        """The registry read model's own database."""
        return self.app.state.runtime.view_db

    async def registry(self, *events: tuple[str, BaseModel, str]) -> None:
        """Publish registry contract events (type, payload, key), as the registry service would."""
        envelopes = [make_event(t, payload, source="/registry", key=key) for t, payload, key in events]
        await self.producer.send_all({REGISTRY_TOPIC: self.settings.topic(REGISTRY_TOPIC)}, envelopes)

    def events_of(self, code: str) -> list[Published]:
        return [p for p in self.received if p.envelope.key == code]

    async def events(self, code: str, count: int, settle: float = 0.6) -> list[Published]:
        """The course's events once ``count`` arrived, after waiting ``settle`` s for unexpected extras."""
        await wait_until(lambda: _ready(len(self.events_of(code)) >= count), timeout=30)
        await asyncio.sleep(settle)
        return self.events_of(code)

    async def course_doc(self, code: str) -> Document | None:
        doc: Document | None = await self.db["courses"].find_one({"_id": code})
        return doc

    async def counts(self, code: str) -> tuple[int, int, int]:
        """(participants, sessions, course rev): what a rejected request must leave unchanged."""
        doc = await self.course_doc(code)
        return (
            await self.db["participants"].count_documents({"course_code": code}),
            await self.db["sessions"].count_documents({"course_code": code}),
            doc["rev"] if doc else -1,
        )


async def _ready(value: bool) -> bool:
    return value


def unit(code: str, name: str, kind: str, path: list[str]) -> tuple[str, BaseModel, str]:
    parent = path[-2] if len(path) > 1 else None
    return reg.UNIT_CREATED, reg.UnitCreated(code=code, name=name, kind=kind, parent_code=parent, path=path), code


def team(code: str, kind: str, unit_path: list[str], name: str = "Đội hình tình nguyện") -> tuple[str, BaseModel, str]:
    return (
        reg.TEAM_CREATED,
        reg.TeamCreated(code=code, name=name, kind=kind, unit_code=unit_path[-1], unit_path=unit_path),
        code,
    )


def team_deactivated(code: str, kind: str, unit_path: list[str]) -> tuple[str, BaseModel, str]:
    return (
        reg.TEAM_DEACTIVATED,
        reg.TeamDeactivated(code=code, kind=kind, unit_code=unit_path[-1], unit_path=unit_path),
        code,
    )


def volunteer(vid: str, unit_path: list[str], skills: list[str]) -> tuple[str, BaseModel, str]:
    return (
        reg.VOLUNTEER_REGISTERED,
        reg.VolunteerRegistered(
            volunteer_id=vid,
            unit_code=unit_path[-1],
            unit_path=unit_path,
            roles=["union_member"],
            skills=skills,
            birth_year=2001,
        ),
        vid,
    )


def membership(team_code: str, vid: str) -> tuple[str, BaseModel, str]:
    return (
        reg.MEMBERSHIP_STARTED,
        reg.MembershipStarted(team_code=team_code, volunteer_id=vid, since=date(2025, 6, 1)),
        f"{team_code}/{vid}",
    )


# The registry world every module starts with: Quảng Ninh, two of its units and their teams.
QN = ["QN"]
HL = ["QN", "QN-HL"]
HL_SCHOOL = ["QN", "QN-HL", "QN-HL-THPT"]
VD = ["QN", "QN-VD"]
WORLD = [
    unit("QN", "Tỉnh Quảng Ninh", "province", QN),
    unit("QN-HL", "Phường Hạ Long", "ward", HL),
    unit("QN-HL-THPT", "Trường THPT Hạ Long", "school", HL_SCHOOL),
    unit("QN-VD", "Đặc khu Vân Đồn", "special_zone", VD),
    team("LIT-HL", "literacy", HL, "Đội hình Bình dân học vụ số Phường Hạ Long"),
    team("LIT-VD", "literacy", VD, "Đội hình Bình dân học vụ số Đặc khu Vân Đồn"),
    team("OLD-HL", "literacy", HL),
    team_deactivated("OLD-HL", "literacy", HL),
    team("CAMP-HL", "campaign", HL, "Đội hình Thắp sáng màu hồng"),
    volunteer("V-TEACH", HL, ["teaching", "it"]),
    membership("CAMP-HL", "V-TEACH"),
    team("CAMP-NOTEACH", "campaign", HL, "Đội hình Mùa hè xanh"),
]


async def _collect(bootstrap: str, topic: str, out: list[Published]) -> None:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None, metadata_max_age_ms=1000
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(Published(decode(r.key, r.value, list(r.headers)), r.partition) for r in records)
    finally:
        await consumer.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def training(kafka: KafkaBroker, ferretdb: FerretDB) -> AsyncIterator[Training]:
    run = uuid.uuid4().hex[:10]
    prefix = f"t{run}."
    ensure_topics_sync(kafka.bootstrap, prefix)
    settings = TrainingSettings(
        kafka_bootstrap=kafka.bootstrap,
        mongo_url=ferretdb.url,
        mongo_db=f"training_{run}",
        topic_prefix=prefix,
        consumer_group_prefix=prefix,
        relay_poll_seconds=0.1,
        consumer_backoff_seconds=0.05,
        log_json=False,
    )
    app = build_app(settings)
    producer = EventProducer(kafka.bootstrap, client_id="registry-test")
    async with running_app(app) as client:
        t = Training(client=client, settings=settings, app=app, producer=producer)
        collector = asyncio.create_task(_collect(kafka.bootstrap, settings.topic(TRAINING_TOPIC), t.received))
        await t.registry(*WORLD)

        async def world_known() -> bool:
            return (
                await t.view_db["rm_units"].count_documents({}) == 4
                and await t.view_db["rm_teams"].count_documents({}) == 5
                and await t.view_db["rm_teams"].count_documents({"_id": "OLD-HL", "active": False}) == 1
                and await t.view_db["rm_memberships"].count_documents({}) == 1
                and await t.view_db["rm_volunteers"].count_documents({}) == 1
            )

        await wait_until(world_known, timeout=60)
        try:
            yield t
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
            await producer.stop()


@pytest.fixture
def registry_events() -> SimpleNamespace:
    """Builders of registry contract events, for tests that grow the registry world."""
    return SimpleNamespace(unit=unit, team=team, volunteer=volunteer, membership=membership)
