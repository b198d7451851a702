"""The outbox: an acknowledged write reaches Kafka even when Kafka was down at the time."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
import pytest

from shared.infra import FerretDB, KafkaBroker
from shared.testing import collect_events, running_app, token
from shared.testing.support import unpublished_events
from shared.topics import ensure_topics_sync

from .sample_app import SampleSettings, build_app

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]


async def test_write_while_kafka_is_down_is_published_after_it_returns(
    own_kafka: KafkaBroker, ferretdb: FerretDB, run_id: str
) -> None:
    ensure_topics_sync(own_kafka.bootstrap)
    settings = SampleSettings(
        kafka_bootstrap=own_kafka.bootstrap,
        mongo_url=ferretdb.url,
        mongo_db=f"outbox_{run_id}",
        relay_poll_seconds=0.1,
        log_json=False,
    )
    own_kafka.stop()
    async with running_app(build_app(settings)) as client:
        for code, name in (("QN", "Tỉnh Quảng Ninh"), ("QN-VD", "Đặc khu Vân Đồn")):
            r = await client.post("/v1/units", json={"code": code, "name": name}, headers=token())
            assert r.status_code == 201, r.text
        pending = await build_pending_count(settings)
        assert pending == 2  # acknowledged, not yet published
        own_kafka.start()
        got = await collect_events(own_kafka.bootstrap, ["registry.events.v1"], count=2, timeout=60, settle=1.0)
    assert sorted(e.envelope.data["name"] for e in got) == ["Tỉnh Quảng Ninh", "Đặc khu Vân Đồn"]
    assert {e.envelope.key for e in got} == {"QN", "QN-VD"}
    assert len({e.envelope.id for e in got}) == 2
    assert await build_pending_count(settings) == 0


async def build_pending_count(settings: SampleSettings) -> int:
    from shared.mongo import connect

    client = connect(settings.mongo_url)
    try:
        return await unpublished_events(client[settings.mongo_db], ["units"])
    finally:
        await client.close()


async def test_events_of_one_aggregate_keep_their_order(make_settings, kafka: KafkaBroker) -> None:
    from shared.contracts import registry as ev
    from shared.envelope import make_event
    from shared.mongo import connect
    from shared.outbox import outbox_fields, outbox_update
    from shared.runtime import Runtime

    settings = make_settings(SampleSettings)
    runtime = Runtime(settings, outbox_collections=["units"])
    await runtime.start()
    try:

        def unit(name: str) -> object:
            return make_event(
                ev.UNIT_UPDATED,
                ev.UnitUpdated(
                    code="QN", name=name, kind="province", parent_code=None, path=["QN"], previous_path=["QN"]
                ),
                source="/t",
                key="QN",
            )

        col = runtime.db["units"]
        await col.insert_one({"_id": "QN", **outbox_fields([unit("v0")])})  # type: ignore[list-item]
        for i in range(1, 30):
            await col.update_one({"_id": "QN"}, outbox_update({"$set": {"name": f"v{i}"}}, [unit(f"v{i}")]))  # type: ignore[list-item]
            if i % 7 == 0:
                runtime.notify_relay()
        got = await collect_events(
            kafka.bootstrap, [settings.topic("registry.events.v1")], count=30, timeout=30, settle=1.0
        )
    finally:
        await runtime.stop()
    assert [e.envelope.data["name"] for e in got] == [f"v{i}" for i in range(30)]
    assert len({e.partition for e in got}) == 1
    client = connect(settings.mongo_url)
    assert await unpublished_events(client[settings.mongo_db], ["units"]) == 0
    await client.close()


async def test_relay_trims_a_long_published_outbox_but_never_a_writers_newer_events(
    make_settings, kafka: KafkaBroker
) -> None:
    from shared.contracts import registry as ev
    from shared.envelope import make_event
    from shared.kafka import EventProducer
    from shared.mongo import connect
    from shared.outbox import OutboxRelay, entry_id, entry_record, outbox_fields, outbox_update

    settings = make_settings(SampleSettings)
    ensure_topics_sync(kafka.bootstrap, prefix=settings.topic_prefix)

    def unit(name: str) -> Any:
        payload = ev.UnitUpdated(
            code="QN", name=name, kind="province", parent_code=None, path=["QN"], previous_path=["QN"]
        )
        return make_event(ev.UNIT_UPDATED, payload, source="/t", key="QN")

    client = connect(settings.mongo_url)
    producer = EventProducer(settings.kafka_bootstrap, client_id="trim-test")
    topic_of = {"registry.events.v1": settings.topic("registry.events.v1")}
    col = client[settings.mongo_db]["units"]
    relay = OutboxRelay(client[settings.mongo_db], ["units"], producer, service="t", topic_of=topic_of, trim_after=8)
    try:
        await col.insert_one({"_id": "QN", **outbox_fields([unit(f"v{i}") for i in range(10)])})
        # A writer reads the document (rev 1) before the relay runs...
        stale = await col.find_one({"_id": "QN"})
        assert stale is not None
        assert await relay.drain_once({"units": {"QN"}}) == 10
        trimmed = await col.find_one({"_id": "QN"})
        assert trimmed is not None
        assert trimmed["outbox"] == []
        assert trimmed["rev"] == 1  # the trim does not move rev...
        # ...so the writer's compare-and-set still matches and its event is kept and published.
        res = await col.update_one(
            {"_id": "QN", "rev": stale["rev"]}, outbox_update({"$set": {"name": "v10"}}, [unit("v10")])
        )
        assert res.modified_count == 1
        # A document that moved on after the relay read it is not trimmed: the newer event survives.
        for i in range(11, 20):
            await col.update_one({"_id": "QN"}, outbox_update({"$set": {"name": f"v{i}"}}, [unit(f"v{i}")]))
        read = await col.find_one({"_id": "QN"})
        assert read is not None
        await col.update_one({"_id": "QN"}, outbox_update({}, [unit("v20")]))
        as_if_published = {entry_id(e) for e in read["outbox"]}
        relay._published |= as_if_published
        await relay._trim("units", [read])
        relay._published -= as_if_published
        kept = await col.find_one({"_id": "QN"})
        assert kept is not None
        names = [orjson.loads(entry_record(e)[1][2])["name"] for e in kept["outbox"]]
        assert names == [f"v{i}" for i in range(10, 21)]
        assert await relay.drain_once({"units": {"QN"}}) == 11
        done = await col.find_one({"_id": "QN"})
        assert done is not None
        assert done["outbox"] == []
        got = await collect_events(
            kafka.bootstrap, [settings.topic("registry.events.v1")], count=21, timeout=30, settle=1.0
        )
    finally:
        await producer.stop()
        await client.close()
    assert [e.envelope.data["name"] for e in got] == [f"v{i}" for i in range(21)]


async def test_a_backlog_swept_in_chunks_reaches_kafka_once_each_in_order(make_settings, kafka: KafkaBroker) -> None:
    from shared.contracts import registry as ev
    from shared.envelope import make_event
    from shared.kafka import EventProducer
    from shared.mongo import connect
    from shared.outbox import OutboxRelay, outbox_entry, outbox_fields, published_ids

    settings = make_settings(SampleSettings)
    ensure_topics_sync(kafka.bootstrap, prefix=settings.topic_prefix)
    topic_of = {"registry.events.v1": settings.topic("registry.events.v1")}

    def unit(code: str, name: str) -> Any:
        payload = ev.UnitUpdated(
            code=code, name=name, kind="commune", parent_code="QN", path=["QN", code], previous_path=["QN", code]
        )
        return make_event(ev.UNIT_UPDATED, payload, source="/t", key=code)

    codes = [f"QN-C{i:02d}" for i in range(12)]
    client = connect(settings.mongo_url)
    db = client[settings.mongo_db]
    for i, code in enumerate(codes):
        events = [unit(code, f"{code} v{j}") for j in range(1 + i % 4)]
        await db["units"].insert_one({"_id": code, **outbox_fields(events)})
    # Outboxes in the earlier entry forms still drain: nested entries with the payload as a document
    # (before 2026-11) or as JSON text (before 2026-11-28), and uncompressed strings (2026-11-28).
    legacy = [unit("QN-OLD", f"QN-OLD v{j}") for j in range(2)]
    await db["units"].insert_one({"_id": "QN-OLD", "outbox": [e.to_document() for e in legacy], "rev": 1})
    texts = [unit("QN-TXT", f"QN-TXT v{j}") for j in range(2)]
    as_text = [{**e.to_document(), "data": e.value().decode()} for e in texts]
    await db["units"].insert_one({"_id": "QN-TXT", "outbox": as_text, "rev": 1})
    strings = [unit("QN-STR", f"QN-STR v{j}") for j in range(2)]
    as_strings = [zlib.decompress(outbox_entry(e)).decode() for e in strings]
    await db["units"].insert_one({"_id": "QN-STR", "outbox": as_strings, "rev": 1})
    expected = {code: [f"{code} v{j}" for j in range(1 + i % 4)] for i, code in enumerate(codes)}
    expected["QN-OLD"] = ["QN-OLD v0", "QN-OLD v1"]
    expected["QN-TXT"] = ["QN-TXT v0", "QN-TXT v1"]
    expected["QN-STR"] = ["QN-STR v0", "QN-STR v1"]
    total = sum(len(v) for v in expected.values())

    unreachable = EventProducer("127.0.0.1:1", client_id="outbox-test-down")
    relay = OutboxRelay(db, ["units"], unreachable, service="t", topic_of=topic_of, batch_size=3)
    producer = EventProducer(settings.kafka_bootstrap, client_id="outbox-test")
    try:
        with pytest.raises(ConnectionError):
            await relay.drain_once({})
        assert await published_ids(db) == set()  # nothing recorded that Kafka did not take
        relay = OutboxRelay(db, ["units"], producer, service="t", topic_of=topic_of, batch_size=3)
        assert await relay.drain_once({}) == total  # a fresh relay sweeps first, in chunks of ~3 events
        relay.notify()
        assert await relay.drain_once({}) == 0
        assert len(await published_ids(db)) == total
        got = await collect_events(kafka.bootstrap, list(topic_of.values()), count=total, timeout=30, settle=1.0)
    finally:
        await unreachable.stop()
        await producer.stop()
        await client.close()
    assert len(got) == total
    by_key: dict[str, list[str]] = {}
    for e in got:
        by_key.setdefault(e.envelope.key, []).append(e.envelope.data["name"])
    assert by_key == expected


async def test_a_relay_stopped_mid_sweep_leaves_the_rest_to_the_next_one(make_settings, kafka: KafkaBroker) -> None:
    import asyncio

    from shared.contracts import registry as ev
    from shared.envelope import make_event
    from shared.kafka import EventProducer
    from shared.mongo import connect
    from shared.outbox import OutboxRelay, outbox_fields, published_ids

    settings = make_settings(SampleSettings)
    ensure_topics_sync(kafka.bootstrap, prefix=settings.topic_prefix)
    topic_of = {"registry.events.v1": settings.topic("registry.events.v1")}
    client = connect(settings.mongo_url)
    db = client[settings.mongo_db]
    codes = [f"QN-C{i:04d}" for i in range(3000)]
    docs = []
    for code in codes:
        payload = ev.UnitUpdated(
            code=code, name=code, kind="commune", parent_code="QN", path=["QN"], previous_path=["QN"]
        )
        docs.append({"_id": code, **outbox_fields([make_event(ev.UNIT_UPDATED, payload, source="/t", key=code)])})
    await db["units"].insert_many(docs)
    producer = EventProducer(settings.kafka_bootstrap, client_id="outbox-test")
    try:
        first = OutboxRelay(db, ["units"], producer, service="t", topic_of=topic_of, batch_size=100)
        await first.start()
        while first.published < 500:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.01)
        await first.stop()
        assert first.published < len(codes)
        second = OutboxRelay(db, ["units"], producer, service="t", topic_of=topic_of, batch_size=100)
        await second.start()
        while len(await published_ids(db)) < len(codes):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await second.stop()
        # The second relay skips what the first recorded. Stopping can cut in after a chunk was
        # recorded but before it was counted (one chunk), or between publishing and recording
        # (the chunk being recorded and the one queued behind it): those come again, same ce_id.
        assert len(codes) - 100 <= first.published + second.published <= len(codes) + 2 * 100
        got = await collect_events(kafka.bootstrap, list(topic_of.values()), count=len(codes), timeout=60)
    finally:
        await producer.stop()
        await client.close()
    assert {e.envelope.key for e in got} == set(codes)


async def test_inserted_documents_handed_to_the_relay_are_published_without_reading_them_back(
    make_settings, kafka: KafkaBroker
) -> None:
    from prometheus_client import REGISTRY

    from shared.contracts import registry as ev
    from shared.envelope import make_event
    from shared.kafka import EventProducer
    from shared.mongo import connect
    from shared.outbox import OutboxRelay, outbox_fields, outbox_update

    settings = make_settings(SampleSettings)
    ensure_topics_sync(kafka.bootstrap, prefix=settings.topic_prefix)
    topic_of = {"registry.events.v1": settings.topic("registry.events.v1")}
    client = connect(settings.mongo_url)
    db = client[settings.mongo_db]
    collection = f"handed_{settings.mongo_db[-6:]}"

    def unit(code: str, name: str) -> Any:
        payload = ev.UnitUpdated(
            code=code, name=name, kind="commune", parent_code="QN", path=["QN"], previous_path=["QN"]
        )
        return make_event(ev.UNIT_UPDATED, payload, source="/t", key=code)

    def finds() -> float:
        return (
            REGISTRY.get_sample_value(
                "mongo_command_duration_seconds_count", {"command": "find", "collection": collection}
            )
            or 0.0
        )

    docs = [{"_id": f"QN-H{i}", **outbox_fields([unit(f"QN-H{i}", "v0")])} for i in range(5)]
    await db[collection].insert_many(docs)
    # One of them is changed after its insert: it is named by id, so the relay reads it.
    await db[collection].update_one({"_id": "QN-H0"}, outbox_update({}, [unit("QN-H0", "v1")]))
    producer = EventProducer(settings.kafka_bootstrap, client_id="outbox-test")
    relay = OutboxRelay(db, [collection], producer, service="t", topic_of=topic_of)
    try:
        relay.notify(collection, written=docs)
        relay.notify(collection, ["QN-H0"])
        before = finds()
        assert await relay.drain_once(relay._hints, relay._written) == 6
        assert finds() - before == 1  # only the changed document was read
        got = await collect_events(kafka.bootstrap, list(topic_of.values()), count=6, timeout=30, settle=1.0)
    finally:
        await producer.stop()
        await client.close()
    names = [(e.envelope.key, e.envelope.data["name"]) for e in got]
    assert sorted(names) == sorted([*((f"QN-H{i}", "v0") for i in range(5)), ("QN-H0", "v1")])
    assert [n for k, n in names if k == "QN-H0"] == ["v0", "v1"]
