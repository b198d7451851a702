"""Contract-event builders for the metrics tests (the `ev` fixture) and a publisher."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import pytest

from shared.contracts import registry as reg
from shared.contracts import training as trn
from shared.contracts import visits as vis
from shared.contracts.common import Change
from shared.envelope import Envelope, make_event
from shared.kafka import EventProducer
from shared.settings import ServiceSettings
from shared.topics import EVENT_TOPICS

PROVINCE = ["QN"]
HALONG = ["QN", "QN-HALONG"]
VANDON = ["QN", "QN-VANDON"]
SCHOOL = ["QN", "QN-HALONG", "QN-HALONG-THPT"]
UNIT_NAMES = {
    "QN": ("Tỉnh Quảng Ninh", "province"),
    "QN-HALONG": ("Phường Hạ Long", "ward"),
    "QN-VANDON": ("Đặc khu Vân Đồn", "special_zone"),
    "QN-HALONG-THPT": ("Trường THPT Hòn Gai", "school"),
}


class Events:
    """Builds contract events as the producing services would publish them.

    The fields added for the report breakdowns (area, mode, roles and skills before, team facts,
    member counts) are filled as the current producers fill them; pass None for an older producer.
    """

    @staticmethod
    def unit(path: Sequence[str]) -> Envelope:
        code = path[-1]
        name, kind = UNIT_NAMES.get(code, (f"Xã {code}", "commune"))
        payload = reg.UnitCreated(
            code=code, name=name, kind=kind, parent_code=path[-2] if len(path) > 1 else None, path=list(path)
        )
        return make_event(reg.UNIT_CREATED, payload, source="/registry", key=code)

    @staticmethod
    def team(code: str, kind: str, path: Sequence[str]) -> Envelope:
        payload = reg.TeamCreated(
            code=code, name=f"Đội hình {code}", kind=kind, unit_code=path[-1], unit_path=list(path)
        )
        return make_event(reg.TEAM_CREATED, payload, source="/registry", key=code)

    @staticmethod
    def team_moved(
        code: str,
        kind: str,
        path: Sequence[str],
        previous_kind: str,
        previous_path: Sequence[str],
        *,
        members: int | None = 0,
        active: bool = True,
        previous_active: bool | None = True,
    ) -> Envelope:
        payload = reg.TeamUpdated(
            code=code,
            name=f"Đội hình {code}",
            kind=kind,
            unit_code=path[-1],
            unit_path=list(path),
            active=active,
            previous_kind=previous_kind,
            previous_unit_path=list(previous_path),
            members=members,
            previous_active=previous_active,
        )
        return make_event(reg.TEAM_UPDATED, payload, source="/registry", key=code)

    @staticmethod
    def team_deactivated(code: str, kind: str, path: Sequence[str], *, members: int | None = 0) -> Envelope:
        payload = reg.TeamDeactivated(code=code, kind=kind, unit_code=path[-1], unit_path=list(path), members=members)
        return make_event(reg.TEAM_DEACTIVATED, payload, source="/registry", key=code)

    @staticmethod
    def member(
        team: str,
        vid: str,
        kind: str | None,
        path: Sequence[str] | None,
        *,
        ended: bool = False,
        team_active: bool | None = True,
        day: date = date(2025, 7, 1),
    ) -> Envelope:
        """A membership starting (or ``ended``) in a team of ``kind`` at ``path``."""
        facts: dict[str, Any] = {
            "team_code": team,
            "volunteer_id": vid,
            "team_kind": kind,
            "team_unit_path": None if path is None else list(path),
            "team_active": team_active,
        }
        key = f"{team}/{vid}"
        if ended:
            return make_event(
                reg.MEMBERSHIP_ENDED, reg.MembershipEnded(**facts, until=day), source="/registry", key=key
            )
        return make_event(
            reg.MEMBERSHIP_STARTED, reg.MembershipStarted(**facts, since=day), source="/registry", key=key
        )

    @staticmethod
    def volunteer(
        vid: str, path: Sequence[str], *, roles: Sequence[str] = ("youth",), skills: Sequence[str] = ("it",)
    ) -> Envelope:
        payload = reg.VolunteerRegistered(
            volunteer_id=vid,
            unit_code=path[-1],
            unit_path=list(path),
            roles=list(roles),
            skills=list(skills),
            birth_year=2001,
        )
        return make_event(reg.VOLUNTEER_REGISTERED, payload, source="/registry", key=vid)

    @staticmethod
    def volunteer_moved(
        vid: str,
        path: Sequence[str],
        previous_path: Sequence[str],
        *,
        roles: Sequence[str] = ("student",),
        skills: Sequence[str] = ("vneid",),
        previous_roles: Sequence[str] | None = ("youth",),
        previous_skills: Sequence[str] | None = ("it",),
        active: bool = True,
    ) -> Envelope:
        """An update of a volunteer registered by :meth:`volunteer` with its default roles and skills."""
        payload = reg.VolunteerUpdated(
            volunteer_id=vid,
            unit_code=path[-1],
            unit_path=list(path),
            roles=list(roles),
            skills=list(skills),
            birth_year=2001,
            active=active,
            previous_unit_path=list(previous_path),
            previous_roles=None if previous_roles is None else list(previous_roles),
            previous_skills=None if previous_skills is None else list(previous_skills),
        )
        return make_event(reg.VOLUNTEER_UPDATED, payload, source="/registry", key=vid)

    @staticmethod
    def volunteer_left(
        vid: str, path: Sequence[str], *, roles: Sequence[str] = ("youth",), skills: Sequence[str] = ("it",)
    ) -> Envelope:
        payload = reg.VolunteerLeft(
            volunteer_id=vid, unit_code=path[-1], unit_path=list(path), roles=list(roles), skills=list(skills)
        )
        return make_event(reg.VOLUNTEER_LEFT, payload, source="/registry", key=vid)

    @staticmethod
    def campaign(code: str, starts_on: date, ends_on: date, targets: Sequence[tuple[str, str, int]]) -> Envelope:
        payload = reg.CampaignCreated(
            code=code,
            name="Cao điểm 90 ngày",
            starts_on=starts_on,
            ends_on=ends_on,
            targets=[reg.Target(indicator=i, unit_code=u, value=v) for i, u, v in targets],
        )
        return make_event(reg.CAMPAIGN_CREATED, payload, source="/registry", key=code)

    @staticmethod
    def figures(
        path: Sequence[str],
        day: date,
        households: int = 1,
        people: int = 1,
        vneid: int = 0,
        l3: int = 0,
        l4: int = 0,
        *,
        area: str | None = "island",
        elderly: int | None = None,
        women: int = 0,
        veterans: int = 0,
        activated: int = 0,
        team: str | None = None,
    ) -> vis.VisitFigures:
        """A visit's figures; one elderly person among them unless ``elderly`` says otherwise."""
        return vis.VisitFigures(
            unit_code=path[-1],
            unit_path=list(path),
            visited_on=day,
            households=households,
            people=vis.People(
                total=people, elderly=min(people, 1) if elderly is None else elderly, women=women, veterans=veterans
            ),
            services=vis.Services(
                vneid_installed=vneid, vneid_activated=activated, online_applications_l3=l3, online_applications_l4=l4
            ),
            area=area,
            team_code=team,
        )

    @staticmethod
    def visit(visit_id: str, figures: vis.VisitFigures) -> Envelope:
        payload = vis.VisitRecorded(
            visit_id=visit_id,
            client_ref=f"ref-{visit_id}",
            team_code="T-MOBILE",
            setting="household",
            area=figures.area or "island",
            household_ref=f"hh-{visit_id}",
            volunteer_ids=["V1"],
            recorded_at=datetime(2025, 7, 10, 3, 0, tzinfo=UTC),
            figures=figures,
        )
        return make_event(vis.VISIT_RECORDED, payload, source="/visits", key=visit_id)

    @staticmethod
    def visit_corrected(visit_id: str, previous: vis.VisitFigures, figures: vis.VisitFigures) -> Envelope:
        payload = vis.VisitCorrected(
            visit_id=visit_id,
            team_code="T-MOBILE",
            setting="household",
            area=figures.area or "island",
            volunteer_ids=["V1"],
            corrected_at=datetime(2025, 7, 11, 3, 0, tzinfo=UTC),
            figures=figures,
            previous=previous,
        )
        return make_event(vis.VISIT_CORRECTED, payload, source="/visits", key=visit_id)

    @staticmethod
    def visit_voided(visit_id: str, figures: vis.VisitFigures) -> Envelope:
        payload = vis.VisitVoided(
            visit_id=visit_id, reason="ghi trùng", voided_at=datetime(2025, 7, 12, tzinfo=UTC), figures=figures
        )
        return make_event(vis.VISIT_VOIDED, payload, source="/visits", key=visit_id)

    @staticmethod
    def post(post_id: str, path: Sequence[str], channel: str, day: date, team: str | None = None) -> Envelope:
        payload = vis.OutreachPublished(
            post_id=post_id,
            client_ref=f"ref-{post_id}",
            unit_code=path[-1],
            unit_path=list(path),
            team_code=team,
            channel=channel,
            published_on=day,
            title="Chuyển đổi số cùng thanh niên",
        )
        return make_event(vis.OUTREACH_PUBLISHED, payload, source="/visits", key=post_id)

    @staticmethod
    def post_voided(post_id: str, path: Sequence[str], channel: str, day: date, team: str | None = None) -> Envelope:
        payload = vis.OutreachVoided(
            post_id=post_id,
            reason="sai kênh",
            unit_code=path[-1],
            unit_path=list(path),
            team_code=team,
            channel=channel,
            published_on=day,
        )
        return make_event(vis.OUTREACH_VOIDED, payload, source="/visits", key=post_id)

    @staticmethod
    def course(
        code: str,
        path: Sequence[str],
        audience: str,
        starts_on: date,
        ends_on: date,
        mode: str | None = "in_person",
        team: str | None = None,
    ) -> trn.CourseRef:
        return trn.CourseRef(
            course_code=code,
            unit_code=path[-1],
            unit_path=list(path),
            audience=audience,
            starts_on=starts_on,
            ends_on=ends_on,
            mode=mode,
            team_code=team,
        )

    @staticmethod
    def scheduled(course: trn.CourseRef) -> Envelope:
        payload = trn.CourseScheduled(
            course=course,
            client_ref=f"ref-{course.course_code}",
            title="Kỹ năng số cho người cao tuổi",
            team_code="T-LIT",
            mode=course.mode or "in_person",
            topics=["vneid"],
        )
        return make_event(trn.COURSE_SCHEDULED, payload, source="/training", key=course.course_code)

    @staticmethod
    def session(course: trn.CourseRef, sid: str, held_on: date, attendance: int, before: int, after: int) -> Envelope:
        payload = trn.SessionHeld(
            course=course,
            session_id=sid,
            held_on=held_on,
            duration_minutes=90,
            attendance_kind="head_count",
            attendance=attendance,
            participants=Change(before=before, after=after),
        )
        return make_event(trn.SESSION_HELD, payload, source="/training", key=course.course_code)

    @staticmethod
    def enrolled(course: trn.CourseRef, pid: str, before: int) -> Envelope:
        payload = trn.ParticipantEnrolled(
            course=course, participant_id=pid, group="youth", participants=Change(before=before, after=before + 1)
        )
        return make_event(trn.PARTICIPANT_ENROLLED, payload, source="/training", key=course.course_code)

    @staticmethod
    def participant_completed(course: trn.CourseRef, pid: str, before: int) -> Envelope:
        payload = trn.ParticipantCompleted(
            course=course, participant_id=pid, completions=Change(before=before, after=before + 1)
        )
        return make_event(trn.PARTICIPANT_COMPLETED, payload, source="/training", key=course.course_code)

    @staticmethod
    def completed(course: trn.CourseRef, participants: tuple[int, int], completions: tuple[int, int]) -> Envelope:
        payload = trn.CourseCompleted(
            course=course,
            final_participants=participants[1],
            final_completions=completions[1],
            participants=Change(before=participants[0], after=participants[1]),
            completions=Change(before=completions[0], after=completions[1]),
        )
        return make_event(trn.COURSE_COMPLETED, payload, source="/training", key=course.course_code)

    @staticmethod
    def cancelled(course: trn.CourseRef, participants: int) -> Envelope:
        payload = trn.CourseCancelled(
            course=course,
            reason="bão số 3",
            participants=Change(before=participants, after=0),
            completions=Change(before=0, after=0),
        )
        return make_event(trn.COURSE_CANCELLED, payload, source="/training", key=course.course_code)


@pytest.fixture(scope="session")
def ev() -> type[Events]:
    return Events


async def publish(settings: ServiceSettings, events: Sequence[Envelope]) -> None:
    producer = EventProducer(settings.kafka_bootstrap, client_id="metrics-test")
    try:
        await producer.send_all({t: settings.topic(t) for t in EVENT_TOPICS}, list(events))
    finally:
        await producer.stop()


@pytest.fixture
def send() -> Callable[[ServiceSettings, Sequence[Envelope]], Any]:
    return publish
