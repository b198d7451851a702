"""The FerretDB we build must answer ``_id`` lookups from its ``_id`` index.

Upstream v1.24.2's SQLite backend spells the ``_id`` expression differently in its queries than in
its index, so SQLite never used the index: every update, delete or find by ``_id`` scanned the whole
table (measured before the patch: an update by ``_id`` took 1.4 ms at 100 documents and 27 ms at
10,000). ``deploy/ferretdb/sqlite-id-index.patch`` fixes it; these tests read SQLite's own query plan
through the ``explain`` command, so they fail if setup ever builds an unpatched binary again.
``deploy/ferretdb/sqlite-id-pushdown-in.patch`` does the same for ``{_id: {$in: [...]}}`` (services read
batches of documents by ``_id``), which upstream answered by reading every document.

It must also keep every single-document write atomic across connections. Upstream runs an update,
findAndModify or delete as a read and a separate write with nothing held between, so concurrent
writers lost changes (measured on the unpatched binary: 500 ``$inc`` stored 166-473; 100
acknowledged compare-and-sets left rev at 67-98; a close and a delete of one household were both
acknowledged). ``deploy/ferretdb/serialise-writes.patch`` serialises those statements, and queues inserts
with them, per database (one SQLite file); the tests below race separate clients against one document,
and every kind of write against one database.

``deploy/ferretdb/update-many-one-transaction.patch`` writes a multi-document update in one SQLite
transaction (upstream: one per document); the tests check its counts and that it is all or nothing.

``deploy/ferretdb/sqlite-unique-indexes-only.patch`` keeps non-unique indexes in FerretDB's metadata
only (the SQLite backend never reads them); unique ones stay SQLite indexes and keep enforcing.

``deploy/ferretdb/update-statements-one-transaction.patch`` runs the statements of one update command
under one hold of the write lock and writes them in one SQLite transaction; the tests check that a
statement sees the earlier ones' changes, that a failing statement keeps those before it, that
concurrent commands add up, and that a reader sees a command all or not at all.

``deploy/ferretdb/pull-by-condition.patch`` makes ``$pull`` with field conditions match each element
document as MongoDB does (upstream compared for equality, so ``{$pull: {outbox: {id: {$in: ...}}}}``
removed nothing); the relay removes published entries that way.

``deploy/ferretdb/sjson-one-pass-decode.patch`` decodes stored documents in one pass and each schema
once; it must give back exactly what was written, and its own Go tests (the fast decoder against
the original on random and damaged documents) must pass on the patched source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import Binary, Int64, ObjectId, Regex, Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo import ReturnDocument, UpdateMany, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, OperationFailure

from shared.infra import FERRETDB_GOGC, FERRETDB_VERSION, FerretDB
from shared.mongo import Document, connect

pytestmark = [pytest.mark.mongo]
Col = AsyncCollection[Document]


async def _plan(ferretdb: FerretDB, run_id: str, flt: dict[str, Any]) -> tuple[list[str], bool]:
    client = connect(ferretdb.url)
    try:
        col = client[f"fdb_{run_id}"]["docs"]
        await col.insert_many([{"_id": f"u{i}|2026-06-01", "rev": i % 3} for i in range(50)])
        found = await col.find_one(flt)
        assert found is not None
        assert found["_id"] == "u42|2026-06-01"
        out = await client[f"fdb_{run_id}"].command({"explain": {"find": "docs", "filter": flt}})
    finally:
        await client.close()
    return [str(step) for step in out["queryPlanner"]["Plan"]], bool(out["filterPushdown"])


async def test_find_by_id_uses_the_id_index(ferretdb: FerretDB, run_id: str) -> None:
    plan, pushed = await _plan(ferretdb, run_id, {"_id": "u42|2026-06-01"})
    assert pushed
    assert any("USING INDEX" in step and "__id_" in step for step in plan), plan
    assert not any("SCAN" in step for step in plan), plan


async def test_id_with_other_conditions_is_narrowed_by_the_index(ferretdb: FerretDB, run_id: str) -> None:
    # Compare-and-set filters such as {_id, rev} are how our services update aggregates.
    plan, pushed = await _plan(ferretdb, run_id, {"_id": "u42|2026-06-01", "rev": 0})
    assert pushed
    assert any("USING INDEX" in step for step in plan), plan


# --- {_id: {$in: [...]}} (deploy/ferretdb/sqlite-id-pushdown-in.patch) -------------------------

# Ids that JSON escapes or spells in more than one byte, as SQLite compares the _id's JSON text.
NAMES = ["Nguyễn Văn An", 'Trần "Bình" <&> \\ Minh', "Đặc khu Vân Đồn"]


@asynccontextmanager
async def _households(ferretdb: FerretDB, run_id: str) -> AsyncIterator[tuple[Col, list[Any]]]:
    """A collection of 300 string ids, 3 ObjectIds and 3 int ids; ``rev`` is 0, 1 or 2."""
    client = connect(ferretdb.url)
    try:
        col = client[f"fdb_{run_id}"]["households"]
        oids = [ObjectId() for _ in range(3)]
        ids: list[Any] = [f"{NAMES[i % 3]} {i}" for i in range(300)] + oids + [7, 8, 9]
        await col.insert_many([{"_id": i, "rev": n % 3} for n, i in enumerate(ids)])
        yield col, ids
    finally:
        await client.close()


async def _explain(col: Col, flt: dict[str, Any]) -> tuple[list[str], bool]:
    out = await col.database.command({"explain": {"find": col.name, "filter": flt}})
    return [str(step) for step in out["queryPlanner"]["Plan"]], bool(out["filterPushdown"])


async def _ids(col: Col, flt: dict[str, Any]) -> list[Any]:
    return [d["_id"] async for d in col.find(flt)]


def _same(found: list[Any], expected: list[Any]) -> bool:
    """Equal as multisets (ObjectIds, strings and ints do not sort together)."""
    return sorted(map(repr, found)) == sorted(map(repr, expected))


async def test_find_by_id_in_uses_the_id_index_and_finds_exactly_the_matches(ferretdb: FerretDB, run_id: str) -> None:
    async with _households(ferretdb, run_id) as (col, ids):
        wanted = ids[0:300:3] + ids[1:30] + [ids[300], ids[302]]  # every third, repeats, two ObjectIds
        missing = [f"{NAMES[0]} 9999", "", str(ids[301]), ObjectId()]  # ids[301] as a string: not its ObjectId
        rev0 = [i for n, i in enumerate(ids) if n % 3 == 0]
        cases: list[tuple[dict[str, Any], list[Any]]] = [
            ({"_id": {"$in": wanted + missing}}, list(dict.fromkeys(wanted))),
            # Another condition beside _id: the index narrows, the handler filters the rest out.
            ({"_id": {"$in": wanted + missing}, "rev": 0}, [i for i in rev0 if i in wanted]),
            ({"_id": {"$in": [ids[5]]}}, [ids[5]]),
            ({"_id": {"$in": missing}}, []),
        ]
        for flt, expected in cases:
            plan, pushed = await _explain(col, flt)
            assert pushed, flt
            assert any("USING INDEX" in step and "__id_" in step for step in plan), plan
            assert not any("SCAN" in step for step in plan), plan
            found = await _ids(col, flt)
            assert _same(found, expected), (flt, found)
            assert len(found) == len(set(map(repr, found)))


async def test_id_in_that_cannot_use_the_index_is_still_answered_correctly(ferretdb: FerretDB, run_id: str) -> None:
    async with _households(ferretdb, run_id) as (col, ids):
        strings = ids[:300]
        too_many = [f"{NAMES[1]} {i}" for i in range(1001)]  # above the patch's cap of 1,000
        cases: list[tuple[dict[str, Any], list[Any]]] = [
            ({"_id": {"$in": [ids[4], 7, ids[301]]}}, [ids[4], 7, ids[301]]),  # an int among the values
            ({"_id": {"$in": [ids[4], None]}}, [ids[4]]),
            ({"_id": {"$nin": strings[1:]}}, [strings[0], *ids[300:]]),
            ({"_id": {"$in": strings[:10], "$nin": strings[:5]}}, strings[5:10]),  # two operators
            ({"_id": {"$in": too_many}}, [i for i in too_many if i in strings]),
            ({"_id": {"$in": []}}, []),
        ]
        for flt, expected in cases:
            _, pushed = await _explain(col, flt)
            assert not pushed, flt
            found = await _ids(col, flt)
            assert _same(found, expected), (flt, found)


def _raw_filter(*pairs: tuple[str, str]) -> RawBSONDocument:
    """A BSON document that may repeat a key (a dict cannot)."""
    body = b""
    for key, value in pairs:
        v = value.encode() + b"\0"
        body += b"\x02" + key.encode() + b"\0" + len(v).to_bytes(4, "little") + v
    return RawBSONDocument((len(body) + 5).to_bytes(4, "little") + body + b"\0")


async def test_a_filter_that_repeats_id_is_answered(ferretdb: FerretDB, run_id: str) -> None:
    # sqlite-id-index.patch looked _id up with types.Document.Get, which panics on a repeated key:
    # FerretDB dropped the client's connection. Now both conditions apply (an AND).
    async with _households(ferretdb, run_id) as (col, ids):
        assert await col.find(_raw_filter(("_id", ids[1]), ("_id", ids[2]))).to_list() == []
        assert [d["_id"] for d in await col.find(_raw_filter(("_id", ids[1]), ("_id", ids[1]))).to_list()] == [ids[1]]


# --- single-document atomicity across connections (deploy/ferretdb/serialise-writes.patch) -------

CLIENTS = 10
# A pool of 2 per client: 20 connections, so statements race inside and across clients.
POOL = 2


# --- deletes by _id (deploy/ferretdb/unread-deletes-by-id.patch) ---------------------------------


async def test_deletes_by_id_remove_exactly_the_documents_the_filter_names(ferretdb: FerretDB, run_id: str) -> None:
    async with _households(ferretdb, run_id) as (col, ids):
        left = list(ids)

        async def delete(flt: dict[str, Any], *, many: bool = True) -> int:
            res = await (col.delete_many(flt) if many else col.delete_one(flt))
            return res.deleted_count

        def gone(*removed: Any) -> None:
            for i in removed:
                left.remove(i)

        missing = [f"{NAMES[0]} 9999", ""]
        # Named by string _ids alone: deleted without being read.
        assert await delete({"_id": ids[0]}, many=False) == 1
        gone(ids[0])
        assert await delete({"_id": ids[0]}) == 0
        assert await delete({"_id": {"$in": ids[1:11] + ids[1:3] + missing}}) == 10  # repeats, missing ids
        gone(*ids[1:11])
        assert await delete({"_id": {"$in": ids[50:300]}}) == 250
        gone(*ids[50:300])
        # Anything else is read and filtered as before: an ObjectId, or its text, which is stored alike.
        assert await delete({"_id": {"$in": [ids[300], str(ids[301]), ObjectId()]}}) == 1
        gone(ids[300])
        assert await delete({"_id": str(ids[301])}) == 0
        assert await delete({"_id": ids[301]}) == 1
        gone(ids[301])
        assert await delete({"_id": {"$in": [ids[20], ids[21]]}}, many=False) == 1  # limit 1 of two
        survivor = ids[21] if ids[21] in await _ids(col, {"_id": {"$in": ids[20:22]}}) else ids[20]
        gone(*[i for i in ids[20:22] if i != survivor])
        assert await delete({"_id": {"$in": [ids[30], 7.0]}}) == 2  # a double matches the stored int 7
        gone(ids[30], 7)
        assert await delete({"_id": 8.0}) == 1
        gone(8)
        assert await delete({"_id": ids[40], "rev": 40 % 3 + 1}) == 0  # another condition that fails
        assert await delete({"_id": ids[40], "rev": 40 % 3}) == 1
        gone(ids[40])
        too_many = [f"{NAMES[1]} x{n}" for n in range(1000)] + [ids[45]]
        assert await delete({"_id": {"$in": too_many}}) == 1
        gone(ids[45])
        assert _same(await _ids(col, {}), left)
        assert await col.count_documents({}) == len(left) == 300 + 6 - 269


@asynccontextmanager
async def _collections(ferretdb: FerretDB, run_id: str, name: str) -> AsyncIterator[list[Col]]:
    """One collection handle per separate client, so every client writes over its own connections."""
    clients = [connect(ferretdb.url, max_pool_size=POOL) for _ in range(CLIENTS)]
    try:
        # Open the connections first: otherwise the handshakes spread out the race being tested.
        await asyncio.gather(*(c.admin.command("ping") for c in clients for _ in range(POOL)))
        yield [c[f"fdb_{run_id}"][name] for c in clients]
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_concurrent_inc_from_separate_clients_loses_no_increment(ferretdb: FerretDB, run_id: str) -> None:
    per_client = 50
    async with _collections(ferretdb, run_id, "counters") as cols:
        await cols[0].insert_one({"_id": "Phường Hạ Long", "households_visited": 0})

        async def bump(col: Col) -> None:
            await asyncio.gather(
                *(
                    col.update_one({"_id": "Phường Hạ Long"}, {"$inc": {"households_visited": 1}})
                    for _ in range(per_client)
                )
            )

        await asyncio.gather(*(bump(col) for col in cols))
        doc = await cols[0].find_one({"_id": "Phường Hạ Long"})
    assert doc is not None
    assert doc["households_visited"] == CLIENTS * per_client


async def test_every_acknowledged_compare_and_set_is_kept(ferretdb: FerretDB, run_id: str) -> None:
    # How our services update aggregates: read rev, write only if rev is unchanged.
    wins_per_client = 10
    async with _collections(ferretdb, run_id, "aggregates") as cols:
        await cols[0].insert_one({"_id": "Đặc khu Vân Đồn", "rev": 0, "log": []})

        async def writer(n: int, col: Col) -> list[str]:
            acknowledged: list[str] = []
            for attempt in range(1000):
                if len(acknowledged) == wins_per_client:
                    break
                doc = await col.find_one({"_id": "Đặc khu Vân Đồn"})
                assert doc is not None
                entry = f"Nguyễn Thị Hương {n}/{attempt}"
                res = await col.update_one(
                    {"_id": "Đặc khu Vân Đồn", "rev": doc["rev"]}, {"$inc": {"rev": 1}, "$push": {"log": entry}}
                )
                if res.matched_count == 1:
                    acknowledged.append(entry)
            return acknowledged

        acked = [e for entries in await asyncio.gather(*(writer(n, c) for n, c in enumerate(cols))) for e in entries]
        doc = await cols[0].find_one({"_id": "Đặc khu Vân Đồn"})
    assert doc is not None
    assert len(acked) == CLIENTS * wins_per_client
    assert doc["rev"] == len(acked)
    assert sorted(doc["log"]) == sorted(acked)


async def test_concurrent_find_one_and_update_hands_out_each_value_once(ferretdb: FerretDB, run_id: str) -> None:
    rounds = 25
    async with _collections(ferretdb, run_id, "sequences") as cols:
        await cols[0].insert_one({"_id": "visit_no", "n": 0})
        taken: list[int] = []
        # Lock-step rounds, every connection of every client at once (as in the delete test below).
        for _ in range(rounds):
            docs = await asyncio.gather(
                *(
                    col.find_one_and_update(
                        {"_id": "visit_no"}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER
                    )
                    for col in cols
                    for _ in range(POOL)
                )
            )
            taken += [d["n"] for d in docs if d is not None]
        doc = await cols[0].find_one({"_id": "visit_no"})
    total = rounds * CLIENTS * POOL
    assert doc is not None
    assert doc["n"] == total
    assert sorted(taken) == list(range(1, total + 1))


async def test_conditional_delete_and_update_racing_on_one_document_never_both_succeed(
    ferretdb: FerretDB, run_id: str
) -> None:
    # A delete of an "open" household racing a close of it: exactly one may win, and the stored
    # document must agree with the winner (an acknowledged close must not vanish).
    rounds = 40
    async with _collections(ferretdb, run_id, "households") as cols:
        ids = [f"Nguyễn Văn An {i}" for i in range(rounds * CLIENTS)]
        await cols[0].insert_many([{"_id": i, "state": "open"} for i in ids])

        async def delete(col: Col, household: str) -> bool:
            res = await col.delete_one({"_id": household, "state": "open"})
            return res.deleted_count == 1

        async def close(col: Col, household: str) -> bool:
            res = await col.update_one({"_id": household, "state": "open"}, {"$set": {"state": "closed"}})
            return res.modified_count == 1

        deleted: list[bool] = []
        closed: list[bool] = []
        # Lock-step rounds: each pair starts together on idle connections (of two different
        # clients), so the two statements really overlap.
        for r in range(rounds):
            batch = ids[r * CLIENTS : (r + 1) * CLIENTS]
            outcome = await asyncio.gather(
                *(delete(cols[k], h) for k, h in enumerate(batch)),
                *(close(cols[(k + 1) % CLIENTS], h) for k, h in enumerate(batch)),
            )
            deleted += outcome[:CLIENTS]
            closed += outcome[CLIENTS:]
        stored = {d["_id"]: d["state"] async for d in cols[0].find({})}
    both = [h for h, d, c in zip(ids, deleted, closed, strict=True) if d and c]
    assert both == []
    assert all(d != c for d, c in zip(deleted, closed, strict=True))
    assert stored == {h: "closed" for h, c in zip(ids, closed, strict=True) if c}


async def test_every_kind_of_write_to_one_database_at_once_is_applied_exactly(ferretdb: FerretDB, run_id: str) -> None:
    # The write mutex is per database (one SQLite file) and inserts take it too: inserts into a
    # collection that does not exist yet, upserts that create theirs, updates, findAndModify and
    # deletes of five collections, all at once from separate clients. Every write must be applied
    # exactly once, and none may wait forever: a holder that took the lock again (say, on the way
    # to creating a new collection) would hang here, not fail.
    rounds = 6
    async with _collections(ferretdb, run_id, "households") as households:
        db = [col.database for col in households]
        await households[0].insert_many([{"_id": f"{NAMES[i % 3]} {i}", "n": 0, "m": 0} for i in range(80)])
        await db[0]["trash"].insert_many([{"_id": f"t{k}-{i}"} for k in range(CLIENTS) for i in range(rounds)])
        ids = [f"{NAMES[i % 3]} {i}" for i in range(80)]

        async def client(k: int) -> list[int]:
            taken: list[int] = []
            for r in range(rounds):
                results = await asyncio.gather(
                    # ~1 kB each, 150 a statement: two backend batches; "visits" is new at first
                    db[k]["visits"].insert_many(
                        [{"_id": f"v{k}-{r}-{i}", "pad": "x" * 1000} for i in range(150)], ordered=False
                    ),
                    households[k].update_one({"_id": ids[(k * rounds + r) % 80]}, {"$inc": {"n": 1}}),
                    households[k].update_many({"_id": {"$in": ids[r * 10 : r * 10 + 20]}}, {"$inc": {"m": 1}}),
                    db[k]["tallies"].update_one({"_id": f"day {r}"}, {"$inc": {"n": 1}}, upsert=True),
                    db[k]["sequences"].find_one_and_update(
                        {"_id": "visit_no"}, {"$inc": {"n": 1}}, upsert=True, return_document=ReturnDocument.AFTER
                    ),
                    db[k]["trash"].delete_one({"_id": f"t{k}-{r}"}),
                )
                assert results[0].inserted_ids == [f"v{k}-{r}-{i}" for i in range(150)]
                assert results[1].modified_count == 1
                assert results[2].modified_count == 20
                assert results[5].deleted_count == 1
                taken.append(results[4]["n"])
            return taken

        async with asyncio.timeout(60):
            taken = [n for ns in await asyncio.gather(*(client(k) for k in range(CLIENTS))) for n in ns]
        stored = {d["_id"]: (d["n"], d["m"]) async for d in households[0].find({})}
        visits = await db[0]["visits"].count_documents({})
        tallies = {d["_id"]: d["n"] async for d in db[0]["tallies"].find({})}
        trash = await db[0]["trash"].count_documents({})
    assert visits == CLIENTS * rounds * 150
    assert sum(n for n, _ in stored.values()) == CLIENTS * rounds
    assert {i: m for i, (_, m) in stored.items()} == {
        i: CLIENTS * sum(1 for r in range(rounds) if r * 10 <= n < r * 10 + 20) for n, i in enumerate(ids)
    }
    assert tallies == {f"day {r}": CLIENTS for r in range(rounds)}
    assert sorted(taken) == list(range(1, CLIENTS * rounds + 1))
    assert trash == 0


async def test_the_write_ahead_log_restarts_under_a_stream_of_updates(own_ferretdb: FerretDB, run_id: str) -> None:
    # unblock-wal-checkpoints.patch: upstream kept each update's read open across its write, so the
    # SQLite log never restarted and grew by every commit (5,000 updates of 1 kB documents: 20 MB+).
    client = connect(own_ferretdb.url)
    name = f"wal_{run_id}"
    try:
        col = client[name]["counters"]
        await col.insert_many([{"_id": f"u{i}|2026-06-01", "pad": "x" * 1000, "n": 0} for i in range(200)])
        for round_ in range(50):
            ops = [UpdateOne({"_id": f"u{(round_ + i) % 200}|2026-06-01"}, {"$inc": {"n": 1}}) for i in range(100)]
            result = await col.bulk_write(ops, ordered=False)
            assert result.modified_count == 100
        stored = await (await col.aggregate([{"$group": {"_id": None, "n": {"$sum": "$n"}}}])).to_list()
        assert stored[0]["n"] == 5000
    finally:
        await client.close()
    wal = own_ferretdb.data_dir / "sqlite" / f"{name}.sqlite-wal"
    assert wal.exists()
    assert wal.stat().st_size < 8 * 1024 * 1024, f"write-ahead log at {wal.stat().st_size / 1e6:.1f} MB"


# --- a multi-document update is one write (deploy/ferretdb/update-many-one-transaction.patch) ----


def _entry(doc: int, k: int) -> dict[str, Any]:
    """An outbox-like subdocument; the relay removes acknowledged ones by id with ``$pull``."""
    return {"id": f"e{doc}-{k}", "type": "household.registered", "subject": f"{NAMES[doc % 3]} {doc}", "n": k}


KEEP = {"id": "keep", "type": "household.visited", "n": -1}


async def test_update_many_by_id_in_pulls_exactly_the_matched_documents_entries(
    ferretdb: FerretDB, run_id: str
) -> None:
    client = connect(ferretdb.url)
    try:
        col = client[f"fdb_{run_id}"]["outboxes"]
        ids = [f"{NAMES[i % 3]} {i}" for i in range(200)]
        # About 1 kB each; every fourth also holds an entry nobody pulls.
        original = {i: [_entry(n, 0), _entry(n, 1)] + ([KEEP] if n % 4 == 0 else []) for n, i in enumerate(ids)}
        await col.insert_many([{"_id": i, "pad": "x" * 700, "outbox": original[i]} for i in ids])
        # As the relay does: one $pull of every entry of the chunk by id. It names the entries of
        # all 200 documents, so a document updated outside the filter would lose its entries too.
        every_entry = {"id": {"$in": [_entry(n, k)["id"] for n in range(200) for k in range(2)]}}

        async def pull(wanted: list[str]) -> tuple[int, int]:
            res = await col.update_many({"_id": {"$in": [*wanted, "nobody 1"]}}, {"$pull": {"outbox": every_entry}})
            return res.matched_count, res.modified_count

        def emptied(n: int) -> list[dict[str, Any]]:
            return [KEEP] if n % 4 == 0 else []

        assert await pull(ids[:150]) == (150, 150)
        stored = {d["_id"]: d["outbox"] async for d in col.find({})}
        assert stored == {i: emptied(n) if n < 150 else original[i] for n, i in enumerate(ids)}

        # Matched but already empty: counted as matched, not as modified, and left alone.
        assert await pull(ids[140:160]) == (20, 10)
        assert await pull(ids[140:160]) == (20, 0)
        stored = {d["_id"]: d["outbox"] async for d in col.find({})}
        assert stored == {i: emptied(n) if n < 160 else original[i] for n, i in enumerate(ids)}
        assert await col.count_documents({}) == 200
    finally:
        await client.close()


async def test_pull_with_field_conditions_removes_the_matching_element_documents_as_mongodb_does(
    ferretdb: FerretDB, run_id: str
) -> None:
    # deploy/ferretdb/pull-by-condition.patch: upstream compared the condition document with each
    # element for equality, so every $pull below but the last two removed nothing.
    client = connect(ferretdb.url)
    try:
        col = client[f"fdb_{run_id}"]["pulls"]
        a, b, c = _entry(1, 0), _entry(2, 0), _entry(3, 1)
        await col.insert_many(
            [
                {"_id": "entries", "outbox": [a, b, c, KEEP]},
                {"_id": "mixed", "outbox": [a, "e1-0", 7, KEEP]},
                {"_id": "scalars", "tags": [1, 5, 6, 9, 5]},
                {"_id": "none", "outbox": []},
            ]
        )

        async def pull(doc_id: str, update: dict[str, Any]) -> Any:
            res = await col.update_one({"_id": doc_id}, update)
            got = await col.find_one({"_id": doc_id})
            assert got is not None
            return res.modified_count, got

        # By id, with $in: a and c go, b and the entry nobody names stay, order kept.
        n, got = await pull("entries", {"$pull": {"outbox": {"id": {"$in": [a["id"], c["id"], "nobody"]}}}})
        assert (n, got["outbox"]) == (1, [b, KEEP])
        # A condition on one field matches an element that has more fields (not equality).
        n, got = await pull("entries", {"$pull": {"outbox": {"type": b["type"]}}})
        assert (n, got["outbox"]) == (1, [KEEP])
        # Several conditions are ANDed: KEEP has n -1, so nothing matches both.
        n, got = await pull("entries", {"$pull": {"outbox": {"type": KEEP["type"], "n": {"$gte": 0}}}})
        assert (n, got["outbox"]) == (0, [KEEP])
        # Elements that are not documents never match a field condition.
        n, got = await pull("mixed", {"$pull": {"outbox": {"id": {"$in": [a["id"]]}}}})
        assert (n, got["outbox"]) == (1, ["e1-0", 7, KEEP])
        # Nothing to remove from an empty array: matched, not modified.
        n, got = await pull("none", {"$pull": {"outbox": {"id": {"$in": ["e1-0"]}}}})
        assert (n, got["outbox"]) == (0, [])
        # Equality stays for scalars and for a whole-element value.
        n, got = await pull("scalars", {"$pull": {"tags": 5}})
        assert (n, got["tags"]) == (1, [1, 6, 9])
        n, got = await pull("mixed", {"$pull": {"outbox": 7}})
        assert (n, got["outbox"]) == (1, ["e1-0", KEEP])
    finally:
        await client.close()


async def test_a_failing_update_many_writes_none_of_its_documents(ferretdb: FerretDB, run_id: str) -> None:
    # All modified documents are written by one UpdateAll (one SQLite transaction) after all were
    # processed; upstream wrote each as it went, so the documents before the failing one kept the
    # change (measured on the previous build: 50 of 99). MongoDB allows either.
    client = connect(ferretdb.url)
    try:
        col = client[f"fdb_{run_id}"]["counters"]
        await col.insert_many([{"_id": f"u{i}", "n": "not a number" if i == 50 else 0} for i in range(100)])
        with pytest.raises(OperationFailure, match="non-numeric"):
            await col.update_many({}, {"$inc": {"n": 1}})
        stored = {d["_id"]: d["n"] async for d in col.find({})}
        assert stored == {f"u{i}": "not a number" if i == 50 else 0 for i in range(100)}
    finally:
        await client.close()


async def _reads_beside(
    ferretdb: FerretDB, run_id: str, ids: list[str], write_round: Callable[[Col, int], Awaitable[None]]
) -> list[set[int]]:
    """The sets of ``v`` that two readers saw in the documents of ``ids`` while ``write_round(col, r)``
    set every ``v`` to ``r`` for r = 1 .. 30 (reads take no lock)."""
    client = connect(ferretdb.url, max_pool_size=4)
    try:
        col = client[f"fdb_{run_id}"]["households"]
        await col.insert_many([{"_id": i, "pad": "x" * 700, "v": 0} for i in ids])
        done = asyncio.Event()
        seen: list[set[int]] = []

        async def write() -> None:
            try:
                for r in range(1, 31):
                    await write_round(col, r)
            finally:
                done.set()

        async def read() -> None:
            while not done.is_set():
                docs = await col.find({}, {"v": 1}, batch_size=1000).to_list()
                assert len(docs) == len(ids)
                seen.append({d["v"] for d in docs})

        await asyncio.gather(write(), read(), read())
    finally:
        await client.close()
    assert len({v for s in seen for v in s}) > 2, "the reads never overlapped the writes"
    return seen


async def test_a_reader_sees_all_or_none_of_an_update_many(ferretdb: FerretDB, run_id: str) -> None:
    # One transaction per update_many: a read running beside it sees the documents from one
    # snapshot, before or after the whole statement. Upstream committed each document on its own,
    # so readers saw statements half applied (previous build: most reads).
    ids = [f"{NAMES[i % 3]} {i}" for i in range(200)]

    async def write_round(col: Col, r: int) -> None:
        res = await col.update_many({"_id": {"$in": ids}}, {"$set": {"v": r}})
        assert (res.matched_count, res.modified_count) == (200, 200)

    seen = await _reads_beside(ferretdb, run_id, ids, write_round)
    mixed = [s for s in seen if len(s) != 1]
    assert mixed == [], f"{len(mixed)} of {len(seen)} reads saw a half-applied update_many"


async def test_single_document_updates_and_upserts_report_as_before(ferretdb: FerretDB, run_id: str) -> None:
    # findAndModify and upserts go through the same code path as update_many.
    client = connect(ferretdb.url)
    try:
        col = client[f"fdb_{run_id}"]["visits"]
        res = await col.update_one({"_id": "Phường Hạ Long"}, {"$set": {"n": 1}}, upsert=True)
        assert (res.matched_count, res.modified_count, res.upserted_id) == (0, 0, "Phường Hạ Long")
        res = await col.update_one({"_id": "Phường Hạ Long"}, {"$set": {"n": 2}}, upsert=True)
        assert (res.matched_count, res.modified_count, res.upserted_id) == (1, 1, None)
        res = await col.update_one({"_id": "Phường Hạ Long"}, {"$set": {"n": 2}})
        assert (res.matched_count, res.modified_count) == (1, 0)
        res = await col.update_many({"_id": "Đặc khu Vân Đồn", "n": 5}, {"$set": {"m": 1}}, upsert=True)
        assert (res.matched_count, res.modified_count, res.upserted_id) == (0, 0, "Đặc khu Vân Đồn")

        before = await col.find_one_and_update({"_id": "Phường Hạ Long"}, {"$inc": {"n": 1}})
        after = await col.find_one_and_update(
            {"_id": "Phường Hạ Long"}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER
        )
        same = await col.find_one_and_update(
            {"_id": "Phường Hạ Long"}, {"$set": {"n": 4}}, return_document=ReturnDocument.AFTER
        )
        new = await col.find_one_and_update(
            {"_id": "Đặc khu Vân Đồn 2"}, {"$set": {"n": 7}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        missing = await col.find_one_and_update({"_id": "nobody"}, {"$set": {"n": 7}})
        assert (before, after, same, new, missing) == (
            {"_id": "Phường Hạ Long", "n": 2},
            {"_id": "Phường Hạ Long", "n": 4},
            {"_id": "Phường Hạ Long", "n": 4},
            {"_id": "Đặc khu Vân Đồn 2", "n": 7},
            None,
        )
        stored = {d["_id"]: d async for d in col.find({})}
        assert stored == {
            "Phường Hạ Long": {"_id": "Phường Hạ Long", "n": 4},
            "Đặc khu Vân Đồn": {"_id": "Đặc khu Vân Đồn", "n": 5, "m": 1},
            "Đặc khu Vân Đồn 2": {"_id": "Đặc khu Vân Đồn 2", "n": 7},
        }
    finally:
        await client.close()


# --- the statements of one update command (deploy/ferretdb/update-statements-one-transaction.patch) -


async def test_statements_of_one_update_command_see_each_others_changes(ferretdb: FerretDB, run_id: str) -> None:
    # The command's writes wait in memory until its end; a later statement must read them anyway.
    client = connect(ferretdb.url)
    try:
        col = client[f"fdb_{run_id}"]["households"]
        await col.insert_many(
            [
                {"_id": "Phường Hạ Long", "n": 0, "state": "open"},
                {"_id": "Đặc khu Vân Đồn", "n": 10, "kind": "island"},
                {"_id": "Xã Quảng Đức", "n": 20, "kind": "island"},
            ]
        )
        res = await col.bulk_write(
            [
                UpdateOne({"_id": "Phường Hạ Long"}, {"$inc": {"n": 1}}),
                UpdateOne({"_id": "Phường Hạ Long"}, {"$inc": {"n": 1}}),
                # Matches only once the statement before it has closed the household.
                UpdateOne({"_id": "Phường Hạ Long", "state": "open"}, {"$set": {"state": "closed"}}),
                UpdateOne({"_id": "Phường Hạ Long", "state": "closed"}, {"$set": {"state": "archived"}}),
                UpdateOne({"_id": "Phường Hạ Long", "state": "open"}, {"$set": {"state": "reopened"}}),
                # A multi-document statement over a document an earlier statement changed.
                UpdateOne({"_id": "Đặc khu Vân Đồn"}, {"$inc": {"n": 5}}),
                UpdateMany({"kind": "island"}, {"$inc": {"n": 100}}),
                # An upsert between updates, then an update of what it inserted.
                UpdateOne({"_id": "Xã Cô Tô"}, {"$set": {"n": 1}}, upsert=True),
                UpdateOne({"_id": "Xã Cô Tô"}, {"$inc": {"n": 1}}),
                UpdateOne({"_id": "Phường Hạ Long"}, {"$set": {"state": "archived"}}),
            ],
            ordered=False,
        )
        # matched: 1+1+1+1+0 + 1+2 + (upsert: 0, counted in upserted) + 1 + 1; the last changes nothing.
        assert (res.matched_count, res.modified_count, res.upserted_ids) == (9, 8, {7: "Xã Cô Tô"})
        stored = {d["_id"]: d async for d in col.find({})}
        assert stored == {
            "Phường Hạ Long": {"_id": "Phường Hạ Long", "n": 2, "state": "archived"},
            "Đặc khu Vân Đồn": {"_id": "Đặc khu Vân Đồn", "n": 115, "kind": "island"},
            "Xã Quảng Đức": {"_id": "Xã Quảng Đức", "n": 120, "kind": "island"},
            "Xã Cô Tô": {"_id": "Xã Cô Tô", "n": 2},
        }
    finally:
        await client.close()


async def test_a_failing_statement_keeps_the_statements_before_it_and_runs_none_after(
    ferretdb: FerretDB, run_id: str
) -> None:
    # As upstream, which wrote each statement as it went and stopped at the first error. The raw
    # command, because FerretDB's reply to a failed statement (a write error without nModified, also
    # upstream) makes pymongo's bulk_write raise a KeyError instead of a BulkWriteError.
    client = connect(ferretdb.url)
    try:
        db = client[f"fdb_{run_id}"]
        await db["counters"].insert_many(
            [{"_id": "a", "n": 0}, {"_id": "b", "n": "not a number"}, {"_id": "c", "n": 0}]
        )
        inc = {"$inc": {"n": 1}}
        reply = await db.command(
            {
                "update": "counters",
                "updates": [{"q": {"_id": k}, "u": inc} for k in ("a", "a", "b", "c")],
                "ordered": False,
            }
        )
        assert [e["code"] for e in reply["writeErrors"]] == [14], reply
        stored = {d["_id"]: d["n"] async for d in db["counters"].find({})}
        assert stored == {"a": 2, "b": "not a number", "c": 0}
    finally:
        await client.close()


async def test_concurrent_many_statement_commands_lose_no_increment(ferretdb: FerretDB, run_id: str) -> None:
    # Each command holds the lock from its first read to its one write: commands of separate
    # clients on the same documents must add up exactly.
    docs, commands, statements = 5, 10, 30
    async with _collections(ferretdb, run_id, "counters") as cols:
        await cols[0].insert_many([{"_id": f"Phường {i}", "n": 0, "wm": 0} for i in range(docs)])

        async def run(col: Col, k: int) -> None:
            for c in range(commands):
                batch = [
                    UpdateOne({"_id": f"Phường {(k + c + s) % docs}"}, {"$inc": {"n": 1}}) for s in range(statements)
                ]
                res = await col.bulk_write(batch, ordered=False)
                assert res.matched_count == statements

        await asyncio.gather(*(run(col, k) for k, col in enumerate(cols)))
        stored = [d["n"] async for d in cols[0].find({})]
    assert sum(stored) == CLIENTS * commands * statements
    assert stored == [CLIENTS * commands * statements // docs] * docs


async def test_a_reader_sees_all_or_none_of_a_many_statement_command(ferretdb: FerretDB, run_id: str) -> None:
    ids = [f"{NAMES[i % 3]} {i}" for i in range(50)]

    async def write_round(col: Col, r: int) -> None:
        res = await col.bulk_write([UpdateOne({"_id": i}, {"$set": {"v": r}}) for i in ids], ordered=False)
        assert (res.matched_count, res.modified_count) == (50, 50)

    seen = await _reads_beside(ferretdb, run_id, ids, write_round)
    mixed = [s for s in seen if len(s) != 1]
    assert mixed == [], f"{len(mixed)} of {len(seen)} reads saw a command half applied"


# --- documents decoded in one pass (deploy/ferretdb/sjson-one-pass-decode.patch) ----------------

PATCHES = Path(__file__).resolve().parents[2] / "deploy" / "ferretdb"
# Strings the fast decoder takes as they are, and strings it leaves to the original decoder
# (escapes, control characters, characters json.Marshal writes as \u escapes).
TEXTS = [*NAMES, "", "Quảng Ninh — Hạ Long", "tab\tnew\nline", "\x01", "<b>&amp;</b>", "\u2028\u2029", "🎉", "$s"]


def _value(rng: random.Random, depth: int, in_array: bool = False) -> Any:
    # FerretDB v1 stores no array directly inside an array.
    kinds = 13 if depth >= 3 else 14 if in_array else 15
    match rng.randrange(kinds):
        case 0 | 1:
            return rng.choice(TEXTS)
        case 2:
            return rng.choice([0, -1, 2**31 - 1, -(2**31), rng.randrange(10**6)])
        case 3:
            return Int64(rng.choice([0, 2**63 - 1, -(2**63), 2**53 + 1]))
        case 4:
            # No -0.0: FerretDB v1 stores it as 0.0 (upstream, with or without our patches).
            return rng.choice([0.0, 0.1, 1e308, 5e-324, -2.5e-300, rng.random()])
        case 5:
            return rng.random() < 0.5
        case 6:
            return None
        case 7:
            return datetime(2026, 9, 1, tzinfo=UTC) + timedelta(milliseconds=rng.randrange(10**10))
        case 8:
            # Not subtype 0: it reads back as bytes.
            return Binary(bytes([rng.randrange(256) for _ in range(5)]), rng.choice([5, 0x80]))
        case 9:
            return ObjectId()
        case 10:
            return Regex("^Hạ.*Long$", "i")
        case 11:
            return Timestamp(rng.randrange(2**31), rng.randrange(100))
        case 12:
            return rng.choice(TEXTS) + str(rng.randrange(100))
        case 13:
            return _document(rng, depth + 1)
        case _:
            return [_value(rng, depth + 1, in_array=True) for _ in range(rng.randrange(4))]


def _document(rng: random.Random, depth: int) -> dict[str, Any]:
    keys = ["outbox", "rev", "tên đơn vị", "a b", "data", "k", "x"]
    return {rng.choice(keys) + str(i % 2): _value(rng, depth) for i in range(rng.randrange(6))}


def _exact(value: Any) -> Any:
    """``value`` with what ``==`` does not see made visible: key order and types."""
    if isinstance(value, dict):
        return [(k, _exact(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return (type(value).__name__, value)


async def test_documents_of_every_type_read_back_exactly_as_written(ferretdb: FerretDB, run_id: str) -> None:
    rng = random.Random(7)
    docs = [{"_id": f"{NAMES[i % 3]} {i}", **_document(rng, 0)} for i in range(400)]
    # Documents of one shape share a schema, which the decoder keeps once decoded.
    docs += [{"_id": f"same {i}", "rev": i, "outbox": [{"id": f"e{i}", "n": Int64(i)}]} for i in range(50)]
    client = connect(ferretdb.url)
    try:
        col = client[f"fdb_{run_id}"]["every_type"]
        await col.insert_many(docs)
        stored = {d["_id"]: d async for d in col.find({})}
        assert [_exact(stored[d["_id"]]) for d in docs] == [_exact(d) for d in docs]
        # Read again after an update, through update's own decoding of the stored document.
        await col.update_many({"_id": {"$in": [d["_id"] for d in docs[:100]]}}, {"$set": {"seen": True}})
        again = {d["_id"]: d async for d in col.find({"seen": True})}
        assert [_exact(again[d["_id"]]) for d in docs[:100]] == [_exact({**d, "seen": True}) for d in docs[:100]]
    finally:
        await client.close()


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is needed: `make setup` builds FerretDB with go, patch and git"
    return path


def _run(args: list[str], cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603


def test_the_one_pass_decoder_gives_what_the_original_gives(tmp_path: Path) -> None:
    go = _tool("go")
    # Answered from the module cache that `make setup` filled to build FerretDB.
    module = _run([go, "mod", "download", "-json", f"github.com/FerretDB/FerretDB@{FERRETDB_VERSION}"])
    assert module.returncode == 0, module.stderr
    src = tmp_path / "ferretdb"
    shutil.copytree(json.loads(module.stdout)["Dir"], src)
    for path in [src, *src.rglob("*")]:  # the module cache is read-only
        path.chmod(path.stat().st_mode | 0o200)
    for patch in sorted(PATCHES.glob("*.patch")):
        applied = _run([_tool("patch"), "-s", "-p1", "-d", str(src), "-i", str(patch)])
        assert applied.returncode == 0, applied.stdout + applied.stderr
    (src / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION)
    assert _run([_tool("git"), "init", "-q", str(src)]).returncode == 0  # FerretDB's test helpers look for .git
    out = _run([go, "test", "-count=1", "-run", "UnmarshalFast", "-v", "./internal/handler/sjson/"], src, 900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    for test in ("TestUnmarshalFastEqualsOriginal", "TestUnmarshalFastMutated", "TestUnmarshalFastDeclines"):
        assert f"--- PASS: {test}" in out.stdout, out.stdout[-4000:]


def test_ferretdb_runs_with_our_collector_target(ferretdb: FerretDB) -> None:
    assert ferretdb.proc is not None
    environ = Path(f"/proc/{ferretdb.proc.pid}/environ").read_bytes().split(b"\0")
    assert f"GOGC={FERRETDB_GOGC}".encode() in environ


# --- only unique indexes are SQLite indexes (deploy/ferretdb/sqlite-unique-indexes-only.patch) ---


def _sqlite_indexes(ferretdb: FerretDB, db_name: str, collection: str = "visits") -> set[str]:
    """The SQLite indexes of a FerretDB collection, read from its database file beside the server."""
    path = ferretdb.data_dir / "sqlite" / f"{db_name}.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        (table,) = conn.execute("SELECT table_name FROM _ferretdb_collections WHERE name = ?", (collection,)).fetchone()
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)).fetchall()
    return {name.removeprefix(f"{table}_") for (name,) in rows}


async def test_only_unique_indexes_are_sqlite_indexes_and_both_kinds_are_listed(
    ferretdb: FerretDB, run_id: str
) -> None:
    client = connect(ferretdb.url)
    name = f"idx_{run_id}"
    try:
        col = client[name]["visits"]
        await col.create_index("client_ref", unique=True)
        await col.create_index("unit_path")
        await col.create_index([("team_code", 1), ("visited_on", -1)])
        await col.insert_one({"_id": "v1", "client_ref": "r1", "unit_path": "QN/HL"})
        with pytest.raises(DuplicateKeyError):
            await col.insert_one({"_id": "v2", "client_ref": "r1"})
        listed = {i["name"]: bool(i.get("unique")) async for i in await col.list_indexes()}
        assert listed == {
            "_id_": False,  # listIndexes does not call _id unique, as on MongoDB
            "client_ref_1": True,
            "unit_path_1": False,
            "team_code_1_visited_on_-1": False,
        }
        assert _sqlite_indexes(ferretdb, name) == {"_id_", "client_ref_1"}
        assert await col.find_one({"unit_path": "QN/HL"}) == {"_id": "v1", "client_ref": "r1", "unit_path": "QN/HL"}
        await col.drop_index("unit_path_1")
        assert {i["name"] async for i in await col.list_indexes()} == {
            "_id_",
            "client_ref_1",
            "team_code_1_visited_on_-1",
        }
    finally:
        await client.drop_database(name)
        await client.close()


async def test_a_database_written_before_loses_its_non_unique_sqlite_indexes_once(
    own_ferretdb: FerretDB, run_id: str
) -> None:
    name = f"old_{run_id}"
    client = connect(own_ferretdb.url)
    try:
        col = client[name]["visits"]
        await col.create_index("status")
        await col.create_index("client_ref", unique=True)
        await col.insert_one({"_id": "v1", "client_ref": "r1", "status": "recorded"})
    finally:
        await client.close()
    own_ferretdb.stop()
    # What an earlier build left: the non-unique index as an SQLite index too.
    path = own_ferretdb.data_dir / "sqlite" / f"{name}.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (table,) = conn.execute("SELECT table_name FROM _ferretdb_collections WHERE name = 'visits'").fetchone()
        conn.execute(f'CREATE INDEX "{table}_status_1" ON "{table}" (_ferretdb_sjson->"status")')
        conn.commit()
    assert "status_1" in _sqlite_indexes(own_ferretdb, name)
    own_ferretdb.start()
    client = connect(own_ferretdb.url)
    try:
        assert await client[name]["visits"].find_one({"status": "recorded"}) is not None  # opens the database
        assert _sqlite_indexes(own_ferretdb, name) == {"_id_", "client_ref_1"}
        assert {i["name"] async for i in await client[name]["visits"].list_indexes()} == {
            "_id_",
            "status_1",
            "client_ref_1",
        }
    finally:
        await client.close()
