"""Record rules that need no infrastructure: input validation and the reference verdicts."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from shared.auth import Principal, Role
from shared.registry_view import ResolvedUnit
from visits.repository import RegistryFacts
from visits.schemas import VisitIn, local_today
from visits.service import Refs, judge

from .factories import HL, QL, VD, visit_body

ADMIN = Principal(sub="admin", role=Role.admin)


def known(code: str, path: list[str], **how_it_ended: Any) -> ResolvedUnit:
    return ResolvedUnit({"code": code, "path": path, **how_it_ended}, None)


def facts() -> RegistryFacts:
    return RegistryFacts(
        teams={
            "VD-MOBILE": {"_id": "VD-MOBILE", "unit_code": "QN-VD", "unit_path": VD, "active": True},
            "VD-OLD": {"_id": "VD-OLD", "unit_code": "QN-VD", "unit_path": VD, "active": False},
        },
        units={"QN-VD-QL": known("QN-VD-QL", QL), "QN-HL": known("QN-HL", HL)},
        memberships={
            ("VD-MOBILE", "vol-huong"): True,
            ("VD-MOBILE", "vol-ended"): False,
            ("VD-MOBILE", "vol-left"): True,
        },
        volunteers={"vol-huong": True, "vol-ended": True, "vol-left": False, "vol-new": True},
    )


def refs(team: str = "VD-MOBILE", unit: str = "QN-VD", vols: tuple[str, ...] = (), who: Principal = ADMIN) -> Refs:
    return Refs(team, unit, vols, who)


def test_household_visit_defaults_to_one_household_and_a_centre_to_none() -> None:
    assert VisitIn.model_validate(visit_body(households=None)).households == 1
    centre = visit_body(setting="service_centre", household_ref=None)
    del centre["households"]
    assert VisitIn.model_validate(centre).households == 0


def test_today_in_ho_chi_minh_is_accepted_and_tomorrow_is_not() -> None:
    assert VisitIn.model_validate(visit_body(visited_on=local_today().isoformat())).visited_on == local_today()
    with pytest.raises(ValidationError, match="in the future"):
        VisitIn.model_validate(visit_body(visited_on=(local_today() + timedelta(days=1)).isoformat()))


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"people": {"total": 2, "women": 3}}, "people"),
        ({"people": {"total": 2, "veterans": -1}}, "people.veterans"),
        ({"services": {"online_applications_l4": -2}}, "services.online_applications_l4"),
        ({"setting": "service_centre"}, "household_ref"),
        ({"area": "desert"}, "area"),
        ({"client_ref": "abc"}, "client_ref"),
        ({"notes": "ư" * 501}, "notes"),
        ({"citizen_name": "Nguyễn Văn An"}, "citizen_name"),
    ],
)
def test_bad_records_name_the_offending_field(override: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        VisitIn.model_validate(visit_body(**override))
    text = str(exc.value)
    assert field.split(".")[0] in text


def test_notes_are_stored_in_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "Đặc khu Vân Đồn")
    visit = VisitIn.model_validate(visit_body(notes=decomposed, client_ref=str(uuid.uuid4())))
    assert visit.notes == "Đặc khu Vân Đồn"


def test_a_record_of_known_members_below_the_team_unit_is_accepted() -> None:
    verdict = judge(refs(unit="QN-VD-QL", vols=("vol-huong",)), facts())
    assert verdict.outcome == "accepted"
    assert verdict.unit_path == QL


@pytest.mark.parametrize(
    ("r", "message"),
    [
        (refs(team="VD-OLD"), "team VD-OLD is not active"),
        (refs(unit="QN-HL"), "unit QN-HL is not team VD-MOBILE's unit (QN-VD) or below it"),
        (refs(vols=("vol-left",)), "volunteer vol-left has left"),
        (refs(vols=("vol-ended",)), "volunteer vol-ended is no longer a member of team VD-MOBILE"),
    ],
)
def test_known_bad_references_are_rejected(r: Refs, message: str) -> None:
    verdict = judge(r, facts())
    assert verdict.outcome == "rejected"
    assert verdict.problem is not None
    assert verdict.problem.status == 422
    assert message in verdict.problem.detail


@pytest.mark.parametrize(
    ("r", "waiting"),
    [
        (refs(team="VD-NEW"), "team VD-NEW"),
        (refs(unit="QN-VD-XYZ"), "unit QN-VD-XYZ"),
        (refs(vols=("vol-new",)), "membership of volunteer vol-new in team VD-MOBILE"),
        (refs(vols=("vol-unknown",)), "membership of volunteer vol-unknown in team VD-MOBILE"),
    ],
)
def test_references_not_known_yet_make_a_record_pending(r: Refs, waiting: str) -> None:
    verdict = judge(r, facts())
    assert verdict.outcome == "pending"
    assert waiting in verdict.waiting_for


def test_a_definite_problem_wins_over_an_unknown_reference() -> None:
    assert judge(refs(vols=("vol-left", "vol-unknown")), facts()).outcome == "rejected"


def test_scope_decides_for_managers_and_field_users() -> None:
    hl_manager = Principal(sub="m", role=Role.manager, unit="QN-HL")
    vd_manager = Principal(sub="m", role=Role.manager, unit="QN-VD")
    stranger = Principal(sub="vol-other", role=Role.field, teams=["HL-PERM"])
    member = Principal(sub="vol-huong", role=Role.field)
    assert judge(refs(who=vd_manager), facts()).outcome == "accepted"
    denied = judge(refs(who=hl_manager), facts())
    assert denied.problem is not None
    assert denied.problem.status == 403
    assert judge(refs(who=stranger), facts()).outcome == "rejected"
    assert judge(refs(who=member), facts()).outcome == "accepted"
    # A manager cannot be placed until the unit is known: hold it rather than guess.
    assert judge(refs(team="VD-NEW", unit="QN-NEW", who=hl_manager), facts()).outcome == "pending"


def test_a_merged_code_is_judged_as_its_successor_even_before_the_team_moved_there() -> None:
    # Xã Cẩm La was merged into Phường Hạ Long; the team's move has not reached this read model yet.
    reorganised = facts()
    reorganised.teams["CL-MOBILE"] = {"_id": "CL-MOBILE", "unit_code": "QN-CL", "unit_path": ["QN", "QN-CL"]}
    reorganised.units["QN-CL"] = ResolvedUnit({"code": "QN-HL", "path": HL}, "QN-CL")
    verdict = judge(refs(team="CL-MOBILE", unit="QN-CL"), reorganised)
    assert (verdict.outcome, verdict.unit_code, verdict.unit_path, verdict.resolved_from) == (
        "accepted",
        "QN-HL",
        HL,
        "QN-CL",
    )
    # The team now at Phường Hạ Long covers the old code too.
    reorganised.teams["CL-MOBILE"] = {"_id": "CL-MOBILE", "unit_code": "QN-HL", "unit_path": HL}
    assert judge(refs(team="CL-MOBILE", unit="QN-CL"), reorganised).outcome == "accepted"
    # ...but not a unit outside it.
    outside = judge(refs(team="CL-MOBILE", unit="QN-VD-QL"), reorganised)
    assert outside.problem is not None
    assert outside.problem.status == 422


def test_a_closed_unit_is_refused_and_an_unknown_successor_keeps_the_record_waiting_for_it() -> None:
    reorganised = facts()
    reorganised.units["QN-VD-QL"] = known(
        "QN-VD-QL", QL, status="closed", closed_on="2025-07-01", close_reason="Sáp nhập vào Đặc khu Vân Đồn"
    )
    closed = judge(refs(unit="QN-VD-QL"), reorganised)
    assert closed.outcome == "rejected"
    assert closed.problem is not None
    assert (closed.problem.status, closed.problem.slug) == (409, "unit-closed")
    assert "unit QN-VD-QL was closed on 2025-07-01: Sáp nhập vào Đặc khu Vân Đồn" in closed.problem.detail

    reorganised.units["QN-VD"] = known("QN-VD", VD, status="merged", successor_code="QN-VD-MOI")
    waiting = judge(refs(), reorganised)
    assert waiting.outcome == "pending"
    assert waiting.wait_keys == ["unit:QN-VD-MOI"]
