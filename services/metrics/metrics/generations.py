"""Projection generations: the live projector, and rebuilding a fresh generation from the topics.

How a rebuild switches without losing or doubling an event:
- Generation N is live: its projector runs in consumer group ``g(N)`` and writes ``*_gN``.
- A rebuild allocates M > N, captures the topics' high watermarks, and runs a projector in the
  brand-new group ``g(M)`` from the earliest offsets into empty ``*_gM`` collections, until the
  group's committed offsets reach the captured marks. Events published meanwhile are consumed too.
- It then stops that consumer (its committed offsets stay in Kafka) and flips ``meta.active`` to M
  in one single-document write. Readers re-read the generation every second, so they all move within one.
- The live side sees the flip, stops the ``g(N)`` projector and starts one in group ``g(M)``. That
  group resumes from exactly where the rebuild committed, so every event after the captured marks
  reaches generation M once: nothing is skipped (Kafka offsets) and nothing doubles (watermarks and
  applied ids of generation M also absorb a batch redelivered because the rebuild stopped between
  its write and its commit). Writes that ``g(N)`` makes after the flip go to a generation nobody
  reads any more, which is dropped once its projector has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pymongo.asynchronous.database import AsyncDatabase

from metrics.handlers import Projector
from metrics.repository import MetaRepository, ProjectionRepository
from shared.consumer import ConsumerRunner, ProcessedEvents
from shared.errors import Conflict
from shared.kafka import EventProducer
from shared.logging import get_logger
from shared.settings import ServiceSettings
from shared.topics import COUNTED_TOPICS

log = get_logger(__name__)

LIVE_CONSUMER = "metrics.projector"
REBUILD_CONSUMER = "metrics.rebuild"


def group_of(settings: ServiceSettings, generation: int) -> str:
    # Generation 1 keeps the plain group name a fresh install would get from Runtime.add_consumer.
    suffix = "" if generation == 1 else f".g{generation}"
    return settings.group(f"{LIVE_CONSUMER}{suffix}")


def base_topics(settings: ServiceSettings) -> dict[str, str]:
    return {settings.topic(t): t for t in COUNTED_TOPICS}


def projector_runner(
    settings: ServiceSettings,
    db: AsyncDatabase[dict[str, Any]],
    producer: EventProducer,
    generation: int,
    *,
    name: str,
) -> ConsumerRunner:
    """What ``runtime.add_consumer("projector", COUNTED_TOPICS, projector, per_event=False,
    dedup=False)`` builds, with the group chosen by generation so a rebuild can take over."""
    repo = ProjectionRepository(db, generation)
    group = group_of(settings, generation)
    projector = Projector(repo, ProcessedEvents(repo.processed_events, group), base_topics=base_topics(settings))
    return ConsumerRunner.from_settings(
        settings,
        name=name,
        topics=COUNTED_TOPICS,
        group_id=group,
        handler=projector,
        producer=producer,
        per_event=False,
        whole_fetch=True,
    )


class LiveProjection:
    """Keeps exactly one live projector running, for whichever generation ``meta`` says is active."""

    def __init__(
        self,
        settings: ServiceSettings,
        db: AsyncDatabase[dict[str, Any]],
        producer: EventProducer,
        *,
        poll_seconds: float = 2.0,
    ) -> None:
        self._settings = settings
        self._db = db
        self._producer = producer
        self._meta = MetaRepository(db)
        self._poll = poll_seconds
        self._lock = asyncio.Lock()
        self.generation: int | None = None
        self.runner: ConsumerRunner | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._meta.migrate_layout()  # once per process, before the first projector starts
        await self._meta.split_team_counters()
        await self.sync()
        self._task = asyncio.create_task(self._watch(), name="metrics-generation-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._lock:
            if self.runner:
                await self.runner.stop()
                self.runner = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("generation_sync_failed", error=str(exc) or type(exc).__name__)

    async def sync(self) -> None:
        """Follow ``meta.active``: on a change, hand the projection over to the new generation."""
        async with self._lock:
            active = await self._meta.active_generation()
            if active == self.generation:
                return
            previous, old_runner = self.generation, self.runner
            if old_runner:
                await old_runner.stop()
            repo = ProjectionRepository(self._db, active)
            await repo.ensure_indexes()
            self.runner = projector_runner(self._settings, self._db, self._producer, active, name=LIVE_CONSUMER)
            await self.runner.start()
            self.generation = active
            log.info("projection_generation_live", generation=active, previous=previous)
            if previous is not None and previous < active:
                await ProjectionRepository(self._db, previous).drop()


async def high_watermarks(bootstrap: str, topics: list[str], timeout: float = 30.0) -> dict[TopicPartition, int]:
    """The end offset of every partition of ``topics`` now: what a rebuild must reach."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while any(consumer.partitions_for_topic(t) is None for t in topics):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no partition metadata for {topics}")
            await asyncio.sleep(0.1)
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in offsets.items()}
    finally:
        await admin.close()


