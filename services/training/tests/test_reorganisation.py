"""Courses in units that were merged, split or closed: old codes resolve, closed units take no new courses."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from pydantic import BaseModel

from shared.contracts import registry as reg
from shared.contracts import training as ev
from shared.testing import token, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.asyncio(loop_scope="module")]

ADMIN = token("admin")
HL = ["QN", "QN-HL"]
CL = ["QN", "QN-CL"]
THCS = ["QN", "QN-HL", "QN-HL-THCS"]
TH2 = ["QN", "QN-HL", "QN-HL-TH2"]
CT = ["QN", "QN-CT"]
ON = date(2025, 7, 1)


def course(code: str, team_code: str, unit_code: str) -> dict[str, Any]:
    return {
        "client_ref": f"ref-{code}",
        "code": code,
        "title": "Bình dân học vụ số: dịch vụ công trực tuyến",
        "team_code": team_code,
        "unit_code": unit_code,
        "audience": "general",
        "mode": "in_person",
        "topics": ["online_public_services"],
        "starts_on": "2025-07-01",
        "ends_on": "2025-07-31",
    }


def team_moved(code: str, unit_path: list[str], previous: list[str]) -> tuple[str, BaseModel, str]:
    payload = reg.TeamUpdated(
        code=code,
        name="Đội hình Bình dân học vụ số Xã Cẩm La",
        kind="literacy",
        unit_code=unit_path[-1],
        unit_path=unit_path,
        active=True,
        previous_kind="literacy",
        previous_unit_path=previous,
    )
    return reg.TEAM_UPDATED, payload, code


def merged(code: str, successor_path: list[str]) -> tuple[str, BaseModel, str]:
    payload = reg.UnitMerged(code=code, successor_code=successor_path[-1], successor_path=successor_path, merged_on=ON)
    return reg.UNIT_MERGED, payload, code


def closed(code: str, path: list[str], reason: str) -> tuple[str, BaseModel, str]:
    return reg.UNIT_CLOSED, reg.UnitClosed(code=code, path=path, reason=reason, closed_on=ON), code


async def statuses(training: Any, expected: dict[str, str | None]) -> None:
    """Wait until the read model holds each unit with the given ``status`` (None: active)."""

    async def applied() -> bool:
        for code, status in expected.items():
            doc = await training.view_db["rm_units"].find_one({"_id": code})
            if doc is None or doc.get("status") != status:
                return False
        return True

    await wait_until(applied, timeout=30)


async def test_a_course_in_a_merged_units_old_code_is_scheduled_in_its_successor(training, registry_events) -> None:
    # Xã Cẩm La's literacy team moved to Phường Hạ Long, then the commune was merged into it.
    await training.registry(
        registry_events.unit("QN-CL", "Xã Cẩm La", "commune", CL),
        registry_events.team("LIT-CL", "literacy", CL, "Đội hình Bình dân học vụ số Xã Cẩm La"),
    )
    await statuses(training, {"QN-CL": None})
    await training.registry(team_moved("LIT-CL", HL, CL), merged("QN-CL", HL))
    await statuses(training, {"QN-CL": "merged"})
    known = (await training.client.get("/v1/units/QN-CL", headers=ADMIN)).json()
    assert (known["status"], known["takes_records_as"], known["path"]) == ("merged", "QN-HL", HL)

    tablet = token("field", "QN-CL", teams=["LIT-CL"])
    r = await training.client.post("/v1/courses", json=course("CL-DVC-01", "LIT-CL", "QN-CL"), headers=tablet)
    assert r.status_code == 201, r.text
    got = r.json()
    assert (got["status"], got["unit_code"], got["unit_path"], got["resolved_from"]) == (
        "scheduled",
        "QN-HL",
        HL,
        "QN-CL",
    )
    again = await training.client.post("/v1/courses", json=course("CL-DVC-01", "LIT-CL", "QN-CL"), headers=tablet)
    assert again.status_code == 200
    assert again.json()["resolved_from"] == "QN-CL"

    (scheduled,) = await training.events("CL-DVC-01", 1)
    assert scheduled.envelope.type == ev.COURSE_SCHEDULED
    ref = scheduled.envelope.data["course"]
    assert (ref["unit_code"], ref["unit_path"]) == ("QN-HL", HL)

    listed = await training.client.get("/v1/courses", params={"unit": "QN-HL"}, headers=ADMIN)
    assert "CL-DVC-01" in [c["code"] for c in listed.json()["items"]]


async def test_a_closed_or_split_unit_refuses_new_courses_with_a_unit_closed_problem(training, registry_events) -> None:
    split = reg.UnitSplit(code="QN-CT", successors=["QN-CT-DT", "QN-CT-TL"], teams=[], split_on=ON)
    await training.registry(
        registry_events.unit("QN-HL-THCS", "Trường THCS Hạ Long 3", "school", THCS),
        registry_events.unit("QN-CT", "Huyện Cô Tô", "commune", CT),
    )
    await statuses(training, {"QN-HL-THCS": None, "QN-CT": None})
    await training.registry(
        closed("QN-HL-THCS", THCS, "Sáp nhập vào Trường THCS Hạ Long 1"), (reg.UNIT_SPLIT, split, "QN-CT")
    )
    await statuses(training, {"QN-HL-THCS": "closed", "QN-CT": "closed"})

    r = await training.client.post("/v1/courses", json=course("THCS-01", "LIT-HL", "QN-HL-THCS"), headers=ADMIN)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("/unit-closed")
    assert "QN-HL-THCS was closed" in r.json()["detail"]
    assert "Sáp nhập vào Trường THCS Hạ Long 1" in r.json()["detail"]

    r = await training.client.post("/v1/courses", json=course("CT-01", "LIT-HL", "QN-CT"), headers=ADMIN)
    assert r.status_code == 409, r.text
    assert r.json()["type"].endswith("/unit-closed")
    assert "split on 2025-07-01 into QN-CT-DT, QN-CT-TL" in r.json()["detail"]
    assert await training.course_doc("THCS-01") is None
    assert await training.course_doc("CT-01") is None


async def test_a_course_whose_unit_closes_keeps_its_sessions_enrolments_and_completion(
    training, registry_events
) -> None:
    c = training.client
    await training.registry(registry_events.unit("QN-HL-TH2", "Trường Tiểu học Hạ Long 2", "school", TH2))
    await statuses(training, {"QN-HL-TH2": None})
    r = await c.post("/v1/courses", json=course("TH2-01", "LIT-HL", "QN-HL-TH2"), headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "scheduled"

    await training.registry(closed("QN-HL-TH2", TH2, "Giải thể theo quyết định của UBND tỉnh"))
    await statuses(training, {"QN-HL-TH2": "closed"})

    r = await c.post(
        "/v1/courses/TH2-01/participants",
        json={"client_ref": "TH2-01/p1", "display_name": "Phạm Thị Lan", "group": "elderly"},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    session = {"client_ref": "TH2-01/s1", "held_on": "2025-07-03", "duration_minutes": 90, "attendance": {"count": 1}}
    r = await c.post("/v1/courses/TH2-01/sessions", json=session, headers=ADMIN)
    assert r.status_code == 201, r.text
    r = await c.post(f"/v1/courses/TH2-01/participants/{pid}:complete", headers=ADMIN)
    assert r.status_code == 200, r.text
    r = await c.post("/v1/courses/TH2-01:complete", json={}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["participants"], r.json()["completions"]) == ("completed", 1, 1)
    assert r.json()["unit_path"] == TH2  # history stays where it happened


async def test_a_pending_course_is_scheduled_in_the_successor_once_the_merge_is_heard(
    training, registry_events
) -> None:
    # The device names a commune and a team this read model has not heard of yet.
    r = await training.client.post("/v1/courses", json=course("DH-01", "LIT-DH", "QN-DH"), headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "pending"

    moi = ["QN", "QN-DH-MOI"]
    await training.registry(
        registry_events.unit("QN-DH", "Xã Đầm Hà", "commune", ["QN", "QN-DH"]),
        merged("QN-DH", moi),
        registry_events.team("LIT-DH", "literacy", moi, "Đội hình Bình dân học vụ số Xã Đầm Hà"),
    )
    await statuses(training, {"QN-DH": "merged"})

    async def waits_for_successor() -> bool:
        doc = await training.course_doc("DH-01")
        return doc is not None and "QN-DH-MOI" in (doc.get("problem") or "")

    await wait_until(waits_for_successor, timeout=30)
    doc = await training.course_doc("DH-01")
    assert doc["status"] == "pending"
    assert doc["problem"] == "unit QN-DH-MOI, which unit QN-DH was merged into, is not known to the registry yet"

    await training.registry(registry_events.unit("QN-DH-MOI", "Xã Đầm Hà mới", "commune", moi))

    async def scheduled() -> bool:
        doc = await training.course_doc("DH-01")
        return doc is not None and doc["status"] == "scheduled"

    await wait_until(scheduled, timeout=30)
    got = (await training.client.get("/v1/courses/DH-01", headers=ADMIN)).json()
    assert (got["unit_code"], got["unit_path"], got["resolved_from"]) == ("QN-DH-MOI", moi, "QN-DH")
    (event,) = await training.events("DH-01", 1)
    assert event.envelope.data["course"]["unit_path"] == moi


async def test_the_successors_office_reads_lists_and_manages_a_merged_units_earlier_courses(
    training, registry_events
) -> None:
    qy = ["QN", "QN-QY"]
    await training.registry(
        registry_events.unit("QN-QY", "Xã Quảng Yên", "commune", qy),
        registry_events.team("LIT-QY", "literacy", qy, "Đội hình Bình dân học vụ số Xã Quảng Yên"),
    )
    await statuses(training, {"QN-QY": None})
    r = await training.client.post("/v1/courses", json=course("QY-DVC-01", "LIT-QY", "QN-QY"), headers=ADMIN)
    assert (r.status_code, r.json()["unit_path"]) == (201, qy), r.text
    halong = token("manager", "QN-HL", sub="manager-hl")
    coto = token("manager", "QN-CT", sub="manager-ct")
    assert (await training.client.get("/v1/courses/QY-DVC-01", headers=halong)).status_code == 403  # not merged yet

    await training.registry(team_moved("LIT-QY", HL, qy), merged("QN-QY", HL))
    await statuses(training, {"QN-QY": "merged"})

    got = await training.client.get("/v1/courses/QY-DVC-01", headers=halong)
    assert (got.status_code, got.json()["unit_path"]) == (200, qy)  # its history keeps the old path
    listed = await training.client.get("/v1/courses", headers=halong)
    assert "QY-DVC-01" in [c["code"] for c in listed.json()["items"]]
    audience = await training.client.get("/v1/courses", params={"audience": "general"}, headers=halong)
    assert "QY-DVC-01" in [c["code"] for c in audience.json()["items"]]
    elsewhere = await training.client.get("/v1/courses", headers=coto)
    assert "QY-DVC-01" not in [c["code"] for c in elsewhere.json()["items"]]
    assert (await training.client.get("/v1/courses/QY-DVC-01", headers=coto)).status_code == 403

    cancelled = await training.client.post(
        "/v1/courses/QY-DVC-01:cancel", json={"reason": "Sáp nhập vào Phường Hạ Long"}, headers=halong
    )
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled"), cancelled.text
