"""The consumer runner on the real broker: retries, dead letters, de-duplication."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import REGISTRY

from shared.consumer import Consumed, ConsumerRunner, Fetch, TypeDispatch
from shared.contracts import registry as ev
from shared.envelope import Envelope, make_event
from shared.infra import FerretDB, KafkaBroker
from shared.kafka import EventProducer
from shared.runtime import Runtime
from shared.settings import ServiceSettings
from shared.testing import wait_until
from shared.topics import REGISTRY_TOPIC, dlq_topic

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]


class ConsumerSettings(ServiceSettings):
    service_name: str = "consumertest"


def unit_event(code: str) -> Envelope:
    return make_event(
        ev.UNIT_CREATED,
        ev.UnitCreated(code=code, name=f"Xã {code}", kind="commune", parent_code="QN", path=["QN", code]),
        source="/test",
        key=code,
    )


async def publish(settings: ServiceSettings, events: Sequence[Envelope]) -> None:
    producer = EventProducer(settings.kafka_bootstrap, client_id="test")
    try:
        await producer.send_all({REGISTRY_TOPIC: settings.topic(REGISTRY_TOPIC)}, list(events))
    finally:
        await producer.stop()


async def test_handler_failing_twice_then_succeeding_applies_once(make_settings) -> None:
    settings = make_settings(ConsumerSettings)
    attempts: dict[str, int] = {}
    applied: list[str] = []

    async def flaky(payload: ev.UnitCreated, env: Envelope) -> None:
        attempts[payload.code] = attempts.get(payload.code, 0) + 1
        if payload.code == "FLAKY" and attempts[payload.code] <= 2:
            raise RuntimeError("transient failure")
        applied.append(payload.code)

    runtime = Runtime(settings)
    runtime.add_consumer("flaky", [REGISTRY_TOPIC], TypeDispatch({ev.UNIT_CREATED: flaky}))
    await runtime.start()
    try:
        await publish(settings, [unit_event("FLAKY"), unit_event("AFTER")])

        async def done() -> bool:
            return {"FLAKY", "AFTER"} <= set(applied)

        await wait_until(done)
        await asyncio.sleep(0.5)  # room for a wrong extra application to show up
    finally:
        await runtime.stop()
    assert attempts["FLAKY"] == 3
    assert sorted(applied) == ["AFTER", "FLAKY"]


async def test_poison_message_goes_to_dlq_and_next_message_is_processed(make_settings, kafka: KafkaBroker) -> None:
    settings = make_settings(ConsumerSettings)
    applied: list[str] = []

    async def handle(payload: ev.UnitCreated, env: Envelope) -> None:
        if payload.code == "ALWAYS-FAILS":
            raise ValueError("cannot apply")
        applied.append(payload.code)

    runtime = Runtime(settings)
    runtime.add_consumer("poison", [REGISTRY_TOPIC], TypeDispatch({ev.UNIT_CREATED: handle}))
    await runtime.start()
    producer = EventProducer(settings.kafka_bootstrap, client_id="test")
    try:
        topic = settings.topic(REGISTRY_TOPIC)
        await producer.send_raw(topic, b"{not json", key=b"x", headers=[("ce_type", b"garbage")])
        await publish(settings, [unit_event("ALWAYS-FAILS"), unit_event("GOOD")])

        async def done() -> bool:
            return "GOOD" in applied

        await wait_until(done, timeout=30)
        dead = await collect_dead_letters(kafka.bootstrap, dlq_topic(topic), 2)
    finally:
        await producer.stop()
        await runtime.stop()
    assert applied == ["GOOD"]
    errors = sorted(h["dlq_error"].decode() for h in dead)
    assert errors[0].startswith("ValueError: cannot apply")
    assert errors[1].startswith("undecodable: missing header ce_id")
    assert all(h["dlq_topic"] == topic.encode() for h in dead)


async def collect_dead_letters(bootstrap: str, topic: str, n: int) -> list[dict[str, bytes]]:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await c.start()
    out: list[dict[str, bytes]] = []
    try:
        for _ in range(100):
            batch = await c.getmany(timeout_ms=200)
            out += [dict(r.headers) for rs in batch.values() for r in rs]
            if len(out) >= n:
                break
    finally:
        await c.stop()
    return out


async def test_duplicate_event_id_is_skipped(make_settings) -> None:
    settings = make_settings(ConsumerSettings)
    seen: list[str] = []

    async def handle(payload: ev.UnitCreated, env: Envelope) -> None:
        seen.append(env.id)

    runtime = Runtime(settings)
    runtime.add_consumer("dedup", [REGISTRY_TOPIC], TypeDispatch({ev.UNIT_CREATED: handle}))
    await runtime.start()
    try:
        first = unit_event("QN-A")
        await publish(settings, [first, first])  # the same ce_id twice, as after a relay crash
        await asyncio.sleep(0.5)
        await publish(settings, [first, unit_event("QN-B")])

        async def done() -> bool:
            return len(seen) >= 2

        await wait_until(done)
        await asyncio.sleep(1.0)  # give a wrongly re-applied duplicate time to show up
    finally:
        await runtime.stop()
    assert seen.count(first.id) == 1
    assert len(seen) == 2


async def test_batch_mode_isolates_the_bad_event(make_settings) -> None:
    settings = make_settings(ConsumerSettings)
    applied: list[str] = []

    async def batch(events: Sequence[Consumed]) -> None:
        codes = [c.envelope.data["code"] for c in events]
        if "BAD" in codes:
            raise ValueError("batch contains BAD")
        applied.extend(codes)

    runtime = Runtime(settings)
    runtime.add_consumer("batch", [REGISTRY_TOPIC], batch, per_event=False, dedup=False)
    await runtime.start()
    try:
        # One key, so all three share a partition and arrive in one batch.
        events = [
            make_event(
                ev.UNIT_CREATED,
                ev.UnitCreated(code=c, name=c, kind="commune", parent_code="QN", path=["QN", c]),
                source="/t",
                key="same",
            )
            for c in ("A", "BAD", "C")
        ]
        await publish(settings, events)

        async def done() -> bool:
            return "C" in applied

        await wait_until(done, timeout=30)
    finally:
        await runtime.stop()
    assert applied == ["A", "C"]


class Folder:
    """A FetchHandler that records what it wrote and refuses any fetch holding unit BAD."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.released: list[str] = []
        self.folds = 0
        self.forgets = 0
        self.assignments = 0
        # How much was written each time the runner said it caught up.
        self.caught_up_after: list[int] = []
        self.closed = False

    async def fold(self, events: AsyncIterable[Consumed]) -> list[str]:
        self.folds += 1
        return [c.envelope.data["code"] async for c in events]

    async def write(self, folded: list[str]) -> dict[str, float]:
        if "BAD" in folded:
            raise ValueError("fetch contains BAD")
        self.written.extend(folded)
        return {}

    def forget(self) -> None:
        self.forgets += 1

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        self.assignments += 1

    async def release(self, events: AsyncIterable[Consumed]) -> None:
        self.released += [c.envelope.data["code"] async for c in events]

    def caught_up(self) -> None:
        self.caught_up_after.append(len(self.written))

    async def close(self) -> None:
        self.closed = True


