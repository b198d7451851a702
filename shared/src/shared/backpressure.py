"""Backpressure: a service holds its large writes while the consumers of its events are far behind.

A roster upload is accepted in milliseconds but becomes hundreds of events that the read models of
visits and training must apply before the field's uploads that name the new volunteers can count.
When uploads are admitted faster than those consumers apply them, the difference is only a queue:
in Kafka (consumer lag) or in the outbox (events not yet relayed), and the field's records wait as
pending behind it. :class:`DownstreamLag` samples both, and :class:`shared.http.BulkAdmissionMiddleware`
lets a large write wait, unread, until they are under their limits, then answers ``503`` with
``Retry-After`` as it does when too many large writes are in flight. Small writes (an office's
edit) are never held.

Only groups with live members count: a stopped service is not waited for (the registry keeps
working while visits is down), and a group of an old deployment that nobody runs holds nothing.
The state is sampled from Kafka and the relay; nothing of it is kept in memory that another replica
would need.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Gauge

from shared.concurrency import stop_task
from shared.logging import get_logger

log = get_logger(__name__)

BEHIND = Gauge(
    "bridge_backpressure_behind_events",
    "Events the live consumer groups a service waits for have not yet committed (the largest group)",
    ["service"],
)
HOLDING = Gauge("bridge_backpressure_holding", "1 while the service holds its large writes", ["service"])


@dataclass(frozen=True)
class Limits:
    """How far behind the watched consumers (``groups`` on ``topics``, in events) and the relay (in
    documents not yet published) may be; 0: no limit."""

    groups: tuple[str, ...]
    topics: tuple[str, ...]
    max_lag_events: int
    max_outbox_events: int


def group_lag(committed: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> int:
    """Events of ``ends``' partitions not yet committed (a partition never committed counts whole)."""
    return sum(max(0, end - max(committed.get(tp, 0), 0)) for tp, end in ends.items())


def reason(lags: dict[str, int], outbox: int, limits: Limits) -> str | None:
    """Why large writes should wait (None: they need not)."""
    over = {g: n for g, n in lags.items() if 0 < limits.max_lag_events < n}
    if over:
        worst = max(over, key=lambda g: over[g])
        return f"consumer group {worst} is {over[worst]} events behind (limit {limits.max_lag_events})"
    if 0 < limits.max_outbox_events < outbox:
        return f"{outbox} documents wait in the outbox (limit {limits.max_outbox_events})"
    return None


class DownstreamLag:
    """Samples, every ``every`` seconds, the lag of the live ``limits.groups`` and the outbox backlog.

    ``outbox`` returns what the relay has not published yet (``OutboxRelay.waiting``). Until the first sample,
    and whenever Kafka cannot be asked, nothing is held: backpressure must not turn a broker outage
    into refused writes (the outbox keeps them until it is back).
    """

    def __init__(
        self, bootstrap: str, service: str, limits: Limits, outbox: Callable[[], int], every: float = 1.0
    ) -> None:
        self._bootstrap = bootstrap
        self._service = service
        self.limits = limits
        self._outbox = outbox
        self._every = every
        self.behind: str | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"backpressure-{self._service}")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def clear(self, timeout: float) -> str | None:
        """Wait up to ``timeout`` seconds for the limits to be met; the reason if they still are not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.behind is not None:
            left = deadline - loop.time()
            if left <= 0:
                return self.behind
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return None

    def _set(self, behind: str | None, worst: int) -> None:
        if (behind is None) != (self.behind is None):
            log.info("backpressure", service=self._service, holding=behind is not None, why=behind)
        self.behind = behind
        BEHIND.labels(self._service).set(worst)
        HOLDING.labels(self._service).set(0 if behind is None else 1)
        self._changed.set()

    async def _run(self) -> None:
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
            ends = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False)
            try:
                await admin.start()
                await ends.start()
                while True:
                    lags = await self.sample(admin, ends)
                    self._set(reason(lags, self._outbox(), self.limits), max(lags.values(), default=0))
                    await asyncio.sleep(self._every)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("backpressure_sample_failed", service=self._service, error=str(exc) or type(exc).__name__)
                self._set(None, 0)
                await asyncio.sleep(max(self._every, 2.0))
            finally:
                with contextlib.suppress(Exception):
                    await ends.stop()
                with contextlib.suppress(Exception):
                    await admin.close()

    async def sample(self, admin: AIOKafkaAdminClient, ends: AIOKafkaConsumer) -> dict[str, int]:
        """``{group: events behind}`` of the watched groups that have members now."""
        live = await live_groups(admin, self.limits.groups)
        if not live:
            return {}
        tps = self._partitions(ends)
        if not tps:  # the client has not read the topics' metadata yet
            await ends._client.force_metadata_update()
            tps = self._partitions(ends)
        end: dict[TopicPartition, int] = await ends.end_offsets(tps) if tps else {}
        out: dict[str, int] = {}
        for group in live:
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            out[group] = group_lag({tp: m.offset for tp, m in offsets.items()}, end)
        return out

    def _partitions(self, ends: AIOKafkaConsumer) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.limits.topics for p in sorted(ends.partitions_for_topic(t) or ())]


async def live_groups(admin: AIOKafkaAdminClient, groups: Sequence[str]) -> list[str]:
    """Those of ``groups`` that have members now (a stopped consumer's group has none)."""
    if not groups:
        return []
    live: list[str] = []
    # One group per request: a request that describes two groups with members ended with the
    # connection closed, every time (aiokafka 0.14, Kafka 4.1.1); one group at a time reads fine.
    for group in groups:
        for response in await admin.describe_consumer_groups([group]):
            for error_code, group_id, _state, _protocol_type, _protocol, members, *_ in response.groups:
                if error_code == 0 and members:
                    live.append(group_id)
    return live
