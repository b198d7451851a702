"""The topic catalogue (``deploy/kafka/topics.yaml``) and idempotent topic creation."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

REGISTRY_TOPIC = "registry.events.v1"
VISITS_TOPIC = "visits.events.v1"
TRAINING_TOPIC = "training.events.v1"
REPORTING_TOPIC = "reporting.events.v1"
EVENT_TOPICS = (REGISTRY_TOPIC, VISITS_TOPIC, TRAINING_TOPIC, REPORTING_TOPIC)
# The topics whose events move indicators: what the metrics projector and its event log read.
COUNTED_TOPICS = (REGISTRY_TOPIC, VISITS_TOPIC, TRAINING_TOPIC)


def dlq_topic(topic: str) -> str:
    """The dead-letter topic paired with an event topic."""
    return f"{topic}.dlq"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]
    description: str = ""


def _catalogue_path() -> Path:
    # Installed editable from the repo: walk up to deploy/kafka/topics.yaml.
    here = Path(str(resources.files("shared")))
    for parent in here.parents:
        candidate = parent / "deploy" / "kafka" / "topics.yaml"
        if candidate.exists():
            return candidate
    raise FileNotFoundError("deploy/kafka/topics.yaml not found above the shared package")


def load_topics(prefix: str = "") -> list[TopicSpec]:
    """Read the catalogue; ``prefix`` namespaces every topic (tests use it for isolation)."""
    raw: dict[str, Any] = yaml.safe_load(_catalogue_path().read_text())
    defaults = raw.get("defaults", {})
    return [
        TopicSpec(
            name=prefix + t["name"],
            partitions=int(t.get("partitions", defaults.get("partitions", 6))),
            replication_factor=int(t.get("replication_factor", defaults.get("replication_factor", 1))),
            config={k: str(v) for k, v in (t.get("config") or {}).items()},
            description=t.get("description", ""),
        )
        for t in raw["topics"]
    ]


async def ensure_topics(bootstrap: str, prefix: str = "") -> list[str]:
    """Create every catalogue topic that does not exist yet; return the names created."""
    specs = load_topics(prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config) for s in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another service won the race; that is the idempotent outcome we want
        return [s.name for s in missing]
    finally:
        await admin.close()


def ensure_topics_sync(bootstrap: str, prefix: str = "") -> list[str]:
    """:func:`ensure_topics` from synchronous code, even inside a running event loop."""
    out: list[list[str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            out.append(asyncio.run(ensure_topics(bootstrap, prefix)))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]
