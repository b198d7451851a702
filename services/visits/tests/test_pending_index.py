"""The pending index answers a registry change by ``_id`` reads of its keys, never by reading every entry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.migrations import MIGRATIONS
from visits.repository import PENDING_KEYS_MIGRATION, PendingIndex

from .conftest import Visits


def index_on(db: Any, name: str) -> tuple[PendingIndex, list[dict[str, Any]]]:
    """A pending index on collections of its own, and the filters of every read of its entries."""
    entries, keys = db[f"{name}_entries"], db[f"{name}_keys"]
    filters: list[dict[str, Any]] = []
    find = entries.find

    def noted(flt: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        filters.append(flt)
        return find(flt, *args, **kwargs)

    entries.find = noted
    return PendingIndex(entries, keys), filters


async def waiting(index: PendingIndex, kind: str, *keys: str) -> list[str]:
    return sorted(rid for rid, _ in await index.waiting_on(kind, set(keys)))


async def test_a_change_finds_only_the_records_waiting_on_its_keys_and_removal_empties_the_keys(
    visits_app: Visits,
) -> None:
    db = visits_app.runtime.db
    index, filters = index_on(db, "pi_lookup")
    await index.add("visit", ["r1", "r2", "r3"], [["team:A"], ["team:A", "volunteer:v"], ["team:B"]])
    await index.add("outreach", ["p1"], [["team:A"]])
    assert await waiting(index, "visit", "team:A") == ["r1", "r2"]
    assert await waiting(index, "visit", "volunteer:v", "unit:X") == ["r2"]
    assert await waiting(index, "outreach", "team:A") == ["p1"]
    assert await waiting(index, "visit", "team:C") == []
    # Every read of the entries was by _id: nothing read the whole index.
    assert filters
    assert all(set(f) == {"_id"} for f in filters)

    await index.remove("visit", ["r1"])
    assert await waiting(index, "visit", "team:A") == ["r2"]
    await index.remove("visit", ["r2", "r3"])
    assert await waiting(index, "visit", "team:A", "team:B", "volunteer:v") == []
    # Keys nobody waits on are gone; outreach's own key stays.
    assert [d["_id"] for d in await db["pi_lookup_keys"].find({}).to_list()] == ["outreach|team:A"]

    # A key naming a record whose entry is not written yet (an add under way) skips it and keeps it.
    await db["pi_lookup_keys"].insert_one({"_id": "visit|team:D", "kind": "visit", "key": "team:D", "records": ["r9"]})
    assert await waiting(index, "visit", "team:D") == []
    await index.add("visit", ["r9"], [["team:D"]])
    assert await waiting(index, "visit", "team:D") == ["r9"]
    # A record that waits on a new key (a merged unit's successor) is found by it.
    assert await index.wait_also("visit", "r9", ["unit:QN-NEW"])
    assert await waiting(index, "visit", "unit:QN-NEW") == ["r9"]
    # Re-checked while still pending on the same keys: nothing new, no key document written.
    keys_col = db["pi_lookup_keys"]
    writes: list[Any] = []
    bulk = keys_col.bulk_write

    def noted_bulk(ops: Any, *args: Any, **kwargs: Any) -> Any:
        writes.append(ops)
        return bulk(ops, *args, **kwargs)

    keys_col.bulk_write = noted_bulk
    index._keys = keys_col
    assert not await index.wait_also("visit", "r9", ["team:D", "unit:QN-NEW"])
    assert writes == []
    assert await index.wait_also("visit", "r9", ["team:D", "volunteer:w"])
    assert len(writes) == 1
    assert len(writes[0]) == 1  # volunteer:w alone


async def test_entries_written_before_the_key_documents_existed_are_named_once(visits_app: Visits) -> None:
    db = visits_app.runtime.db
    index, _ = index_on(db, "pi_migrate")
    now = datetime.now(UTC)
    await db["pi_migrate_entries"].insert_many(
        [
            {"_id": "visit:old1", "kind": "visit", "record_id": "old1", "keys": ["team:A", "volunteer:v"], "at": now},
            {"_id": "outreach:old2", "kind": "outreach", "record_id": "old2", "keys": ["team:A"], "at": now},
        ]
    )
    await db[MIGRATIONS].delete_one({"_id": PENDING_KEYS_MIGRATION})
    assert await waiting(index, "visit", "team:A") == []  # not named yet
    await index.migrate_keys(db)
    assert await waiting(index, "visit", "team:A") == ["old1"]
    assert await waiting(index, "visit", "volunteer:v") == ["old1"]
    assert await waiting(index, "outreach", "team:A") == ["old2"]
    record = await db[MIGRATIONS].find_one({"_id": PENDING_KEYS_MIGRATION})
    assert record is not None
    assert record["documents"] == 3
    # Once: a second start leaves the keys as they are.
    await db["pi_migrate_keys"].delete_many({})
    await index.migrate_keys(db)
    assert await db["pi_migrate_keys"].count_documents({}) == 0
