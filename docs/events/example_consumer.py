"""Read Digital Bridge events with a plain Kafka client (pip install aiokafka); --help for options."""

import argparse
import asyncio
import json

from aiokafka import AIOKafkaConsumer

TOPICS = ("registry.events.v1", "visits.events.v1", "training.events.v1")


async def consume(bootstrap: str, prefix: str, group: str | None, max_events: int | None) -> None:
    # A new group (or none) starts at the earliest offset: topics keep every event, so this rebuilds state.
    consumer = AIOKafkaConsumer(
        *(prefix + t for t in TOPICS),
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: set[str] = set()  # in production keep the ids in your database, next to the state they guard
    try:
        async for msg in consumer:
            headers = {name: value.decode() for name, value in msg.headers}
            if headers["ce_id"] not in seen:  # delivery is at least once; a redelivery keeps its ce_id
                seen.add(headers["ce_id"])
                event = {"type": headers["ce_type"], "id": headers["ce_id"], "key": (msg.key or b"").decode()}
                print(json.dumps({**event, "data": json.loads(msg.value)}, ensure_ascii=False), flush=True)
            if group:
                await consumer.commit()  # after processing: a crash replays, never skips
            if max_events and len(seen) >= max_events:
                break
    finally:
        await consumer.stop()


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--bootstrap", default="127.0.0.1:9092")
    cli.add_argument("--prefix", default="", help="topic name prefix (test isolation)")
    cli.add_argument("--group", help="consumer group; omit to read everything without committing")
    cli.add_argument("--max-events", type=int, help="stop after this many distinct events")
    args = cli.parse_args()
    asyncio.run(consume(args.bootstrap, args.prefix, args.group, args.max_events))
