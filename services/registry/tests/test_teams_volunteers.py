"""Teams, volunteers and memberships over HTTP, with the events each change publishes."""

from __future__ import annotations

import unicodedata
import uuid
from collections import Counter

import pytest

from shared.contracts import registry as ev

from .support import (
    ADMIN,
    assert_cloudevent,
    assert_problem,
    registry_events,
    seed_tree,
    team_body,
    this_year,
    volunteer_body,
)

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

CAMPAIGN = {"code": "PEAK90", "name": "Cao điểm 90 ngày", "starts_on": "2025-07-01", "ends_on": "2025-09-28"}


async def test_team_lifecycle_create_list_patch_deactivate_emits_exactly_its_events(client, settings) -> None:
    events = await seed_tree(client)
    assert (await client.post("/v1/campaigns", json=CAMPAIGN, headers=ADMIN)).status_code == 201
    events += 1

    r = await client.post("/v1/teams", json=team_body("HL-TT01"), headers=ADMIN)
    assert r.status_code == 201
    assert r.json() == {
        "code": "HL-TT01",
        "name": "Đội thanh niên tình nguyện thường trực",
        "kind": "permanent",
        "unit_code": "QN-HALONG",
        "unit_path": ["QN", "QN-HALONG"],
        "base": "Trung tâm Phục vụ hành chính công",
        "campaign_code": None,
        "active": True,
    }
    red = team_body("VD-TSD", "QN-VANDON", name="Đội Thắp sáng đỏ", kind="campaign", base=None, campaign_code="PEAK90")
    assert (await client.post("/v1/teams", json=red, headers=ADMIN)).status_code == 201
    mobile = team_body("BL-LD", "QN-BINHLIEU", name="Đội lưu động Bình Liêu", kind="mobile", base=None)
    assert (await client.post("/v1/teams", json=mobile, headers=ADMIN)).status_code == 201
    events += 3

    async def codes(**params: object) -> list[str]:
        r = await client.get("/v1/teams", params=params, headers=ADMIN)
        assert r.status_code == 200, r.text
        return [t["code"] for t in r.json()["items"]]

    assert await codes() == ["BL-LD", "HL-TT01", "VD-TSD"]
    assert await codes(unit="QN-VANDON") == ["VD-TSD"]
    assert await codes(unit="QN") == ["BL-LD", "HL-TT01", "VD-TSD"]
    assert await codes(kind="mobile") == ["BL-LD"]
    assert await codes(campaign_code="PEAK90") == ["VD-TSD"]

    # Three join BL-LD and one of them leaves it again: two current members move with the team.
    members = []
    for name in ("Hoàng Văn Tuấn", "Nông Thị Lụa", "Đàm Văn Khánh"):
        body = volunteer_body("QN-BINHLIEU", full_name=name)
        members.append((await client.post("/v1/volunteers", json=body, headers=ADMIN)).json()["id"])
        r = await client.post(
            "/v1/teams/BL-LD/members", json={"volunteer_id": members[-1], "since": "2025-07-01"}, headers=ADMIN
        )
        assert r.status_code == 201, r.text
    ended = await client.delete(f"/v1/teams/BL-LD/members/{members[2]}", params={"until": "2025-07-10"}, headers=ADMIN)
    assert ended.status_code == 200
    events += 7

    r = await client.patch("/v1/teams/BL-LD", json={"kind": "literacy", "unit_code": "QN-HALONG"}, headers=ADMIN)
    assert r.status_code == 200
    assert r.json()["unit_path"] == ["QN", "QN-HALONG"]
    r = await client.post("/v1/teams/BL-LD:deactivate", headers=ADMIN)
    assert r.status_code == 200
    assert r.json()["active"] is False
    again = await client.post("/v1/teams/BL-LD:deactivate", headers=ADMIN)
    assert again.json()["active"] is False  # repeating it changes nothing and emits nothing
    events += 2
    # A membership ended after the team was deactivated says so: its member was no longer counted.
    late = await client.delete(f"/v1/teams/BL-LD/members/{members[1]}", params={"until": "2025-08-01"}, headers=ADMIN)
    assert late.status_code == 200
    events += 1
    assert await codes(active="false") == ["BL-LD"]
    assert await codes(active="true") == ["HL-TT01", "VD-TSD"]
    assert (await client.get("/v1/teams/BL-LD", headers=ADMIN)).json()["kind"] == "literacy"

    # rejected: nothing written
    assert_problem(await client.post("/v1/teams", json=team_body("HL-TT01"), headers=ADMIN), 409)
    assert_problem(await client.post("/v1/teams", json=team_body("X1", kind="fixed"), headers=ADMIN), 422)
    assert_problem(await client.post("/v1/teams", json=team_body("X1", unit_code="QN-NO"), headers=ADMIN), 422)
    body = assert_problem(
        await client.post("/v1/teams", json=team_body("X1", campaign_code="NOPE"), headers=ADMIN), 422, says="NOPE"
    )
    assert body["type"].endswith("unknown-campaign")
    assert_problem(await client.patch("/v1/teams/HL-TT01", json={"campaign_code": "NOPE"}, headers=ADMIN), 422)
    assert_problem(await client.patch("/v1/teams/HL-TT01", json={"kind": None}, headers=ADMIN), 422)
    assert_problem(await client.patch("/v1/teams/HL-TT01", json={"colour": "đỏ"}, headers=ADMIN), 422)
    assert_problem(await client.post("/v1/teams/NOPE:deactivate", headers=ADMIN), 404)
    assert await codes() == ["BL-LD", "HL-TT01", "VD-TSD"]

    got = await registry_events(settings, count=events)
    assert len(got) == events
    teams = {(e.envelope.type, e.envelope.key): e for e in got if ".team." in e.envelope.type}
    assert set(teams) == {
        (ev.TEAM_CREATED, "HL-TT01"),
        (ev.TEAM_CREATED, "VD-TSD"),
        (ev.TEAM_CREATED, "BL-LD"),
        (ev.TEAM_UPDATED, "BL-LD"),
        (ev.TEAM_DEACTIVATED, "BL-LD"),
    }
    for (kind, key), received in teams.items():
        assert_cloudevent(received, kind, key)
    assert teams[(ev.TEAM_CREATED, "VD-TSD")].envelope.data["campaign_code"] == "PEAK90"
    updated = teams[(ev.TEAM_UPDATED, "BL-LD")].envelope.data
    assert (updated["kind"], updated["previous_kind"]) == ("literacy", "mobile")
    assert updated["previous_unit_path"] == ["QN", "QN-BINHLIEU"]
    assert updated["unit_path"] == ["QN", "QN-HALONG"]
    assert (updated["members"], updated["active"], updated["previous_active"]) == (2, True, True)
    assert teams[(ev.TEAM_DEACTIVATED, "BL-LD")].envelope.data == {
        "code": "BL-LD",
        "kind": "literacy",
        "unit_code": "QN-HALONG",
        "unit_path": ["QN", "QN-HALONG"],
        "members": 2,
    }
    # Each membership event carries the team as it was for that write: mobile at Bình Liêu while the
    # members joined, deactivated at Hạ Long when the late one ended.
    at_binh_lieu = ("mobile", ["QN", "QN-BINHLIEU"], True)
    facts = {
        (e.envelope.type, e.envelope.data["volunteer_id"]): tuple(
            e.envelope.data[k] for k in ("team_kind", "team_unit_path", "team_active")
        )
        for e in got
        if ".membership." in e.envelope.type
    }
    assert facts == {
        (ev.MEMBERSHIP_STARTED, members[0]): at_binh_lieu,
        (ev.MEMBERSHIP_STARTED, members[1]): at_binh_lieu,
        (ev.MEMBERSHIP_STARTED, members[2]): at_binh_lieu,
        (ev.MEMBERSHIP_ENDED, members[2]): at_binh_lieu,
        (ev.MEMBERSHIP_ENDED, members[1]): ("literacy", ["QN", "QN-HALONG"], False),
    }


