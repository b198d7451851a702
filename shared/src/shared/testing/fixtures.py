"""pytest fixtures that start the real Apache Kafka broker and FerretDB.

Loaded by the repo's root ``conftest.py``. One broker and one database serve the whole session on
free ports in temp dirs; every test gets its own topic prefix and database name, so tests never see
each other's data and never touch a ``make run`` instance. Tests that stop a server ask for their
own (``own_kafka``, ``own_ferretdb``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from shared.infra import FerretDB, KafkaBroker
from shared.mongo import connect
from shared.settings import ServiceSettings
from shared.topics import ensure_topics_sync

S = TypeVar("S", bound=ServiceSettings)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(Path(tmp_path_factory.mktemp("kafka"))).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def ferretdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerretDB]:
    db = FerretDB(Path(tmp_path_factory.mktemp("ferretdb"))).start()
    yield db
    db.stop()


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker for this test alone, for tests that stop and restart it."""
    broker = KafkaBroker(tmp_path / "own-kafka").start()
    yield broker
    broker.stop()


@pytest.fixture
def own_ferretdb(tmp_path: Path) -> Iterator[FerretDB]:
    """A database for this test alone, for tests that stop and restart it."""
    db = FerretDB(tmp_path / "own-ferretdb").start()
    yield db
    db.stop()


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def scratch_db(ferretdb: FerretDB, run_id: str) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    """A database of this test's own on the session's FerretDB, dropped after it."""
    client = connect(ferretdb.url)
    try:
        yield client[f"scratch_{run_id}"]
    finally:
        await client.drop_database(f"scratch_{run_id}")
        await client.close()


@pytest.fixture
def make_settings(kafka: KafkaBroker, ferretdb: FerretDB, run_id: str) -> Callable[..., Any]:
    """Build a service's settings pointed at the session's broker and database, isolated by run id.

    Every service made by one test shares the run's topic prefix (so they talk to each other) but
    keeps its own database, as in production.
    """
    created_topics: set[str] = set()

    def build(cls: type[S], **overrides: Any) -> S:
        prefix = f"t{run_id}."
        if prefix not in created_topics:
            ensure_topics_sync(kafka.bootstrap, prefix)
            created_topics.add(prefix)
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka.bootstrap,
            "mongo_url": ferretdb.url,
            "topic_prefix": prefix,
            "consumer_group_prefix": prefix,
            "relay_poll_seconds": 0.1,
            "consumer_backoff_seconds": 0.05,
            "log_json": False,
        }
        values.update(overrides)
        settings = cls(**values)
        if "mongo_db" not in overrides:
            settings.mongo_db = f"{settings.service_name}_{run_id}"
        return settings

    return build
