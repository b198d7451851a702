"""The Kafka Streams peer of the benchmark (bench/peer) writes the projector's counter documents.

It is only a fair peer if it does the projector's work: these tests build it with Maven, feed it
every event type the projector counts, and compare its documents with ``metrics.projection``'s own
sums of the same events; then replay every event into the same documents and expect no change.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bench.peer_part import PEER_COLLECTION, Peer, build_peer, counter_docs
from metrics.projection import CounterSums, increments, nonzero
from shared.contracts import registry as reg
from shared.contracts import training as tr
from shared.contracts import visits as vi
from shared.contracts.common import (
    Area,
    Audience,
    Change,
    Channel,
    Mode,
    ParticipantGroup,
    Role,
    Setting,
    Skill,
    TeamKind,
    Topic,
    UnitKind,
)
from shared.envelope import Envelope, make_event
from shared.infra import FerretDB, KafkaBroker
from shared.kafka import EventProducer
from shared.testing import wait_until
from shared.topics import EVENT_TOPICS, ensure_topics

# Builds the Java peer with Maven (~100 MB from Maven Central the first time): it runs with the benchmarks
# (`pytest -m benchmark tests/test_bench_peer.py`), not in `make test`, like the peer itself.
pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.benchmark]

HALONG = ["QN", "QN-HALONG"]
VANDON = ["QN", "QN-VANDON"]


def figures(path: list[str], day: date, total: int, area: Area | None, team: str | None) -> vi.VisitFigures:
    return vi.VisitFigures(
        unit_code=path[-1],
        unit_path=path,
        visited_on=day,
        households=1,
        people=vi.People(total=total, elderly=1, women=2, veterans=1),
        services=vi.Services(vneid_installed=2, vneid_activated=1, online_applications_l3=1, online_applications_l4=2),
        area=area,
        team_code=team,
    )


def every_event_type() -> list[Envelope]:
    """One or more events of every type the projector counts, and a unit it only keeps as state."""
    now = datetime(2026, 7, 3, 9, tzinfo=UTC)
    d1, d2 = date(2026, 7, 1), date(2026, 7, 2)
    first = figures(HALONG, d1, 5, Area.island, "MOB-HALONG")
    course = tr.CourseRef(
        course_code="C-VNEID-1",
        unit_code="QN-VANDON",
        unit_path=VANDON,
        audience=Audience.elderly_middle_aged,
        starts_on=d1,
        ends_on=d2,
        mode=Mode.in_person,
        team_code="LIT-VANDON",
    )
    old_course = course.model_copy(update={"course_code": "C-OLD", "mode": None, "team_code": None})
    visits = [
        make_event(
            vi.VISIT_RECORDED,
            vi.VisitRecorded(
                visit_id="v1",
                client_ref="v1",
                team_code="MOB-HALONG",
                setting=Setting.household,
                area=Area.island,
                household_ref="HH-1",
                volunteer_ids=["vol-1"],
                recorded_at=now,
                figures=first,
            ),
            source="/visits",
            key="v1",
        ),
        make_event(
            vi.VISIT_RECORDED,
            vi.VisitRecorded(
                visit_id="v2",
                client_ref="v2",
                team_code="MOB-VANDON",
                setting=Setting.household,
                area=Area.border,
                volunteer_ids=["vol-2"],
                recorded_at=now,
                figures=figures(VANDON, d2, 3, None, None),
            ),
            source="/visits",
            key="v2",
        ),
        make_event(
            vi.VISIT_CORRECTED,
            vi.VisitCorrected(
                visit_id="v1",
                team_code="MOB-HALONG",
                setting=Setting.household,
                area=Area.remote,
                volunteer_ids=["vol-1"],
                corrected_at=now,
                figures=figures(HALONG, d2, 7, Area.remote, "MOB-HALONG"),
                previous=first,
            ),
            source="/visits",
            key="v1",
        ),
        make_event(
            vi.VISIT_VOIDED,
            vi.VisitVoided(
                visit_id="v2", reason="Nhập trùng", voided_at=now, figures=figures(VANDON, d2, 3, None, None)
            ),
            source="/visits",
            key="v2",
        ),
        make_event(
            vi.OUTREACH_PUBLISHED,
            vi.OutreachPublished(
                post_id="p1",
                client_ref="p1",
                unit_code="QN-HALONG",
                unit_path=HALONG,
                team_code="MOB-HALONG",
                channel=Channel.fanpage,
                published_on=d1,
                title="Phường Hạ Long hướng dẫn cài đặt VNeID",
            ),
            source="/visits",
            key="p1",
        ),
        make_event(
            vi.OUTREACH_VOIDED,
            vi.OutreachVoided(
                post_id="p0",
                reason="Gỡ bài",
                unit_code="QN-HALONG",
                unit_path=HALONG,
                channel=Channel.visual,
                published_on=d2,
            ),
            source="/visits",
            key="p0",
        ),
    ]
    training = [
        make_event(
            tr.COURSE_SCHEDULED,
            tr.CourseScheduled(
                course=course,
                client_ref="c1",
                title="Kỹ năng số cho người cao tuổi",
                team_code="LIT-VANDON",
                mode=Mode.in_person,
                topics=[Topic.vneid],
            ),
            source="/training",
            key=course.course_code,
        ),
        make_event(
            tr.PARTICIPANT_ENROLLED,
            tr.ParticipantEnrolled(
                course=course,
                participant_id="pa1",
                group=ParticipantGroup.elderly,
                participants=Change(before=0, after=1),
            ),
            source="/training",
            key=course.course_code,
        ),
        make_event(
            tr.SESSION_HELD,
            tr.SessionHeld(
                course=old_course,
                session_id="s1",
                held_on=d1,
                duration_minutes=90,
                attendance_kind="head_count",
                attendance=12,
                participants=Change(before=0, after=12),
            ),
            source="/training",
            key=old_course.course_code,
        ),
        make_event(
            tr.PARTICIPANT_COMPLETED,
            tr.ParticipantCompleted(course=course, participant_id="pa1", completions=Change(before=0, after=1)),
            source="/training",
            key=course.course_code,
        ),
        make_event(
            tr.COURSE_COMPLETED,
            tr.CourseCompleted(
                course=course,
                final_participants=4,
                final_completions=3,
                participants=Change(before=1, after=4),
                completions=Change(before=1, after=3),
            ),
            source="/training",
            key=course.course_code,
        ),
        make_event(
            tr.COURSE_CANCELLED,
            tr.CourseCancelled(
                course=old_course,
                reason="Mưa bão",
                participants=Change(before=12, after=0),
                completions=Change(before=0, after=0),
            ),
            source="/training",
            key=old_course.course_code,
        ),
    ]
    registry = [
        make_event(
            reg.UNIT_CREATED,
            reg.UnitCreated(
                code="QN-VANDON", name="Đặc khu Vân Đồn", kind=UnitKind.special_zone, parent_code="QN", path=VANDON
            ),
            source="/registry",
            key="QN-VANDON",
        ),
        make_event(
            reg.TEAM_CREATED,
            reg.TeamCreated(
                code="MOB-HALONG",
                name="Đội hình lưu động",
                kind=TeamKind.mobile,
                unit_code="QN-HALONG",
                unit_path=HALONG,
            ),
            source="/registry",
            key="MOB-HALONG",
        ),
        make_event(
            reg.TEAM_UPDATED,
            reg.TeamUpdated(
                code="MOB-HALONG",
                name="Đội hình lưu động",
                kind=TeamKind.campaign,
                unit_code="QN-VANDON",
                unit_path=VANDON,
                active=True,
                previous_kind=TeamKind.mobile,
                previous_unit_path=HALONG,
                members=2,
            ),
            source="/registry",
            key="MOB-HALONG",
        ),
        make_event(
            reg.TEAM_UPDATED,
            reg.TeamUpdated(
                code="LIT-VANDON",
                name="Đội xóa mù số",
                kind=TeamKind.literacy,
                unit_code="QN-VANDON",
                unit_path=VANDON,
                active=True,
                previous_kind=TeamKind.literacy,
                previous_unit_path=VANDON,
                members=3,
                previous_active=False,
            ),
            source="/registry",
            key="LIT-VANDON",
        ),
        make_event(
            reg.TEAM_DEACTIVATED,
            reg.TeamDeactivated(
                code="PER-HALONG", kind=TeamKind.permanent, unit_code="QN-HALONG", unit_path=HALONG, members=4
            ),
            source="/registry",
            key="PER-HALONG",
        ),
        make_event(
            reg.VOLUNTEER_REGISTERED,
            reg.VolunteerRegistered(
                volunteer_id="vol-1",
                unit_code="QN-HALONG",
                unit_path=HALONG,
                roles=[Role.youth, Role.youth],
                skills=[Skill.vneid, Skill.it],
                birth_year=2003,
            ),
            source="/registry",
            key="vol-1",
        ),
        make_event(
            reg.VOLUNTEER_UPDATED,
            reg.VolunteerUpdated(
                volunteer_id="vol-1",
                unit_code="QN-VANDON",
                unit_path=VANDON,
                roles=[Role.student],
                skills=[Skill.media],
                birth_year=2003,
                active=True,
                previous_unit_path=HALONG,
                previous_roles=[Role.youth],
                previous_skills=[Skill.vneid, Skill.it],
            ),
            source="/registry",
            key="vol-1",
        ),
        make_event(
            reg.VOLUNTEER_LEFT,
            reg.VolunteerLeft(
                volunteer_id="vol-9",
                unit_code="QN-HALONG",
                unit_path=HALONG,
                roles=[Role.lecturer],
                skills=[Skill.teaching],
            ),
            source="/registry",
            key="vol-9",
        ),
        make_event(
            reg.MEMBERSHIP_STARTED,
            reg.MembershipStarted(
                team_code="MOB-HALONG",
                volunteer_id="vol-1",
                since=d1,
                team_kind=TeamKind.mobile,
                team_unit_path=HALONG,
                team_active=True,
            ),
            source="/registry",
            key="MOB-HALONG/vol-1",
        ),
        make_event(
            reg.MEMBERSHIP_ENDED,
            reg.MembershipEnded(
                team_code="LIT-VANDON",
                volunteer_id="vol-3",
                until=d2,
                team_kind=TeamKind.literacy,
                team_unit_path=VANDON,
                team_active=True,
            ),
            source="/registry",
            key="LIT-VANDON/vol-3",
        ),
    ]
    return visits + training + registry


def projector_sums(events: list[Envelope]) -> dict[str, dict[str, int]]:
    sums = CounterSums()
    for e in events:
        sums.add(increments(e.payload()))
    return {doc_id: nonzero(fields) for doc_id, fields in sums.docs.items()}


async def run_peer(kafka: KafkaBroker, ferretdb: FerretDB, prefix: str, db: str, log_dir: Path, n: int) -> None:
    """One peer with a new application id (so it reads from the beginning) until it applied ``n``."""
    peer = Peer(kafka.bootstrap, ferretdb.url, prefix, db, log_dir)
    try:
        await peer.wait_running()

        async def applied() -> bool:
            return peer.applied >= n

        await wait_until(applied, timeout=90)
    finally:
        await peer.stop()


# The first build on a machine fetches the peer's jars from Maven Central (~100 MB).
@pytest.mark.timeout(900)
async def test_peer_writes_the_projectors_counters_for_every_event_type_and_a_replay_changes_none(
    kafka: KafkaBroker, ferretdb: FerretDB, tmp_path: Path
) -> None:
    await asyncio.to_thread(build_peer)
    prefix = f"tpeer{uuid.uuid4().hex[:6]}."
    db = f"tpeer_{uuid.uuid4().hex[:6]}"
    await ensure_topics(kafka.bootstrap, prefix)
    events = every_event_type()
    producer = EventProducer(kafka.bootstrap, client_id="test-peer")
    await producer.ensure_started()
    try:
        await producer.send_all({t: prefix + t for t in EVENT_TOPICS}, events)
    finally:
        await producer.stop()
    want = projector_sums(events)
    assert {"team:MOB-HALONG|2026-07-02", "QN-VANDON|state", "QN-HALONG|all"} <= set(want)  # the test covers teams

    await run_peer(kafka, ferretdb, prefix, db, tmp_path, len(events))
    assert await counter_docs(ferretdb.url, db, PEER_COLLECTION) == want

    # Every event again, as after a crash between a Mongo write and the commit of its offsets: the
    # documents' watermarks already include them all.
    await run_peer(kafka, ferretdb, prefix, db, tmp_path, len(events))
    assert await counter_docs(ferretdb.url, db, PEER_COLLECTION) == want
