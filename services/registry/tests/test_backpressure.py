"""Roster uploads wait while the read models that must apply them are far behind (shared.backpressure).

On the real broker: a consumer group with a live member that has not committed the registry's
events holds large writes, which are answered 503 busy (problem+json, Retry-After) when their wait
is up, unread and unwritten; small writes pass; once the group commits, or once it has no member
left, large writes go through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from registry.app import RegistrySettings, build_app
from shared.backpressure import Limits, group_lag, reason
from shared.testing import running_app
from shared.topics import REGISTRY_TOPIC

from .support import ADMIN, PROBLEM_JSON, seed_tree, volunteer_body

WATCHER = "watcher.registry-view"
# A second live group, always caught up: two groups with members are described apart.
CAUGHT_UP = "caught-up.registry-view"


def roster(prefix: str, n: int) -> dict[str, Any]:
    return {
        "items": [
            {**volunteer_body(full_name=f"Tình nguyện viên {prefix}{i}"), "client_ref": f"{prefix}{i}", "teams": []}
            for i in range(n)
        ]
    }


@contextlib.asynccontextmanager
async def member_of(settings: RegistrySettings, group: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A live member of ``group`` on the registry topic that commits nothing by itself."""
    consumer = AIOKafkaConsumer(
        settings.topic(REGISTRY_TOPIC),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group(group),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "the watcher never got its partitions"
            await consumer.getmany(timeout_ms=200)
        yield consumer
    finally:
        await consumer.stop()


async def until(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


def test_lag_counts_what_a_group_has_not_committed_and_the_reason_names_the_worst() -> None:
    from aiokafka import TopicPartition as TP

    ends = {TP("t", 0): 10, TP("t", 1): 5, TP("t", 2): 0}
    assert group_lag({TP("t", 0): 4, TP("t", 1): 5}, ends) == 6
    assert group_lag({}, ends) == 15  # never committed: everything is ahead of it
    assert group_lag({TP("t", 0): -1}, ends) == 15  # Kafka's "no offset"
    limits = Limits(groups=("a", "b"), topics=("t",), max_lag_events=5, max_outbox_events=100)
    assert reason({"a": 5, "b": 2}, 100, limits) is None
    why = reason({"a": 6, "b": 9}, 0, limits)
    assert why is not None
    assert "b is 9 events behind" in why
    why = reason({"a": 0}, 101, limits)
    assert why is not None
    assert "101 documents wait in the outbox" in why
    unlimited = Limits(groups=("a",), topics=("t",), max_lag_events=0, max_outbox_events=0)
    assert reason({"a": 10**9}, 10**9, unlimited) is None


@pytest.mark.kafka
@pytest.mark.mongo
async def test_a_roster_waits_for_a_lagging_read_model_and_goes_through_when_it_catches_up(
    make_settings: Callable[..., Any],
) -> None:
    settings: RegistrySettings = make_settings(
        RegistrySettings,
        backpressure_groups=[WATCHER, CAUGHT_UP],
        backpressure_max_lag_events=3,
        backpressure_max_outbox_events=0,
        bulk_request_min_bytes=1024,
        bulk_wait_seconds=1.5,
    )
    app = build_app(settings)
    async with running_app(app) as client:
        runtime = app.state.runtime
        gate = runtime.backpressure
        assert gate is not None
        await seed_tree(client)
        async with member_of(settings, CAUGHT_UP) as caught_up, member_of(settings, WATCHER) as watcher:
            producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
            await producer.start()
            try:
                for i in range(10):
                    await producer.send_and_wait(settings.topic(REGISTRY_TOPIC), b"{}", key=f"k{i}".encode())
            finally:
                await producer.stop()
            await caught_up.commit(await caught_up.end_offsets(list(caught_up.assignment())))
            await until(lambda: gate.behind is not None)
            assert CAUGHT_UP not in (gate.behind or "")
            assert WATCHER in (gate.behind or "")

            held = await client.post("/v1/volunteers:import", json=roster("held/", 20), headers=ADMIN)
            assert held.status_code == 503, held.text
            assert held.headers["content-type"] == PROBLEM_JSON
            assert held.headers["retry-after"] == "2"
            problem = held.json()
            assert problem["type"].endswith("/busy")
            assert WATCHER in problem["detail"]
            # Nothing of the held roster was written.
            assert await runtime.db["volunteers"].count_documents({"full_name": {"$regex": "held/"}}) == 0

            # A single write is not large: an office's edit is never held.
            one = await client.post("/v1/volunteers", json=volunteer_body(full_name="Một người"), headers=ADMIN)
            assert one.status_code == 201, one.text

            # A roster that arrives while the model catches up waits for it and is then taken.
            waiting = asyncio.create_task(client.post("/v1/volunteers:import", json=roster("late/", 20), headers=ADMIN))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            ends = await watcher.end_offsets(list(watcher.assignment()))
            # The relay may have published the seeded units and the single volunteer after the
            # caught-up group's first commit: it catches up to the same ends.
            await caught_up.commit(ends)
            await watcher.commit(ends)
            taken = await waiting
            assert taken.status_code == 200, taken.text
            assert [i["status"] for i in taken.json()["items"]] == ["created"] * 20

        # The group has no member now: a stopped read model is not waited for.
        await until(lambda: gate.behind is None)
        more = await client.post("/v1/volunteers:import", json=roster("after/", 20), headers=ADMIN)
        assert more.status_code == 200, more.text