def caught_up(targets: Mapping[TopicPartition, int], committed: Mapping[TopicPartition, int]) -> bool:
    return all(committed.get(tp, -1) >= end for tp, end in targets.items() if end > 0)


class Rebuilder:
    """Replays every event topic into a new generation and makes it the active one."""

    def __init__(
        self,
        settings: ServiceSettings,
        db: AsyncDatabase[dict[str, Any]],
        producer: EventProducer,
        *,
        poll_seconds: float = 0.5,
    ) -> None:
        self._settings = settings
        self._db = db
        self._producer = producer
        self._meta = MetaRepository(db)
        self._poll = poll_seconds

    async def prepare(self) -> int:
        """Allocate the new generation and record that its rebuild is running."""
        generation = await self._meta.allocate_generation()
        await self._meta.set_rebuild_status(
            generation=generation, state="running", started_at=datetime.now(UTC), finished_at=None, error=None
        )
        return generation

    async def run(self, generation: int | None = None) -> int:
        if generation is None:
            generation = await self.prepare()
        try:
            await self._rebuild(generation)
        except BaseException as exc:
            await self._meta.set_rebuild_status(
                state="failed", error=str(exc) or type(exc).__name__, finished_at=datetime.now(UTC)
            )
            raise
        await self._meta.set_rebuild_status(state="done", finished_at=datetime.now(UTC))
        return generation

    async def _rebuild(self, generation: int) -> None:
        s = self._settings
        topics = [s.topic(t) for t in COUNTED_TOPICS]
        targets = await high_watermarks(s.kafka_bootstrap, topics)
        await self._meta.set_rebuild_status(events_to_replay=sum(targets.values()))
        repo = ProjectionRepository(self._db, generation)
        await repo.drop()  # a generation number is never reused, but be sure it starts empty
        await repo.ensure_indexes()
        runner = projector_runner(s, self._db, self._producer, generation, name=REBUILD_CONSUMER)
        log.info("rebuild_started", generation=generation, events=sum(targets.values()))
        await runner.start()
        try:
            while True:
                committed = await committed_offsets(s.kafka_bootstrap, group_of(s, generation))
                if caught_up(targets, committed):
                    break
                done = sum(max(0, min(committed.get(tp, 0), end)) for tp, end in targets.items() if end > 0)
                await self._meta.set_rebuild_status(events_replayed=done)
                await asyncio.sleep(self._poll)
        finally:
            await runner.stop()
        await self._meta.set_rebuild_status(events_replayed=sum(targets.values()))
        await self._meta.activate(generation)
        log.info("rebuild_activated", generation=generation)


class RebuildControl:
    """Runs at most one rebuild at a time in this process, then hands the projection over."""

    def __init__(self, rebuilder: Rebuilder, live: LiveProjection) -> None:
        self._rebuilder = rebuilder
        self._live = live
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def trigger(self) -> int:
        if self.running:
            raise Conflict("a rebuild is already running", slug="rebuild-running")
        generation = await self._rebuilder.prepare()
        self._task = asyncio.create_task(self._run(generation), name=f"metrics-rebuild-g{generation}")
        return generation

    async def _run(self, generation: int) -> None:
        try:
            await self._rebuilder.run(generation)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("rebuild_failed", generation=generation, error=str(exc) or type(exc).__name__)
            return
        await self._live.sync()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
