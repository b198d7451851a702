"""Test data: registry contract events (the only thing visits knows about the registry) and records."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Any

from shared.contracts import registry as ev
from shared.envelope import Envelope, make_event
from visits.schemas import local_today

QN = ["QN"]
VD = ["QN", "QN-VD"]
QL = ["QN", "QN-VD", "QN-VD-QL"]
HL = ["QN", "QN-HL"]


def unit(code: str, name: str, path: list[str], kind: str = "commune") -> Envelope:
    payload = ev.UnitCreated(
        code=code, name=name, kind=kind, parent_code=path[-2] if len(path) > 1 else None, path=path
    )
    return make_event(ev.UNIT_CREATED, payload, source="/registry", key=code)


def team(code: str, unit_path: list[str], kind: str = "mobile") -> Envelope:
    payload = ev.TeamCreated(code=code, name=f"Đội {code}", kind=kind, unit_code=unit_path[-1], unit_path=unit_path)
    return make_event(ev.TEAM_CREATED, payload, source="/registry", key=code)


def team_deactivated(code: str, unit_path: list[str]) -> Envelope:
    payload = ev.TeamDeactivated(code=code, kind="mobile", unit_code=unit_path[-1], unit_path=unit_path)
    return make_event(ev.TEAM_DEACTIVATED, payload, source="/registry", key=code)


def volunteer(vid: str, unit_path: list[str]) -> Envelope:
    payload = ev.VolunteerRegistered(
        volunteer_id=vid, unit_code=unit_path[-1], unit_path=unit_path, roles=["youth"], skills=["it"], birth_year=2001
    )
    return make_event(ev.VOLUNTEER_REGISTERED, payload, source="/registry", key=vid)


def volunteer_left(vid: str, unit_path: list[str]) -> Envelope:
    payload = ev.VolunteerLeft(volunteer_id=vid, unit_code=unit_path[-1], unit_path=unit_path)
    return make_event(ev.VOLUNTEER_LEFT, payload, source="/registry", key=vid)


def joined(team_code: str, vid: str) -> Envelope:
    payload = ev.MembershipStarted(team_code=team_code, volunteer_id=vid, since=date(2025, 7, 1))
    return make_event(ev.MEMBERSHIP_STARTED, payload, source="/registry", key=f"{team_code}/{vid}")


def membership_ended(team_code: str, vid: str) -> Envelope:
    payload = ev.MembershipEnded(team_code=team_code, volunteer_id=vid, until=date(2025, 8, 1))
    return make_event(ev.MEMBERSHIP_ENDED, payload, source="/registry", key=f"{team_code}/{vid}")


def team_moved(code: str, unit_path: list[str], previous_unit_path: list[str], kind: str = "mobile") -> Envelope:
    """The registry moving a team to another unit (as it does before merging the team's unit)."""
    payload = ev.TeamUpdated(
        code=code,
        name=f"Đội {code}",
        kind=kind,
        unit_code=unit_path[-1],
        unit_path=unit_path,
        active=True,
        previous_kind=kind,
        previous_unit_path=previous_unit_path,
    )
    return make_event(ev.TEAM_UPDATED, payload, source="/registry", key=code)


def unit_merged(code: str, successor_path: list[str]) -> Envelope:
    payload = ev.UnitMerged(
        code=code, successor_code=successor_path[-1], successor_path=successor_path, merged_on=date(2025, 7, 1)
    )
    return make_event(ev.UNIT_MERGED, payload, source="/registry", key=code)


def unit_split(code: str, successors: list[str]) -> Envelope:
    payload = ev.UnitSplit(code=code, successors=successors, teams=[], split_on=date(2025, 7, 1))
    return make_event(ev.UNIT_SPLIT, payload, source="/registry", key=code)


def unit_closed(code: str, path: list[str], reason: str) -> Envelope:
    payload = ev.UnitClosed(code=code, path=path, reason=reason, closed_on=date(2025, 7, 1))
    return make_event(ev.UNIT_CLOSED, payload, source="/registry", key=code)


def province_tree() -> list[Envelope]:
    """Quảng Ninh: Đặc khu Vân Đồn (with Xã Quan Lạn below it) and Phường Hạ Long; three teams."""
    return [
        unit("QN", "Tỉnh Quảng Ninh", QN, kind="province"),
        unit("QN-VD", "Đặc khu Vân Đồn", VD, kind="special_zone"),
        unit("QN-VD-QL", "Xã Quan Lạn", QL),
        unit("QN-HL", "Phường Hạ Long", HL, kind="ward"),
        team("VD-MOBILE", VD),
        team("HL-PERM", HL, kind="permanent"),
        team("VD-OLD", VD),
        team_deactivated("VD-OLD", VD),
        *[volunteer(v, VD) for v in ("vol-huong", "vol-binh", "vol-left", "vol-ended")],
        volunteer("vol-lan", HL),
        *[joined("VD-MOBILE", v) for v in ("vol-huong", "vol-binh", "vol-left", "vol-ended")],
        joined("HL-PERM", "vol-lan"),
        volunteer_left("vol-left", VD),
        membership_ended("VD-MOBILE", "vol-ended"),
    ]


def visit_body(**overrides: Any) -> dict[str, Any]:
    """A valid household visit by VD-MOBILE at Đặc khu Vân Đồn, a week ago."""
    body: dict[str, Any] = {
        "client_ref": str(uuid.uuid4()),
        "team_code": "VD-MOBILE",
        "unit_code": "QN-VD",
        "visited_on": (local_today() - timedelta(days=7)).isoformat(),
        "setting": "household",
        "area": "island",
        "household_ref": "hh-" + uuid.uuid4().hex[:8],
        "households": 1,
        "people": {"total": 3, "elderly": 2, "women": 2, "veterans": 1},
        "services": {"vneid_installed": 2, "vneid_activated": 1, "online_applications_l3": 1},
        "volunteer_ids": ["vol-huong", "vol-binh"],
        "notes": "Bà Nguyễn Thị Hương nhờ hướng dẫn thêm về dịch vụ công trực tuyến.",
    }
    body.update(overrides)
    return body


def post_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client_ref": str(uuid.uuid4()),
        "unit_code": "QN-HL",
        "team_code": "HL-PERM",
        "channel": "fanpage",
        "published_on": (local_today() - timedelta(days=2)).isoformat(),
        "title": "Phường Hạ Long: thanh niên hỗ trợ người cao tuổi cài đặt VNeID",
        "url": "https://facebook.com/doanphuonghalong/posts/1",
    }
    body.update(overrides)
    return body