async def test_volunteers_register_filter_paginate_update_and_reject_bad_input(client, settings) -> None:
    events = await seed_tree(client)
    decomposed = unicodedata.normalize("NFD", "Trần Văn Đức")
    r = await client.post("/v1/volunteers", json=volunteer_body(full_name=decomposed), headers=ADMIN)
    assert r.status_code == 201, r.text
    duc = r.json()
    assert uuid.UUID(duc["id"]).version == 4
    assert duc["full_name"] == unicodedata.normalize("NFC", "Trần Văn Đức")
    assert duc["unit_path"] == ["QN", "QN-HALONG"]
    assert duc["active"] is True
    assert duc["personal_data_masked"] is False
    ids = [duc["id"]]
    for unit, skills in (("QN-HALONG", ["teaching"]), ("QN-VANDON", ["it"]), ("QN-VANDON", ["media"])):
        body = volunteer_body(unit, full_name="Lê Thị Mai", skills=skills, phone=None, email=None)
        r = await client.post("/v1/volunteers", json=body, headers=ADMIN)
        assert r.status_code == 201
        ids.append(r.json()["id"])
    events += 4
    assert (await client.post("/v1/teams", json=team_body("HL-TT01"), headers=ADMIN)).status_code == 201
    r = await client.post(
        "/v1/teams/HL-TT01/members", json={"volunteer_id": ids[1], "since": "2025-07-01"}, headers=ADMIN
    )
    assert r.status_code == 201
    r = await client.post(
        "/v1/teams/HL-TT01/members", json={"volunteer_id": ids[0], "since": "2025-07-01"}, headers=ADMIN
    )
    assert r.status_code == 201
    events += 3

    async def listed(**params: object) -> list[str]:
        found, cursor = [], None
        while True:
            query = {"limit": 1, **params, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/v1/volunteers", params=query, headers=ADMIN)).json()
            found += [v["id"] for v in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    assert await listed() == sorted(ids)
    assert await listed(unit="QN-VANDON") == sorted(ids[2:])
    assert await listed(skill="it") == sorted([ids[0], ids[2]])
    assert await listed(team="HL-TT01") == sorted(ids[:2])
    assert await listed(team="HL-TT01", unit="QN-VANDON") == []
    assert_problem(await client.get("/v1/volunteers", params={"skill": "cooking"}, headers=ADMIN), 422)
    assert_problem(await client.get("/v1/volunteers", params={"cursor": "%%%"}, headers=ADMIN), 422)

    r = await client.patch(
        f"/v1/volunteers/{ids[0]}",
        json={"skills": ["it", "teaching"], "roles": ["union_member", "lecturer"], "unit_code": "QN-VANDON"},
        headers=ADMIN,
    )
    assert r.status_code == 200
    assert r.json()["skills"] == ["it", "teaching"]
    assert r.json()["unit_path"] == ["QN", "QN-VANDON"]
    events += 1

    latest = this_year() - 10
    bad = [
        volunteer_body(birth_year=1929),
        volunteer_body(birth_year=latest + 1),
        volunteer_body(roles=["chairman"]),
        volunteer_body(skills=["cooking"]),
        volunteer_body(roles=[]),
        volunteer_body(unit_code="QN-NOWHERE"),
        volunteer_body(email="not-an-email"),
        volunteer_body(full_name=""),
        {k: v for k, v in volunteer_body().items() if k != "birth_year"},
    ]
    for body in bad:
        assert_problem(await client.post("/v1/volunteers", json=body, headers=ADMIN), 422)
    assert (
        await client.post("/v1/volunteers", json=volunteer_body(birth_year=latest), headers=ADMIN)
    ).status_code == 201
    events += 1
    problem = assert_problem(
        await client.post("/v1/volunteers", json=volunteer_body(birth_year=1929), headers=ADMIN), 422
    )
    assert problem["errors"][0]["field"] == "birth_year"
    assert_problem(await client.patch(f"/v1/volunteers/{ids[0]}", json={"birth_year": 1900}, headers=ADMIN), 422)
    assert_problem(await client.get(f"/v1/volunteers/{uuid.uuid4()}", headers=ADMIN), 404)
    assert len(await listed()) == 5

    got = await registry_events(settings, count=events)
    assert len(got) == events
    registered = [e for e in got if e.envelope.type == ev.VOLUNTEER_REGISTERED_V2]
    assert len(registered) == 5
    first = next(e for e in registered if e.envelope.key == ids[0])
    assert_cloudevent(first, ev.VOLUNTEER_REGISTERED_V2, ids[0])
    assert first.envelope.data == {
        "volunteer_id": ids[0],
        "unit_code": "QN-HALONG",
        "unit_path": ["QN", "QN-HALONG"],
        "roles": ["union_member", "student"],
        "skills": ["it", "vneid"],
        # Born in 2001: the band of the year it was registered (contract v2 carries no birth year).
        "age_band": "16_30" if this_year() - 2001 <= 30 else "31_45",
    }
    [update] = [e for e in got if e.envelope.type == ev.VOLUNTEER_UPDATED_V2]
    assert_cloudevent(update, ev.VOLUNTEER_UPDATED_V2, ids[0])
    assert update.envelope.data["previous_unit_path"] == ["QN", "QN-HALONG"]
    assert update.envelope.data["unit_path"] == ["QN", "QN-VANDON"]
    assert update.envelope.data["skills"] == ["it", "teaching"]
    assert update.envelope.data["previous_skills"] == ["it", "vneid"]
    assert update.envelope.data["roles"] == ["union_member", "lecturer"]
    assert update.envelope.data["previous_roles"] == ["union_member", "student"]


async def test_memberships_start_end_restart_and_leaving_ends_them_with_history_kept(client, settings) -> None:
    events = await seed_tree(client)
    for code in ("HL-TT01", "HL-LD02"):
        assert (await client.post("/v1/teams", json=team_body(code), headers=ADMIN)).status_code == 201
    huong = (await client.post("/v1/volunteers", json=volunteer_body(), headers=ADMIN)).json()["id"]
    mai = (await client.post("/v1/volunteers", json=volunteer_body(full_name="Lê Thị Mai"), headers=ADMIN)).json()["id"]
    events += 4

    async def join(team: str, volunteer: str, since: str) -> object:
        return await client.post(
            f"/v1/teams/{team}/members", json={"volunteer_id": volunteer, "since": since}, headers=ADMIN
        )

    r = await join("HL-TT01", huong, "2025-07-01")
    assert r.status_code == 201
    assert r.json() == {
        "team_code": "HL-TT01",
        "volunteer_id": huong,
        "active": True,
        "since": "2025-07-01",
        "until": None,
        "periods": [{"since": "2025-07-01", "until": None}],
    }
    assert (await join("HL-LD02", huong, "2025-07-05")).status_code == 201  # several teams at once
    assert (await join("HL-TT01", mai, "2025-07-02")).status_code == 201
    events += 3
    # The team becomes a mobile team at Vân Đồn; its later membership events describe it so.
    r = await client.patch("/v1/teams/HL-TT01", json={"kind": "mobile", "unit_code": "QN-VANDON"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    events += 1
    assert_problem(await join("HL-TT01", huong, "2025-07-03"), 409, says="already")
    assert_problem(await join("HL-TT01", str(uuid.uuid4()), "2025-07-03"), 422)
    assert_problem(await join("NOPE", huong, "2025-07-03"), 404)

    r = await client.delete(f"/v1/teams/HL-TT01/members/{huong}", params={"until": "2025-07-20"}, headers=ADMIN)
    assert r.status_code == 200
    assert (r.json()["active"], r.json()["until"]) == (False, "2025-07-20")
    events += 1
    assert_problem(await client.delete(f"/v1/teams/HL-TT01/members/{huong}", headers=ADMIN), 404)
    assert_problem(
        await client.delete(f"/v1/teams/HL-TT01/members/{mai}", params={"until": "2025-06-01"}, headers=ADMIN), 422
    )
    current = (await client.get("/v1/teams/HL-TT01/members", headers=ADMIN)).json()["items"]
    assert [m["volunteer_id"] for m in current] == [mai]
    history = (await client.get("/v1/teams/HL-TT01/members", params={"include_ended": "true"}, headers=ADMIN)).json()
    assert sorted(m["volunteer_id"] for m in history["items"]) == sorted([huong, mai])

    assert_problem(await join("HL-TT01", huong, "2025-07-10"), 422, says="2025-07-20")
    r = await join("HL-TT01", huong, "2025-08-01")
    assert r.status_code == 201
    assert r.json()["periods"] == [
        {"since": "2025-07-01", "until": "2025-07-20"},
        {"since": "2025-08-01", "until": None},
    ]
    events += 1

    # Leaving ends every current membership; a volunteer who left cannot join again.
    r = await client.post(f"/v1/volunteers/{huong}:leave", json={"left_on": "2025-08-15"}, headers=ADMIN)
    assert r.status_code == 200
    assert (r.json()["active"], r.json()["left_on"]) == (False, "2025-08-15")
    again = await client.post(f"/v1/volunteers/{huong}:leave", headers=ADMIN)
    assert again.json()["left_on"] == "2025-08-15"
    events += 3  # VolunteerLeft + two MembershipEnded
    assert_problem(await join("HL-LD02", huong, "2025-08-20"), 409, says="left")
    assert [
        m["volunteer_id"] for m in (await client.get("/v1/teams/HL-LD02/members", headers=ADMIN)).json()["items"]
    ] == []
    left = (await client.get("/v1/volunteers", params={"active": "false"}, headers=ADMIN)).json()["items"]
    assert [v["id"] for v in left] == [huong]

    assert (await client.post("/v1/teams/HL-LD02:deactivate", headers=ADMIN)).status_code == 200
    events += 1
    assert_problem(await join("HL-LD02", mai, "2025-08-20"), 409, says="deactivated")

    got = await registry_events(settings, count=events)
    assert len(got) == events
    memberships = [e for e in got if ".membership." in e.envelope.type]
    assert Counter((e.envelope.type, e.envelope.key) for e in memberships) == Counter(
        {
            (ev.MEMBERSHIP_STARTED, f"HL-TT01/{huong}"): 2,
            (ev.MEMBERSHIP_ENDED, f"HL-TT01/{huong}"): 2,
            (ev.MEMBERSHIP_STARTED, f"HL-LD02/{huong}"): 1,
            (ev.MEMBERSHIP_ENDED, f"HL-LD02/{huong}"): 1,
            (ev.MEMBERSHIP_STARTED, f"HL-TT01/{mai}"): 1,
        }
    )
    for e in memberships:
        assert_cloudevent(e, e.envelope.type, e.envelope.key)
    # One aggregate's events share a partition, so their order is kept.
    tt01 = [e.envelope.data for e in memberships if e.envelope.key == f"HL-TT01/{huong}"]
    before = {"team_kind": "permanent", "team_unit_path": ["QN", "QN-HALONG"], "team_active": True}
    after = {"team_kind": "mobile", "team_unit_path": ["QN", "QN-VANDON"], "team_active": True}
    assert tt01 == [
        {"team_code": "HL-TT01", "volunteer_id": huong, "since": "2025-07-01", **before},
        {"team_code": "HL-TT01", "volunteer_id": huong, "until": "2025-07-20", **after},
        {"team_code": "HL-TT01", "volunteer_id": huong, "since": "2025-08-01", **after},
        {"team_code": "HL-TT01", "volunteer_id": huong, "until": "2025-08-15", **after},
    ]
    # Leaving ended the membership of HL-LD02 too, which stayed a permanent team at Hạ Long.
    ld02 = [e.envelope.data for e in memberships if e.envelope.key == f"HL-LD02/{huong}"]
    assert [d.get("until") for d in ld02] == [None, "2025-08-15"]
    assert all({k: d[k] for k in before} == before for d in ld02)
    [team_update] = [e.envelope.data for e in got if e.envelope.type == ev.TEAM_UPDATED]
    assert (team_update["members"], team_update["previous_kind"], team_update["kind"]) == (2, "permanent", "mobile")
    [deactivated] = [e.envelope.data for e in got if e.envelope.type == ev.TEAM_DEACTIVATED]
    assert (deactivated["code"], deactivated["members"]) == ("HL-LD02", 0)
    [left_event] = [e for e in got if e.envelope.type == ev.VOLUNTEER_LEFT]
    assert left_event.envelope.data == {
        "volunteer_id": huong,
        "unit_code": "QN-HALONG",
        "unit_path": ["QN", "QN-HALONG"],
        "roles": ["union_member", "student"],
        "skills": ["it", "vneid"],
    }
