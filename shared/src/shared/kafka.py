"""Kafka producer plumbing: an idempotent producer that survives the broker being down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from shared.envelope import Envelope, Headers
from shared.logging import get_logger

log = get_logger(__name__)

# One Kafka message ready to send: base topic, key, value, headers.
Record = tuple[str, bytes, bytes, Headers]


def record_of(ev: Envelope) -> Record:
    """The Kafka message that carries ``ev``."""
    return ev.topic, ev.key.encode(), ev.value(), ev.headers()


class EventProducer:
    """An idempotent aiokafka producer (``acks=all``) that (re)connects lazily.

    ``start()`` never fails because Kafka is unavailable: callers ask :meth:`ensure_started` when
    they need to publish, and get ``False`` while the broker is unreachable.
    """

    def __init__(self, bootstrap: str, *, client_id: str, linger_ms: int = 5) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    def _new(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=self._linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=10000,
            compression_type=None,
        )

    async def ensure_started(self) -> bool:
        async with self._lock:
            if self._producer is not None:
                return True
            producer = self._new()
            try:
                await asyncio.wait_for(producer.start(), timeout=10)
            except Exception as exc:
                log.warning("kafka_unavailable", error=str(exc) or type(exc).__name__)
                await _quiet_stop(producer)
                return False
            self._producer = producer
            return True

    async def reset(self) -> None:
        """Drop the connection after a send failure, so the next call reconnects cleanly."""
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await _quiet_stop(producer)

    async def send_all(self, topic_of: dict[str, str], events: Sequence[Envelope]) -> None:
        """Publish events in order and wait until every one is acknowledged by the broker.

        ``topic_of`` maps a base topic to the real topic name (tests add a prefix).
        """
        await (await self.queue(topic_of, [record_of(ev) for ev in events]))

    async def queue(self, topic_of: dict[str, str], records: Sequence[Record]) -> asyncio.Future[Any]:
        """Hand records to the producer in order; return a future of their acknowledgements.

        The caller may prepare the next records while these are in flight (the outbox relay reads
        its next chunk meanwhile). The future raises if any record was not acknowledged.
        """
        if not await self.ensure_started():
            raise ConnectionError("Kafka is unavailable")
        producer = self._producer
        assert producer is not None
        futures = [
            await producer.send(topic_of.get(topic, topic), value=value, key=key, headers=headers)
            for topic, key, value, headers in records
        ]
        acks = asyncio.gather(*futures)
        # A caller that gives up (its next step failed) may drop this future: no "never retrieved" noise.
        acks.add_done_callback(lambda f: f.cancelled() or f.exception())
        return acks

    async def send_raw(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        if not await self.ensure_started():
            raise ConnectionError("Kafka is unavailable")
        assert self._producer is not None
        await self._producer.send_and_wait(topic, value=value, key=key, headers=headers)

    async def ping(self, timeout: float = 2.0) -> bool:
        """True when the broker answers a metadata request now."""
        if not await self.ensure_started():
            return False
        assert self._producer is not None
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout)
        except Exception:
            return False
        return True

    async def stop(self) -> None:
        await self.reset()


async def _quiet_stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=5)
    except Exception:  # noqa: S110 - closing a broken connection; nothing to report
        pass


Records = list[ConsumerRecord[bytes, bytes]]
# Records of one read, per partition, in offset order.
Chunk = Mapping[TopicPartition, Records]


async def read_spans(
    bootstrap: str,
    spans: Mapping[TopicPartition, tuple[int, int]],
    *,
    max_records: int,
    stall_seconds: float,
    **consumer_options: Any,
) -> AsyncIterator[Chunk]:
    """The records at ``spans`` (first and last offset, both included, per partition), a chunk at a time.

    A consumer of its own, outside every group, so running consumers keep their positions. Raises
    if no record comes for ``stall_seconds`` while some are still expected (a truncated partition).
    """
    todo = {tp: span for tp, span in spans.items() if span[0] <= span[1]}
    if not todo:
        return
    options = {"group_id": None, "enable_auto_commit": False, **consumer_options}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **options)
    await consumer.start()
    try:
        consumer.assign(list(todo))
        for tp, (first, _) in todo.items():
            consumer.seek(tp, first)
        loop = asyncio.get_running_loop()
        progress = loop.time()
        while todo:
            got = await consumer.getmany(*todo, timeout_ms=500, max_records=max_records)
            chunk = {tp: [r for r in records if r.offset <= todo[tp][1]] for tp, records in got.items()}
            chunk = {tp: records for tp, records in chunk.items() if records}
            if chunk:
                progress = loop.time()
                yield chunk
            for tp in list(todo):
                if await consumer.position(tp) > todo[tp][1]:
                    del todo[tp]
            if todo and loop.time() - progress > stall_seconds:
                raise RuntimeError(f"reading the event log: no record for {stall_seconds:.0f} s")
    finally:
        await consumer.stop()
