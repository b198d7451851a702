"""Inserts that arrive together share one command, each caller still gets its own outcome; batches of
ids are read by bounded ``$in`` reads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.mongo import IDS_PER_READ, MONGO_LATENCY, InsertBatcher, ensure_indexes, find_by_ids, insert_once

pytestmark = [pytest.mark.mongo]


@pytest.fixture
def db(scratch_db: AsyncDatabase[dict[str, Any]]) -> AsyncDatabase[dict[str, Any]]:
    return scratch_db


def commands_sent(command: str, collection: str) -> float:
    """Commands sent so far (every command is timed into MONGO_LATENCY)."""
    return sum(
        s.value
        for metric in MONGO_LATENCY.collect()
        for s in metric.samples
        if s.name.endswith("_count") and s.labels == {"command": command, "collection": collection}
    )


async def test_concurrent_inserts_share_one_command_and_each_hears_its_duplicate(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    col = db["records"]
    await ensure_indexes(db, {"records": [IndexModel([("client_ref", ASCENDING)], unique=True)]})
    await col.insert_one({"_id": "r0", "client_ref": "c0"})
    batcher = InsertBatcher(col)
    before = commands_sent("insert", "records")
    docs = [{"_id": f"r{i}", "client_ref": f"c{i}"} for i in range(1, 21)]
    results = await asyncio.gather(
        *(insert_once(col, d, {"_id": d["_id"]}, inserts=batcher) for d in docs),
        insert_once(col, {"_id": "r0", "client_ref": "c0", "late": True}, {"_id": "r0"}, inserts=batcher),
        insert_once(col, {"_id": "r5", "client_ref": "c5"}, {"_id": "r5"}, inserts=batcher),  # same batch
    )
    assert [created for _, created in results] == [True] * 20 + [False, False]
    assert results[20][0] == {"_id": "r0", "client_ref": "c0"}  # the first copy, not the re-sent one
    assert await col.count_documents({}) == 21
    assert commands_sent("insert", "records") - before == 1

    # Another unique key taken: not a duplicate of the same record, so the caller hears the error.
    with pytest.raises(DuplicateKeyError):
        await insert_once(col, {"_id": "other", "client_ref": "c1"}, {"_id": "other"}, inserts=batcher)


async def test_find_by_ids_reads_a_bounded_in_list_per_command_and_leaves_out_unknown_ids(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    col = db["docs"]
    await col.insert_many([{"_id": f"d{i:04d}", "n": i, "tên": "Đội Vân Đồn"} for i in range(1_100)])
    wanted = [f"d{i:04d}" for i in range(1_100)] + ["nobody", "d0007"]  # one unknown, one repeated
    before = commands_sent("find", "docs")
    found = await find_by_ids(col, wanted, {"n": 1})
    assert sorted(found) == [f"d{i:04d}" for i in range(1_100)]
    assert found["d0420"] == {"_id": "d0420", "n": 420}
    # 1,101 distinct ids, IDS_PER_READ to a command
    assert commands_sent("find", "docs") - before == -(-1_101 // IDS_PER_READ)
    assert await find_by_ids(col, []) == {}
