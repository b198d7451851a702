"""The FerretDB we build must answer ``_id`` lookups from its ``_id`` index.

Upstream v1.24.2's SQLite backend spells the ``_id`` expression differently in its queries than in
its index, so SQLite never used the index: every update, delete or find by ``_id`` scanned the whole
table (measured before the patch: an update by ``_id`` took 1.4 ms at 100 documents and 27 ms at
10,000). ``deploy/ferretdb/sqlite-id-index.patch`` fixes it; these tests read SQLite's own query plan
through the ``explain`` command, so they fail if setup ever builds an unpatched binary again.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.infra import FerretDB
from shared.mongo import connect

pytestmark = [pytest.mark.mongo]


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
