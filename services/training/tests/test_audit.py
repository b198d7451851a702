"""The training audit trail: courses scheduled, completed and cancelled, enrolments and sessions, in scope."""

from __future__ import annotations

from typing import Any

import pytest

from shared.testing import token

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.asyncio(loop_scope="module")]

ADMIN = token("admin", sub="admin")
FIELD_HL = token("field", "QN-HL", teams=["LIT-HL"], sub="vol-huong")
HALONG_MANAGER = token("manager", "QN-HL", sub="manager-halong")
VANDON_MANAGER = token("manager", "QN-VD", sub="manager-vandon")


def course(code: str) -> dict[str, Any]:
    return {
        "client_ref": f"ref-{code}",
        "code": code,
        "title": "Bình dân học vụ số: dịch vụ công trực tuyến cho người cao tuổi",
        "team_code": "LIT-HL",
        "unit_code": "QN-HL",
        "audience": "elderly_middle_aged",
        "mode": "in_person",
        "topics": ["vneid", "online_public_services"],
        "starts_on": "2025-07-01",
        "ends_on": "2025-07-31",
    }


async def audit(training: Any, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = await training.client.get("/v1/audit", params=params, headers=headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_a_completion_shows_the_figures_before_and_after_to_managers_of_its_unit_only(training) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("AU-DONE"), headers=FIELD_HL)).status_code == 201
    s = {"client_ref": "AU-DONE/s1", "held_on": "2025-07-05", "duration_minutes": 90, "attendance": {"count": 12}}
    for _ in range(2):  # a re-sent session is one session
        assert (await c.post("/v1/courses/AU-DONE/sessions", json=s, headers=FIELD_HL)).status_code in (200, 201)
    final = {"final_participants": 15, "final_completions": 10}
    for _ in range(2):  # completing twice is one completion
        r = await c.post("/v1/courses/AU-DONE:complete", json=final, headers=HALONG_MANAGER)
        assert r.status_code == 200, r.text

    course_entries = await audit(training, HALONG_MANAGER, entity_id="AU-DONE")
    assert [e["action"] for e in course_entries] == ["course.scheduled", "course.completed"]
    scheduled, completed = course_entries
    assert scheduled["actor"] == {"sub": "vol-huong", "role": "field"}
    assert scheduled["after"]["status"] == "scheduled"
    assert scheduled["unit_path"] == ["QN", "QN-HL"]
    assert completed["actor"] == {"sub": "manager-halong", "role": "manager"}
    assert completed["before"] == {"status": "running", "participants_counted": 12, "completions_counted": 0}
    assert completed["after"] == {
        "status": "completed",
        "participants_counted": 15,
        "completions_counted": 10,
        "final_participants": 15,
        "final_completions": 10,
    }
    sessions = await audit(training, HALONG_MANAGER, entity="session", actor="vol-huong")
    mine = [e for e in sessions if e["after"]["course_code"] == "AU-DONE"]
    assert len(mine) == 1
    assert mine[0]["after"]["attendance"] == 12

    assert await audit(training, VANDON_MANAGER, entity_id="AU-DONE") == []
    # The field user reads their own changes, not the manager's completion.
    assert [e["action"] for e in await audit(training, FIELD_HL, entity_id="AU-DONE")] == ["course.scheduled"]


async def test_a_cancellation_is_audited_once_with_its_reason_and_enrolments_without_names(training) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("AU-CANCEL"), headers=ADMIN)).status_code == 201
    p = {"client_ref": "AU-CANCEL/p1", "display_name": "Nguyễn Thị Hương", "birth_year": 1956, "group": "elderly"}
    r = await c.post("/v1/courses/AU-CANCEL/participants", json=p, headers=FIELD_HL)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    reason = "Bão số 3: hoãn lớp học"
    for _ in range(2):
        r = await c.post("/v1/courses/AU-CANCEL:cancel", json={"reason": reason}, headers=ADMIN)
        assert r.status_code == 200, r.text

    cancelled = await audit(training, ADMIN, entity_id="AU-CANCEL", action="course.cancelled")
    assert len(cancelled) == 1
    assert cancelled[0]["reason"] == reason
    assert cancelled[0]["before"]["participants_counted"] == 1
    assert cancelled[0]["after"] == {"status": "cancelled", "participants_counted": 0, "completions_counted": 0}
    enrolled = await audit(training, HALONG_MANAGER, entity_id=pid)
    assert [e["action"] for e in enrolled] == ["participant.enrolled"]
    assert enrolled[0]["after"] == {"course_code": "AU-CANCEL", "group": "elderly"}
    assert "Nguyễn Thị Hương" not in str(enrolled[0])
    assert (await c.get("/v1/audit", headers=token("integrator", "QN"))).status_code == 403


async def test_a_participant_marked_complete_is_audited_once_with_who_marked_it(training) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("AU-PART"), headers=FIELD_HL)).status_code == 201
    p = {"client_ref": "AU-PART/p1", "display_name": "Lê Thị Mai", "birth_year": 1957, "group": "elderly"}
    pid = (await c.post("/v1/courses/AU-PART/participants", json=p, headers=FIELD_HL)).json()["id"]
    for _ in range(2):  # marking twice is one completion
        r = await c.post(f"/v1/courses/AU-PART/participants/{pid}:complete", headers=HALONG_MANAGER)
        assert r.status_code == 200, r.text

    entries = await audit(training, HALONG_MANAGER, entity_id=pid)
    assert [e["action"] for e in entries] == ["participant.enrolled", "participant.completed"]
    completed = entries[1]
    assert completed["actor"] == {"sub": "manager-halong", "role": "manager"}
    assert (completed["before"], completed["after"]) == ({"status": "enrolled"}, {"status": "completed"})
    assert completed["unit_path"] == ["QN", "QN-HL"]
    assert await audit(training, VANDON_MANAGER, entity_id=pid) == []


async def test_a_completion_finished_by_a_later_request_keeps_who_marked_it(training, monkeypatch) -> None:
    c = training.client
    assert (await c.post("/v1/courses", json=course("AU-ROLL"), headers=FIELD_HL)).status_code == 201
    p = {"client_ref": "AU-ROLL/p1", "group": "elderly"}
    pid = (await c.post("/v1/courses/AU-ROLL/participants", json=p, headers=FIELD_HL)).json()["id"]
    repo = training.app.state.training._repo
    real_mark = repo.mark_child_applied

    async def crash(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("process died after the course write")

    monkeypatch.setattr(repo, "mark_child_applied", crash)
    with pytest.raises(ConnectionError):  # the in-process transport re-raises what would be a 500
        await c.post(f"/v1/courses/AU-ROLL/participants/{pid}:complete", headers=HALONG_MANAGER)
    monkeypatch.setattr(repo, "mark_child_applied", real_mark)
    assert await audit(training, ADMIN, entity_id=pid, action="participant.completed") == []

    # A later request by someone else finishes the step (roll-forward); the entry names who marked it.
    assert (await c.get("/v1/courses/AU-ROLL/participants", headers=ADMIN)).status_code == 200
    entries = await audit(training, ADMIN, entity_id=pid, action="participant.completed")
    assert [e["actor"] for e in entries] == [{"sub": "manager-halong", "role": "manager"}]
    r = await c.post(f"/v1/courses/AU-ROLL/participants/{pid}:complete", headers=HALONG_MANAGER)
    assert r.status_code == 200, r.text
    assert len(await audit(training, ADMIN, entity_id=pid, action="participant.completed")) == 1
