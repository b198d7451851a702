"""Roster import: many volunteers with their memberships per request, each row judged on its own."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from shared.contracts import registry as ev
from shared.testing import token

from .support import ADMIN, registry_events, seed_tree, team_body, volunteer_body

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]


def row(ref: str, unit: str = "QN-HALONG", teams: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    body = volunteer_body(unit, full_name=f"Tình nguyện viên {ref}", **extra)
    return {**body, "client_ref": ref, "teams": teams or []}


async def test_roster_rows_are_judged_one_by_one_and_a_resend_changes_nothing(client, settings) -> None:
    events = await seed_tree(client)
    for body in (team_body("HL-TT01"), team_body("VD-LD", "QN-VANDON", kind="mobile", base=None)):
        assert (await client.post("/v1/teams", json=body, headers=ADMIN)).status_code == 201
    assert (await client.post("/v1/teams/VD-LD:deactivate", headers=ADMIN)).status_code == 200
    events += 3
    since = "2025-07-01"
    rows = [
        row("r/1", teams=[{"code": "HL-TT01", "since": since}]),
        row("r/2", "QN-VANDON"),
        row("r/3", teams=[{"code": "NOPE", "since": since}]),  # unknown team
        row("r/4", birth_year=1800),  # invalid field
        row("r/5", teams=[{"code": "VD-LD", "since": since}]),  # deactivated team
        {"client_ref": "r/6"},  # most fields missing
    ]
    r = await client.post("/v1/volunteers:import", json={"items": rows}, headers=ADMIN)
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    assert [i["status"] for i in got] == ["created", "created", "rejected", "rejected", "rejected", "rejected"]
    assert [i["client_ref"] for i in got] == [f"r/{n}" for n in range(1, 7)]
    assert got[0]["teams"] == ["HL-TT01"]
    assert got[2]["problem"]["type"].endswith("unknown-team")
    assert got[3]["problem"]["status"] == 422
    assert got[3]["problem"]["errors"][0]["field"] == "birth_year"
    assert got[4]["problem"]["type"].endswith("team-inactive")
    ids = [got[0]["id"], got[1]["id"]]

    members = await client.get("/v1/teams/HL-TT01/members", headers=ADMIN)
    assert [m["volunteer_id"] for m in members.json()["items"]] == [ids[0]]
    one = await client.get(f"/v1/volunteers/{ids[1]}", headers=ADMIN)
    assert one.status_code == 200
    assert one.json()["unit_code"] == "QN-VANDON"

    # The device never saw the answer and sends the first two rows again.
    again = await client.post("/v1/volunteers:import", json={"items": rows[:2]}, headers=ADMIN)
    assert [(i["status"], i["id"]) for i in again.json()["items"]] == [("duplicate", ids[0]), ("duplicate", ids[1])]
    listed = await client.get("/v1/volunteers", params={"limit": 100}, headers=ADMIN)
    assert len(listed.json()["items"]) == 2

    got_events = await registry_events(settings, events + 3)
    types = Counter(e.envelope.type for e in got_events)
    assert types[ev.VOLUNTEER_REGISTERED] == 2
    assert types[ev.MEMBERSHIP_STARTED] == 1
    started = next(e for e in got_events if e.envelope.type == ev.MEMBERSHIP_STARTED)
    assert started.envelope.data == {"team_code": "HL-TT01", "volunteer_id": ids[0], "since": since}


async def test_roster_rows_outside_a_managers_unit_are_rejected(client, settings) -> None:
    events = await seed_tree(client)
    manager = token("manager", unit="QN-HALONG")
    rows = [row("m/1"), row("m/2", "QN-VANDON")]
    r = await client.post("/v1/volunteers:import", json={"items": rows}, headers=manager)
    assert r.status_code == 200, r.text
    assert [i["status"] for i in r.json()["items"]] == ["created", "rejected"]
    assert r.json()["items"][1]["problem"]["status"] == 403
    field = token("field", unit="QN-HALONG")
    denied = await client.post("/v1/volunteers:import", json={"items": rows}, headers=field)
    assert denied.status_code == 403
    got = await registry_events(settings, events + 1)  # the one accepted row, nothing from the others
    assert [e.envelope.type for e in got].count(ev.VOLUNTEER_REGISTERED) == 1