async def test_whole_fetch_mode_dead_letters_the_undecodable_and_the_failing_event_and_commits(
    make_settings, kafka: KafkaBroker
) -> None:
    settings = make_settings(ConsumerSettings)
    folder = Folder()
    producer = EventProducer(settings.kafka_bootstrap, client_id="test")
    topic = settings.topic(REGISTRY_TOPIC)
    runner = ConsumerRunner(
        name="fetch",
        bootstrap=settings.kafka_bootstrap,
        topics=[topic],
        group_id=settings.group("fetch"),
        handler=folder,
        producer=producer,
        per_event=False,
        max_retries=1,
        backoff_seconds=0.05,
        whole_fetch=True,
    )
    try:
        await producer.send_raw(topic, b"{not json", key=b"same", headers=[("ce_type", b"garbage")])
        await publish(settings, [unit_event_keyed(c, "same") for c in ("A", "BAD", "C")])
        await runner.start()

        async def done() -> bool:
            return "C" in folder.written

        await wait_until(done, timeout=30)
        dead = await collect_dead_letters(kafka.bootstrap, dlq_topic(topic), 2)

        async def committed() -> bool:  # offsets committed past every record, DLQ'd ones included
            return bool(runner.lag) and not any(runner.lag.values())

        await wait_until(committed, timeout=10)

        async def told() -> bool:  # deferred work is due once the stream has nothing more
            return 2 in folder.caught_up_after

        await wait_until(told, timeout=10)
    finally:
        await runner.stop()
        await producer.stop()
    assert folder.written == ["A", "C"]  # each alone after the whole fetch kept failing
    assert folder.released == ["BAD"]  # so that its replay from the DLQ is not taken for a copy
    assert folder.forgets >= 2  # memory dropped after every failed write
    assert folder.assignments >= 1  # the group's assignment reached the handler
    assert folder.closed  # stopping the runner ended what the handler runs in the background
    errors = sorted(h["dlq_error"].decode() for h in dead)
    assert errors[0].startswith("ValueError: fetch contains BAD")
    assert errors[1].startswith("undecodable:")


def unit_event_keyed(code: str, key: str) -> Envelope:
    return make_event(
        ev.UNIT_CREATED,
        ev.UnitCreated(code=code, name=code, kind="commune", parent_code="QN", path=["QN", code]),
        source="/t",
        key=key,
    )


