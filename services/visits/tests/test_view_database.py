"""The registry read model lives in a database of its own, and one stored the earlier way is moved there once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared import registry_view as rm
from shared.consumer import PROCESSED_EVENTS
from shared.kafka import EventProducer
from shared.migrations import MIGRATIONS, OWN_VIEW_DATABASE
from shared.testing import running_app, token, wait_until
from shared.topics import REGISTRY_TOPIC
from visits.app import VisitsSettings, build_app

from .conftest import Visits
from .factories import HL, unit, visit_body

ADMIN = token("admin")


async def _collections(db: Any) -> dict[str, list[dict[str, Any]]]:
    return {name: await db[name].find({}).sort("_id", 1).to_list() for name in rm.COLLECTIONS}


async def test_the_read_model_and_its_processed_ids_are_kept_apart_from_the_records(seeded: Visits) -> None:
    db, view_db = seeded.runtime.db, seeded.runtime.view_db
    assert view_db.name == f"{db.name}_registry_view"
    group = seeded.runtime.group_of("registry-view")
    assert await view_db[rm.UNITS].count_documents({}) == 4  # the units of factories.province_tree
    assert await view_db[PROCESSED_EVENTS].count_documents({"group": group}) > 0
    for name in (*rm.COLLECTIONS, PROCESSED_EVENTS):
        assert await db[name].count_documents({}) == 0, name
    # The records the service writes stay in its own database.
    r = await seeded.client.post("/v1/visits", json=visit_body(), headers=ADMIN)
    assert r.status_code == 201, r.text
    assert await db["visits"].count_documents({"_id": r.json()["id"]}) == 1


async def test_a_read_model_stored_in_the_service_database_is_moved_once_and_keeps_answering(
    seeded: Visits, make_settings: Callable[..., Any]
) -> None:
    db, view_db = seeded.runtime.db, seeded.runtime.view_db
    group = seeded.runtime.group_of("registry-view")
    before = await _collections(view_db)
    ids_before = await view_db[PROCESSED_EVENTS].find({"group": group}).sort("_id", 1).to_list()
    # As the earlier code stored it: the read model and its consumer's ids in the service's database,
    # next to another group's ids, which must stay; no migration recorded. A second process on the
    # same database then starts as the upgraded service would.
    for name, docs in before.items():
        await db[name].insert_many(docs)
    await db[PROCESSED_EVENTS].insert_many(ids_before)
    other = {"_id": "other|t|0|1-1", "group": "someone.else", "topic": "t", "partition": 0, "ids": ["x"]}
    await db[PROCESSED_EVENTS].insert_one(other)
    await db[MIGRATIONS].delete_one({"_id": OWN_VIEW_DATABASE})
    await view_db.client.drop_database(view_db.name)

    settings: VisitsSettings = make_settings(VisitsSettings, mongo_db=db.name)
    app = build_app(settings)
    producer = EventProducer(settings.kafka_bootstrap, client_id="visits-move-test")
    async with running_app(app) as client:
        try:
            assert await _collections(view_db) == before
            moved_ids = await view_db[PROCESSED_EVENTS].find({"group": group}).sort("_id", 1).to_list()
            assert moved_ids == ids_before
            for name in rm.COLLECTIONS:
                assert name not in await db.list_collection_names()
            assert await db[PROCESSED_EVENTS].find({}).to_list() == [other]
            record = await db[MIGRATIONS].find_one({"_id": OWN_VIEW_DATABASE})
            assert record is not None
            assert record["documents"] == sum(len(d) for d in before.values()) + len(ids_before)
            # The moved model answers reference checks, and new registry events land beside it.
            r = await client.post("/v1/visits", json=visit_body(), headers=ADMIN)
            assert r.status_code == 201, r.text
            # Either process may own the event's partition now: both write the one read model.
            new_unit = unit("QN-HL-BC", "Phường Bãi Cháy", [*HL, "QN-HL-BC"], kind="ward")
            await producer.send_all({REGISTRY_TOPIC: settings.topic(REGISTRY_TOPIC)}, [new_unit])

            async def landed() -> bool:
                return await view_db[rm.UNITS].count_documents({"_id": "QN-HL-BC"}) == 1

            await wait_until(landed, timeout=60)
            assert rm.UNITS not in await db.list_collection_names()
        finally:
            await producer.stop()
