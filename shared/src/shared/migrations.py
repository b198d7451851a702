"""One-off migrations of stored data to the current formats, each applied once per database.

A migration is recorded in ``migrations`` (``{_id: name, applied_at}``) when it finished, so later
starts skip it; running it twice is harmless. The decoders of old formats live here and nowhere
else: once every database has been migrated, a migration and its decoders can be deleted.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from shared.consumer import PROCESSED_EVENTS
from shared.contracts import TOPIC_OF_TYPE
from shared.envelope import ce_time
from shared.logging import get_logger
from shared.mongo import insert_ignoring_duplicates

log = get_logger(__name__)

MIGRATIONS = "migrations"
PLAIN_OUTBOX = "0001-plain-outbox"
OWN_VIEW_DATABASE = "0005-registry-view-in-its-own-database"
# Documents per insert while moving collections.
MOVE_CHUNK = 500
# Collections of the old relay and consumer bookkeeping that nothing reads any more.
RETIRED = ("outbox_published", "consumed_events")


def _legacy_entry(entry: Any) -> dict[str, Any]:
    """An outbox entry of an earlier form as the plain subdocument ``shared.outbox`` writes.

    Forms: zlib of ``[id, topic, key, headers]`` + newline + payload JSON (binary, 2026-11-28 on);
    the same uncompressed as a string (2026-11-28); a nested envelope whose ``data`` is JSON text
    (before 2026-11-28) or a document (before 2026-11).
    """
    if isinstance(entry, bytes | str):
        raw = zlib.decompress(entry) if isinstance(entry, bytes) else entry.encode()
        head_text, _, data = raw.partition(b"\n")
        event_id, topic, key, headers = orjson.loads(head_text)
        h = dict(headers)
        return {
            "id": event_id,
            "type": h["ce_type"],
            "topic": topic,
            "source": h["ce_source"],
            "subject": h.get("ce_subject"),
            "key": key,
            "time": h["ce_time"],
            "data": orjson.loads(data),
        }
    data = orjson.loads(entry["data"]) if isinstance(entry["data"], str) else entry["data"]
    t: datetime = entry["time"]
    return {
        "id": entry["id"],
        "type": entry["type"],
        "topic": TOPIC_OF_TYPE[entry["type"]],
        "source": entry["source"],
        "subject": entry.get("subject"),
        "key": entry["key"],
        "time": ce_time(t if t.tzinfo else t.replace(tzinfo=UTC)),
        "data": data,
    }


def _is_plain(entry: Any) -> bool:
    return isinstance(entry, dict) and "topic" in entry and isinstance(entry.get("time"), str)


async def _published_before(db: AsyncDatabase[dict[str, Any]]) -> set[str]:
    """Ids the old relay recorded as published: packed per chunk, or one per document."""
    ids: set[str] = set()
    async for d in db["outbox_published"].find({}):
        packed = d.get("ids")
        if isinstance(packed, str):
            ids.update(i for i in packed.split("\n") if i)
        else:
            ids.add(str(d["_id"]))
    return ids


def _unpublished(entries: Sequence[Any], published: set[str]) -> list[dict[str, Any]] | None:
    """The plain form of ``entries`` less those published; None when all are plain already."""
    if all(_is_plain(e) for e in entries):
        return None
    plain = [e if _is_plain(e) else _legacy_entry(e) for e in entries]
    return [e for e in plain if e["id"] not in published]


async def applied(db: AsyncDatabase[dict[str, Any]], name: str) -> bool:
    """Whether migration ``name`` finished in this database."""
    return await db[MIGRATIONS].find_one({"_id": name}) is not None


async def record_applied(db: AsyncDatabase[dict[str, Any]], name: str, documents: int) -> None:
    await db[MIGRATIONS].update_one(
        {"_id": name}, {"$set": {"applied_at": datetime.now(UTC), "documents": documents}}, upsert=True
    )
    log.info("migration_applied", migration=name, documents=documents)


async def migrate_outboxes(db: AsyncDatabase[dict[str, Any]], collections: Sequence[str]) -> None:
    """Rewrite outboxes of earlier forms as plain entries, dropping what was published already."""
    if not collections or await applied(db, PLAIN_OUTBOX):
        return
    published = await _published_before(db)
    moved = 0
    for name in collections:
        col = db[name]
        async for found in col.find({"outbox.0": {"$exists": True}}, {"outbox": 1, "rev": 1}):
            doc: dict[str, Any] | None = found
            # Conditional on rev: a writer that appended meanwhile makes the rewrite miss, and the
            # document is read again.
            while doc is not None and (kept := _unpublished(doc.get("outbox", []), published)) is not None:
                flt = {"_id": doc["_id"], "rev": doc.get("rev")}
                if (await col.update_one(flt, {"$set": {"outbox": kept}})).matched_count:
                    moved += 1
                    break
                doc = await col.find_one({"_id": doc["_id"]}, {"outbox": 1, "rev": 1})
    for retired in RETIRED:
        await db[retired].drop()
    await record_applied(db, PLAIN_OUTBOX, moved)


async def _copy(
    source: AsyncCollection[dict[str, Any]], target: AsyncCollection[dict[str, Any]], query: dict[str, Any]
) -> int:
    """Insert every document of ``source`` matching ``query`` into ``target`` (those there already are kept)."""
    copied = 0
    chunk: list[dict[str, Any]] = []
    async for doc in source.find(query):
        chunk.append(doc)
        if len(chunk) >= MOVE_CHUNK:
            copied += await insert_ignoring_duplicates(target, chunk)
            chunk = []
    return copied + await insert_ignoring_duplicates(target, chunk)


async def move_registry_view(
    db: AsyncDatabase[dict[str, Any]],
    view_db: AsyncDatabase[dict[str, Any]],
    collections: Sequence[str],
    groups: Sequence[str],
) -> None:
    """Move the registry read model (``collections``, and the processed event ids of its consumer
    ``groups``) from the service's database to its own, once; before its consumer starts.

    Copy first, then drop: a start that dies in between copies again (documents there already are
    kept) and drops. Every replica must run this code: a replica of the earlier code would keep
    writing the old collections.
    """
    if db.name == view_db.name or await applied(db, OWN_VIEW_DATABASE):
        return
    moved = 0
    for name in collections:
        moved += await _copy(db[name], view_db[name], {})
        await db[name].drop()
    ids = {"group": {"$in": list(groups)}}
    moved += await _copy(db[PROCESSED_EVENTS], view_db[PROCESSED_EVENTS], ids)
    await db[PROCESSED_EVENTS].delete_many(ids)
    await record_applied(db, OWN_VIEW_DATABASE, moved)