async def test_a_database_outage_makes_events_wait_and_never_dead_letters_them(
    make_settings, own_ferretdb: FerretDB
) -> None:
    # A retry budget spent within a second: an outage must not count against it.
    settings = make_settings(ConsumerSettings, mongo_url=own_ferretdb.url, consumer_retries=1)
    runtime = Runtime(settings)
    units = runtime.db["units"]

    async def store(payload: ev.UnitCreated, env: Envelope) -> None:
        await units.update_one({"_id": payload.code}, {"$set": {"name": payload.name}}, upsert=True)

    runner = runtime.add_consumer("outage", [REGISTRY_TOPIC], TypeDispatch({ev.UNIT_CREATED: store}))
    await runtime.start()

    async def stored(n: int) -> bool:
        return await units.count_documents({}) == n

    try:
        await publish(settings, [unit_event("BEFORE")])
        await wait_until(lambda: stored(1), timeout=30)
        own_ferretdb.stop()
        await publish(settings, [unit_event(f"DURING-{i}") for i in range(3)])
        await asyncio.sleep(8)  # several server-selection timeouts (3 s each) and retry rounds
        own_ferretdb.start()
        await wait_until(lambda: stored(4), timeout=60)
    finally:
        await runtime.stop()
    dead = REGISTRY.get_sample_value(
        "bridge_consumer_events_dead_lettered_total", {"consumer": runner.name, "topic": settings.topic(REGISTRY_TOPIC)}
    )
    assert not dead


async def test_a_streamed_fetch_keeps_no_record_and_reads_them_again_from_kafka(make_settings) -> None:
    """The projector's fetches: the first pass takes records from the consumer in chunks and drops
    them; a second pass (a failed write, a redelivery) replays the same offsets from Kafka."""
    settings = make_settings(ConsumerSettings)
    topic = settings.topic(REGISTRY_TOPIC)
    producer = EventProducer(settings.kafka_bootstrap, client_id="test")
    try:
        await producer.send_raw(topic, b"{not json", key=b"K3", headers=[("ce_type", b"garbage")])
    finally:
        await producer.stop()
    await publish(settings, [unit_event(f"K{i}") for i in range(40)])
    runner = ConsumerRunner(
        name="stream",
        bootstrap=settings.kafka_bootstrap,
        topics=[topic],
        group_id=settings.group("stream"),
        handler=Folder(),
        producer=EventProducer(settings.kafka_bootstrap, client_id="unused"),
        per_event=False,
        max_records=30,
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group("stream"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        first: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        while not first:
            first = {tp: rs for tp, rs in (await consumer.getmany(timeout_ms=500, max_records=5)).items() if rs}
        more_calls: list[int] = []

        async def more(n: int) -> Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
            more_calls.append(n)
            got: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = await consumer.getmany(
                timeout_ms=200, max_records=n
            )
            return got

        fetch = Fetch(first, more=more, limit=30, replay=runner._replay)
        seen = [(c.partition, c.offset, c.envelope.data["code"]) async for c in fetch]
        again = [(c.partition, c.offset, c.envelope.data["code"]) async for c in fetch]
        raw = [(r.partition, r.offset) async for r in fetch.records()]
    finally:
        await consumer.stop()
    assert more_calls  # the fetch was read in more than one getmany
    assert sum(fetch.counts.values()) == 30  # stopped at the limit
    assert len(seen) + len(fetch.undecodable) == 30
    assert sorted(again) == sorted(seen)  # the same events, read again from the broker
    assert sorted(raw) == sorted((p, o) for p, o, _ in seen)  # decodable records only
    for tp, (lo, hi) in fetch.spans.items():
        assert all(lo <= o <= hi for p, o, _ in seen if p == tp.partition)
    assert fetch._kept is None  # nothing held between passes


class Sizes(Folder):
    """Records how many events each fetch held."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    async def write(self, folded: list[str]) -> dict[str, float]:
        self.sizes.append(len(folded))
        return await super().write(folded)


@pytest.mark.parametrize("top_up_ms", [0, 500])
async def test_a_fetch_behind_the_log_end_waits_for_more_records_up_to_its_cap(make_settings, top_up_ms: int) -> None:
    settings = make_settings(ConsumerSettings)
    await publish(settings, [unit_event(f"T{i}") for i in range(1500)])
    sizes = Sizes()
    producer = EventProducer(settings.kafka_bootstrap, client_id="test")
    runner = ConsumerRunner(
        name="topup",
        bootstrap=settings.kafka_bootstrap,
        topics=[settings.topic(REGISTRY_TOPIC)],
        group_id=settings.group("topup"),
        handler=sizes,
        producer=producer,
        per_event=False,
        whole_fetch=True,
        max_records=1200,
        # Each broker answer carries ~50 records of a partition: a fetch that took only what was
        # buffered would close long before the cap.
        partition_fetch_bytes=16 * 1024,
        fetch_max_bytes=64 * 1024,
        top_up_ms=top_up_ms,
    )
    try:
        await runner.start()

        async def drained() -> bool:
            return len(sizes.written) == 1500

        await wait_until(drained, timeout=60)
    finally:
        await runner.stop()
        await producer.stop()
    if top_up_ms:
        assert sizes.sizes[0] == 1200  # filled to the cap from answer after answer
    else:
        assert sizes.sizes[0] < 1200
