"""Audit entries ride in the document they describe and read back in order, filtered and scoped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.audit import (
    AuditQuery,
    audit_entry,
    audit_fields,
    audit_scope,
    audit_update,
    changes,
    read_audit,
    system_actor,
)
from shared.auth import Principal, Role
from shared.errors import Forbidden
from shared.infra import FerretDB
from shared.mongo import connect
from shared.outbox import outbox_update

pytestmark = [pytest.mark.mongo]

ADMIN = Principal(sub="admin", role=Role.admin)
HUONG = Principal(sub="huong", role=Role.manager, unit="QN-HALONG")
LAN = Principal(sub="lan", role=Role.manager, unit="QN-VANDON")
HALONG = ["QN", "QN-HALONG"]
VANDON = ["QN", "QN-VANDON"]


def test_changes_keep_only_the_fields_that_differ() -> None:
    before = {"households": 3, "people": {"total": 5}, "notes": "Bà Nguyễn Thị Hương"}
    after = {"households": 2, "people": {"total": 5}, "notes": "Bà Nguyễn Thị Hương"}
    assert changes(before, after, ["households", "people", "notes"]) == ({"households": 3}, {"households": 2})


def test_roles_read_their_own_part_of_the_log() -> None:
    assert audit_scope(ADMIN) == AuditQuery()
    assert audit_scope(HUONG) == AuditQuery(unit="QN-HALONG")
    assert audit_scope(Principal(sub="f1", role=Role.field, teams=["T"])) == AuditQuery(actor="f1")
    with pytest.raises(Forbidden):
        audit_scope(Principal(sub="v", role=Role.viewer, unit="QN"))
    with pytest.raises(Forbidden):
        audit_scope(Principal(sub="m", role=Role.manager))


async def test_entries_written_with_their_change_read_back_in_order_scoped_and_paged(
    ferretdb: FerretDB, run_id: str
) -> None:
    client = connect(ferretdb.url)
    db = client[f"audit_{run_id}"]
    t0 = datetime(2025, 7, 14, 2, 0, tzinfo=UTC)
    try:
        # Two collections, as a service keeps records of several kinds.
        await db.visits.insert_one(
            {
                "_id": "v1",
                "households": 3,
                "rev": 1,
                **audit_fields(
                    [audit_entry(HUONG, "visit.recorded", "visit", "v1", HALONG, after={"households": 3}, at=t0)]
                ),
            }
        )
        await db.visits.insert_one(
            {
                "_id": "v2",
                "rev": 1,
                **audit_fields(
                    [audit_entry(LAN, "visit.recorded", "visit", "v2", VANDON, at=t0 + timedelta(minutes=1))]
                ),
            }
        )
        await db.outreach.insert_one({"_id": "p0", "rev": 1})  # written before audit existed: no entries
        await db.outreach.insert_one(
            {
                "_id": "p1",
                "rev": 1,
                **audit_fields(
                    [
                        audit_entry(
                            system_actor("visits"),
                            "outreach_post.published",
                            "outreach_post",
                            "p1",
                            HALONG,
                            at=t0 + timedelta(minutes=2),
                        )
                    ]
                ),
            }
        )
        # A correction: the entry is pushed by the same update as the change and its outbox event.
        before, after = changes({"households": 3}, {"households": 2}, ["households"])
        entry = audit_entry(ADMIN, "visit.corrected", "visit", "v1", HALONG, before=before, after=after)
        update = audit_update(outbox_update({"$set": {"households": 2}}, []), [entry])
        result = await db.visits.update_one({"_id": "v1", "rev": 1}, update)
        assert result.modified_count == 1
        stored = await db.visits.find_one({"_id": "v1"})
        assert stored is not None
        assert stored["households"] == 2
        assert len(stored["audit"]) == 2
        # Plain subdocuments: an ordinary query finds them.
        assert await db.visits.count_documents({"audit.actor.sub": "admin"}) == 1

        everything, nxt = await read_audit(db, ["visits", "outreach"], AuditQuery(), AuditQuery(), 50, None)
        assert nxt is None
        assert [e.action for e in everything] == [
            "visit.recorded",
            "visit.recorded",
            "outreach_post.published",
            "visit.corrected",
        ]
        corrected = everything[-1]
        assert (corrected.before, corrected.after) == ({"households": 3}, {"households": 2})
        assert corrected.actor.sub == "admin"
        assert corrected.actor.role == "admin"

        halong, _ = await read_audit(db, ["visits", "outreach"], audit_scope(HUONG), AuditQuery(), 50, None)
        assert [e.entity_id for e in halong] == ["v1", "p1", "v1"]
        vandon, _ = await read_audit(db, ["visits", "outreach"], audit_scope(LAN), AuditQuery(), 50, None)
        assert [e.entity_id for e in vandon] == ["v2"]
        # A manager's own filter narrows inside the scope, never widens it.
        none, _ = await read_audit(db, ["visits", "outreach"], audit_scope(LAN), AuditQuery(unit="QN-HALONG"), 50, None)
        assert none == []
        inside, _ = await read_audit(db, ["visits", "outreach"], audit_scope(HUONG), AuditQuery(unit="QN"), 50, None)
        assert [e.entity_id for e in inside] == ["v1", "p1", "v1"]

        by_entity, _ = await read_audit(
            db, ["visits", "outreach"], AuditQuery(), AuditQuery(entity_id="v1", actor="admin"), 50, None
        )
        assert [e.action for e in by_entity] == ["visit.corrected"]
        window, _ = await read_audit(
            db,
            ["visits", "outreach"],
            AuditQuery(),
            AuditQuery(since=t0 + timedelta(seconds=30), until=t0 + timedelta(minutes=5)),
            50,
            None,
        )
        assert [e.entity_id for e in window] == ["v2", "p1"]

        first, cursor = await read_audit(db, ["visits", "outreach"], AuditQuery(), AuditQuery(), 3, None)
        assert cursor is not None
        rest, end = await read_audit(db, ["visits", "outreach"], AuditQuery(), AuditQuery(), 3, cursor)
        assert end is None
        assert [e.id for e in first + rest] == [e.id for e in everything]
    finally:
        await client.drop_database(f"audit_{run_id}")
        await client.close()
