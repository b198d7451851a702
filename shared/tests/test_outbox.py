"""The outbox: an acknowledged write reaches Kafka even when Kafka was down at the time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

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
        # Writes here name no document, so only a sweep finds them; one may have started before the last.
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


def unit_event(code: str, name: str) -> Any:
    from shared.contracts import registry as ev
    from shared.envelope import make_event

    payload = ev.UnitUpdated(
        code=code, name=name, kind="commune", parent_code="QN", path=["QN", code], previous_path=["QN", code]
    )
    return make_event(ev.UNIT_UPDATED, payload, source="/t", key=code)


def test_a_stored_entry_is_sent_as_exactly_the_message_of_its_event() -> None:
    # The relay builds messages from the stored texts; a consumer must not tell them from the
    # messages record_of makes for the events (headers, their order, key, value, topic).
    from dataclasses import replace

    from shared.kafka import record_of
    from shared.outbox import entry_record, outbox_entry

    base = unit_event("QN-HL", "Phường Hạ Long")
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    shapes = [
        base,
        replace(base, subject=None),
        replace(base, time=datetime(2025, 7, 7, 1, 2, 3, tzinfo=UTC)),
        replace(base, time=datetime(2025, 7, 7, 1, 2, 3, 450_001, tzinfo=UTC), traceparent=trace),
    ]
    for ev in shapes:
        assert entry_record(outbox_entry(ev)) == record_of(ev)
    # The relay's own publish span replaces the context the entry was written in.
    publish = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    assert entry_record(outbox_entry(shapes[3]), publish) == record_of(replace(shapes[3], traceparent=publish))


async def test_published_entries_leave_the_outbox_but_a_writers_newer_events_stay(
    make_settings, kafka: KafkaBroker
) -> None:
    from shared.kafka import EventProducer
    from shared.mongo import connect
    from shared.outbox import OutboxRelay, outbox_fields, outbox_update

    settings = make_settings(SampleSettings)
    ensure_topics_sync(kafka.bootstrap, prefix=settings.topic_prefix)
    topic_of = {"registry.events.v1": settings.topic("registry.events.v1")}
    client = connect(settings.mongo_url)
    col = client[settings.mongo_db]["units"]
    producer = EventProducer(settings.kafka_bootstrap, client_id="remove-test")
    relay = OutboxRelay(client[settings.mongo_db], ["units"], producer, service="t", topic_of=topic_of)
    try:
        await col.insert_one({"_id": "QN-HL", "name": "Phường Hạ Long", **outbox_fields([unit_event("QN-HL", "v0")])})
        for i in range(1, 5):
            await col.update_one({"_id": "QN-HL"}, outbox_update({}, [unit_event("QN-HL", f"v{i}")]))
        read = await col.find_one({"_id": "QN-HL"})
        assert read is not None
        assert [e["data"]["name"] for e in read["outbox"]] == [f"v{i}" for i in range(5)]
        # The entries are plain subdocuments an ordinary query can read.
        assert await col.count_documents({"outbox.type": "org.youthunion.registry.unit.updated.v1"}) == 1
        # A writer appends after the relay read the document: only what was published leaves.
        original = relay._pending_chunks

        async def read_then_write(*args: Any) -> Any:
            async for chunk in original(*args):
                await col.update_one({"_id": "QN-HL"}, outbox_update({}, [unit_event("QN-HL", "v5")]))
                yield chunk

        relay._pending_chunks = read_then_write  # type: ignore[method-assign]
        relay.notify("units", ["QN-HL"])
        assert await relay.drain_once(relay._hints, relay._written) == 5
        kept = await col.find_one({"_id": "QN-HL"})
        assert kept is not None
        assert [e["data"]["name"] for e in kept["outbox"]] == ["v5"]
        assert kept["rev"] == 6
        relay._pending_chunks = original  # type: ignore[method-assign]
        relay.notify("units", ["QN-HL"])
        assert await relay.drain_once(relay._hints, relay._written) == 1
        assert (await col.find_one({"_id": "QN-HL"}) or {}).get("outbox") == []
        got = await collect_events(kafka.bootstrap, list(topic_of.values()), count=6, timeout=30, settle=1.0)
    finally:
        await producer.stop()
        await client.close()
    assert [e.envelope.data["name"] for e in got] == [f"v{i}" for i in range(6)]


async def test_outboxes_of_every_earlier_form_are_migrated_once_and_drained(make_settings, kafka: KafkaBroker) -> None:
    import zlib

    import orjson

    from shared.kafka import EventProducer
    from shared.migrations import MIGRATIONS, PLAIN_OUTBOX, migrate_outboxes
    from shared.mongo import connect
    from shared.outbox import OutboxRelay, outbox_fields

    settings = make_settings(SampleSettings)
    ensure_topics_sync(kafka.bootstrap, prefix=settings.topic_prefix)
    topic_of = {"registry.events.v1": settings.topic("registry.events.v1")}
    client = connect(settings.mongo_url)
    db = client[settings.mongo_db]

    def compressed(e: Any) -> bytes:
        head = [e.id, e.topic, e.key, [[k, v.decode()] for k, v in e.headers()]]
        return zlib.compress(orjson.dumps(head) + b"\n" + e.value(), 1)

    nested = [unit_event("QN-OLD", f"Xã Cô Tô v{j}") for j in range(2)]
    texts = [unit_event("QN-TXT", f"Đặc khu Vân Đồn v{j}") for j in range(2)]
    packed = [unit_event("QN-ZIP", f"Phường Hạ Long v{j}") for j in range(3)]
    string = unit_event("QN-STR", "Phường Móng Cái")
    await db["units"].insert_many(
        [
            {"_id": "QN-OLD", "outbox": [e.to_document() for e in nested], "rev": 1},
            {"_id": "QN-TXT", "outbox": [{**e.to_document(), "data": e.value().decode()} for e in texts], "rev": 1},
            {"_id": "QN-STR", "outbox": [zlib.decompress(compressed(string)).decode()], "rev": 1},
            {"_id": "QN-ZIP", "outbox": [compressed(e) for e in packed], "rev": 1},
            {"_id": "QN-NEW", **outbox_fields([unit_event("QN-NEW", "Phường Cẩm Phả")])},
        ]
    )
    # The old relay had recorded the first packed event as published.
    await db["outbox_published"].insert_one({"_id": "0001", "n": 1, "ids": packed[0].id})
    await migrate_outboxes(db, ["units"])
    zipped = await db["units"].find_one({"_id": "QN-ZIP"})
    assert zipped is not None
    assert [e["data"]["name"] for e in zipped["outbox"]] == ["Phường Hạ Long v1", "Phường Hạ Long v2"]
    assert all(isinstance(e, dict) and e["topic"] == "registry.events.v1" for e in zipped["outbox"])
    assert "outbox_published" not in await db.list_collection_names()
    assert await db[MIGRATIONS].find_one({"_id": PLAIN_OUTBOX}) is not None
    producer = EventProducer(settings.kafka_bootstrap, client_id="migrate-test")
    try:
        relay = OutboxRelay(db, ["units"], producer, service="t", topic_of=topic_of)
        assert await relay.drain_once({}) == 2 + 2 + 1 + 2 + 1
        got = await collect_events(kafka.bootstrap, list(topic_of.values()), count=8, timeout=30, settle=1.0)
    finally:
        await producer.stop()
        await client.close()
    by_id = {e.envelope.id: e for e in got}
    for original in [*nested, *texts, string, *packed[1:]]:
        assert by_id[original.id].envelope.data == original.data
        # Nested entries kept ce_time as a BSON date: milliseconds, as the old relay sent it too.
        assert abs(by_id[original.id].envelope.time - original.time).total_seconds() < 0.001
    assert packed[0].id not in by_id


async def test_a_backlog_swept_in_chunks_reaches_kafka_once_each_in_order(make_settings, kafka: KafkaBroker) -> None:
    from shared.kafka import EventProducer
    from shared.mongo import connect
    from shared.outbox import OutboxRelay, outbox_fields, pending_events

    settings = make_settings(SampleSettings)
    ensure_topics_sync(kafka.bootstrap, prefix=settings.topic_prefix)
    topic_of = {"registry.events.v1": settings.topic("registry.events.v1")}
    codes = [f"QN-C{i:02d}" for i in range(12)]
    client = connect(settings.mongo_url)
    db = client[settings.mongo_db]
    for i, code in enumerate(codes):
        events = [unit_event(code, f"{code} v{j}") for j in range(1 + i % 4)]
        await db["units"].insert_one({"_id": code, **outbox_fields(events)})
    expected = {code: [f"{code} v{j}" for j in range(1 + i % 4)] for i, code in enumerate(codes)}
    total = sum(len(v) for v in expected.values())

    unreachable = EventProducer("127.0.0.1:1", client_id="outbox-test-down")
    relay = OutboxRelay(db, ["units"], unreachable, service="t", topic_of=topic_of, batch_size=3)
    producer = EventProducer(settings.kafka_bootstrap, client_id="outbox-test")
    try:
        with pytest.raises(ConnectionError):
            await relay.drain_once({})
        assert await pending_events(db, ["units"]) == total  # nothing removed that Kafka did not take
        relay = OutboxRelay(db, ["units"], producer, service="t", topic_of=topic_of, batch_size=3)
        assert await relay.drain_once({}) == total  # a fresh relay sweeps first, in chunks of ~3 events
        relay.notify()
        assert await relay.drain_once({}) == 0
        assert await pending_events(db, ["units"]) == 0
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

    from shared.kafka import EventProducer
    from shared.mongo import connect
    from shared.outbox import OutboxRelay, outbox_fields, pending_events

    settings = make_settings(SampleSettings)
    ensure_topics_sync(kafka.bootstrap, prefix=settings.topic_prefix)
    topic_of = {"registry.events.v1": settings.topic("registry.events.v1")}
    client = connect(settings.mongo_url)
    db = client[settings.mongo_db]
    codes = [f"QN-C{i:04d}" for i in range(3000)]
    await db["units"].insert_many([{"_id": code, **outbox_fields([unit_event(code, code)])} for code in codes])
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
        while await pending_events(db, ["units"]) > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await second.stop()
        # The second relay never sees what the first removed. Stopping can cut in between
        # Kafka's acknowledgement and the removal (the chunk being removed and the one queued
        # behind it): those come again, same ce_id.
        assert len(codes) <= first.published + second.published <= len(codes) + 2 * 100
        got = await collect_events(kafka.bootstrap, list(topic_of.values()), count=len(codes), timeout=60)
    finally:
        await producer.stop()
        await client.close()
    assert {e.envelope.key for e in got} == set(codes)


async def test_two_relays_on_one_database_and_a_dead_peers_leftovers(make_settings, kafka: KafkaBroker) -> None:
    import asyncio

    from shared.kafka import EventProducer
    from shared.mongo import connect
    from shared.outbox import RELAYS, OutboxRelay, outbox_fields, outbox_update, pending_events

    settings = make_settings(SampleSettings)
    ensure_topics_sync(kafka.bootstrap, prefix=settings.topic_prefix)
    topic_of = {"registry.events.v1": settings.topic("registry.events.v1")}
    clients = [connect(settings.mongo_url), connect(settings.mongo_url)]
    dbs = [c[settings.mongo_db] for c in clients]
    producer = EventProducer(settings.kafka_bootstrap, client_id="two-relays")
    fast = {"heartbeat_seconds": 0.2, "stale_after_seconds": 1.0, "poll_seconds": 0.1}
    relays = [OutboxRelay(db, ["units"], producer, service="t", topic_of=topic_of, **fast) for db in dbs]  # type: ignore[arg-type]
    try:
        for relay in relays:
            await relay.start()
        # Writes alternate between the replicas; each wakes only its own relay.
        codes = [f"QN-R{i:03d}" for i in range(200)]
        for i, code in enumerate(codes):
            db, relay = dbs[i % 2], relays[i % 2]
            await db["units"].insert_one({"_id": code, **outbox_fields([unit_event(code, "v0")])})
            relay.notify("units", [code])
            # The other replica changes the same aggregate at once.
            await dbs[(i + 1) % 2]["units"].update_one({"_id": code}, outbox_update({}, [unit_event(code, "v1")]))
            relays[(i + 1) % 2].notify("units", [code])
        # A third replica wrote and died before its relay ran: its heartbeat goes stale.
        now_stale = {"service": "t", "beat_at": datetime(2026, 1, 1, tzinfo=UTC)}
        await dbs[0][RELAYS].insert_one({"_id": "t-dead", **now_stale})
        await dbs[0]["units"].insert_one({"_id": "QN-ORPHAN", **outbox_fields([unit_event("QN-ORPHAN", "v0")])})
        for _ in range(200):
            if await pending_events(dbs[0], ["units"]) == 0:
                break
            await asyncio.sleep(0.1)
        assert await pending_events(dbs[0], ["units"]) == 0
        assert await dbs[0][RELAYS].find_one({"_id": "t-dead"}) is None  # claimed once, by one survivor
        got = await collect_events(kafka.bootstrap, list(topic_of.values()), count=401, timeout=60, settle=2.0)
    finally:
        for relay in relays:
            await relay.stop()
        await producer.stop()
        for c in clients:
            await c.close()
    first_copy: dict[str, list[str]] = {}
    seen: set[str] = set()
    for e in got:
        if e.envelope.id in seen:
            continue  # a copy both relays sent; consumers drop it by ce_id
        seen.add(e.envelope.id)
        first_copy.setdefault(e.envelope.key, []).append(e.envelope.data["name"])
    assert len(seen) == 401
    assert all(first_copy[code] == ["v0", "v1"] for code in codes)
    assert first_copy["QN-ORPHAN"] == ["v0"]


def relay_setup(make_settings: Any, kafka: KafkaBroker, name: str) -> tuple[Any, dict[str, str], Any, Any, str]:
    """Settings, topics, a client, its database and a collection of its own for one relay test."""
    from shared.mongo import connect

    settings = make_settings(SampleSettings)
    ensure_topics_sync(kafka.bootstrap, prefix=settings.topic_prefix)
    topic_of = {"registry.events.v1": settings.topic("registry.events.v1")}
    client = connect(settings.mongo_url)
    return settings, topic_of, client, client[settings.mongo_db], f"{name}_{settings.mongo_db[-6:]}"


def unit_updated(code: str, name: str) -> Any:
    from shared.contracts import registry as ev
    from shared.envelope import make_event

    payload = ev.UnitUpdated(code=code, name=name, kind="commune", parent_code="QN", path=["QN"], previous_path=["QN"])
    return make_event(ev.UNIT_UPDATED, payload, source="/t", key=code)


async def test_inserted_documents_handed_to_the_relay_are_published_without_reading_them_back(
    make_settings, kafka: KafkaBroker
) -> None:
    from prometheus_client import REGISTRY

    from shared.kafka import EventProducer
    from shared.outbox import OutboxRelay, outbox_fields, outbox_update

    settings, topic_of, client, db, collection = relay_setup(make_settings, kafka, "handed")
    unit = unit_updated

    def finds() -> float:
        return (
            REGISTRY.get_sample_value(
                "bridge_mongo_command_duration_seconds_count", {"command": "find", "collection": collection}
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


@asynccontextmanager
async def relay_behind(
    make_settings: Any, kafka: KafkaBroker, name: str, n: int, **relay_args: Any
) -> AsyncIterator[tuple[Any, list[dict[str, Any]], str]]:
    """``n`` stored unit documents with an outbox entry each, and a relay over their collection that
    has not heard of them yet."""
    from shared.kafka import EventProducer
    from shared.outbox import OutboxRelay, outbox_fields

    settings, topic_of, client, db, collection = relay_setup(make_settings, kafka, name)
    docs = [{"_id": f"QN-{i}", **outbox_fields([unit_updated(f"QN-{i}", "Phường Hạ Long")])} for i in range(n)]
    await db[collection].insert_many(docs)
    producer = EventProducer(settings.kafka_bootstrap, client_id="outbox-test")
    relay = OutboxRelay(db, [collection], producer, service="t", topic_of=topic_of, **relay_args)
    try:
        yield relay, docs, collection
        assert await relay.drain_once(relay._hints, relay._written) == n
        got = await collect_events(kafka.bootstrap, list(topic_of.values()), count=n, timeout=30, settle=1.0)
        assert await db[collection].count_documents({"outbox.0": {"$exists": True}}) == 0
        assert sorted(e.envelope.key for e in got) == sorted(d["_id"] for d in docs)  # each once
    finally:
        await producer.stop()
        await client.close()


async def test_a_relay_far_behind_keeps_a_bounded_number_of_inserted_documents_and_reads_the_rest(
    make_settings, kafka: KafkaBroker
) -> None:
    async with relay_behind(make_settings, kafka, "kept", 5, keep_written=2) as (relay, docs, collection):
        relay.notify(collection, written=docs)
        assert sorted(relay._written[collection]) == ["QN-0", "QN-1"]  # memory holds two documents
        assert sorted(relay._hints[collection]) == ["QN-2", "QN-3", "QN-4"]  # the rest by _id


async def test_a_relay_hinted_past_its_bound_forgets_the_ids_and_sweeps_instead(
    make_settings, kafka: KafkaBroker
) -> None:
    async with relay_behind(make_settings, kafka, "swept", 8, keep_written=2, max_hints=3) as (relay, docs, collection):
        relay.notify(collection, ids=[d["_id"] for d in docs[:3]])
        assert sorted(relay._hints[collection]) == ["QN-0", "QN-1", "QN-2"]
        relay._sweep_due = False  # as after the start-up sweep
        relay.notify(collection, written=docs[3:])  # 2 kept, 3 more hinted: past the bound
        assert collection not in relay._hints
        assert collection not in relay._written  # memory holds nothing of them now; the sweep finds them


async def test_what_a_relay_says_is_waiting_counts_handed_hinted_and_unfinished_documents(
    make_settings, kafka: KafkaBroker
) -> None:
    """``waiting()`` is what backpressure reads: it must see a backlog before the relay's next pass ends."""
    from shared.kafka import EventProducer
    from shared.outbox import OutboxRelay, outbox_fields

    settings, topic_of, client, db, collection = relay_setup(make_settings, kafka, "waiting")
    docs = [{"_id": f"QN-{i}", **outbox_fields([unit_updated(f"QN-{i}", "Phường Hạ Long")])} for i in range(7)]
    await db[collection].insert_many(docs)
    producer = EventProducer(settings.kafka_bootstrap, client_id="outbox-test")
    relay = OutboxRelay(db, [collection], producer, service="t", topic_of=topic_of, keep_written=3, batch_size=2)
    try:
        relay._sweep_due = False  # as after the start-up sweep
        assert relay.waiting() == 0
        relay.notify(collection, written=docs[:5])  # 3 handed over, 2 hinted past the bound
        relay.notify(collection, ids=[docs[5]["_id"], docs[6]["_id"]])
        assert relay.waiting() == 7
        seen: list[int] = []
        real_remove = relay._remove

        async def remove(*args: Any) -> None:  # what the relay says while its pass is under way
            seen.append(relay.waiting())
            await real_remove(*args)

        relay._remove = remove  # type: ignore[method-assign]
        hints, relay._hints = relay._hints, {}
        written, relay._written = relay._written, {}
        assert await relay.drain_once(hints, written) == 7
        assert seen
        assert seen[0] >= 5  # the first chunk of two is queued: at least five still to go
        assert seen == sorted(seen, reverse=True)
        assert relay.waiting() == 0
        assert relay.pending == 7
        # A relay that gave its hints up for a sweep counts at least what its last pass found...
        relay._sweep_due = True
        assert relay.waiting() == 7
        # ...and every document whose hint it gave up.
        relay._max_hints = 10
        relay.notify(collection, ids=[f"QN-{i}" for i in range(100, 111)])
        assert collection not in relay._hints
        assert relay.waiting() == 11
    finally:
        await producer.stop()
        await client.close()
