"""Events published by the training service on ``training.events.v1``.

Key: the course code, so every event of one course is ordered. Participants appear only by id and
group; names are personal data and never leave the training service.

``participants`` and ``completions`` are :class:`Change` values: the course's counted figure before
and after the event, by the rules of DOMAIN.md (roster courses count enrolments; head-count courses
count the largest session head count so far, replaced by the final count at completion).
"""

from __future__ import annotations

from datetime import date

from pydantic import Field

from shared.contracts.common import Audience, Change, Contract, Mode, NonNegative, ParticipantGroup, Topic, UnitPath

PREFIX = "org.youthunion.training."
COURSE_SCHEDULED = PREFIX + "course.scheduled.v1"
COURSE_STARTED = PREFIX + "course.started.v1"
COURSE_COMPLETED = PREFIX + "course.completed.v1"
COURSE_CANCELLED = PREFIX + "course.cancelled.v1"
SESSION_HELD = PREFIX + "session.held.v1"
PARTICIPANT_ENROLLED = PREFIX + "participant.enrolled.v1"
PARTICIPANT_COMPLETED = PREFIX + "participant.completed.v1"


class CourseRef(Contract):
    """Where and when a course counts: enough for a consumer to place any of its figures."""

    course_code: str
    unit_code: str
    unit_path: UnitPath
    audience: Audience
    starts_on: date
    ends_on: date
    mode: Mode | None = Field(default=None, description="In person or online, as scheduled.")
    team_code: str | None = Field(default=None, description="The team that runs the course.")


class CourseScheduled(Contract):
    course: CourseRef
    client_ref: str
    title: str
    team_code: str
    mode: Mode
    topics: list[Topic]
    capacity: int | None = None


class CourseStarted(Contract):
    course: CourseRef
    started_on: date


class SessionHeld(Contract):
    course: CourseRef
    session_id: str
    held_on: date
    duration_minutes: int = Field(gt=0)
    attendance_kind: str = Field(pattern="^(head_count|roster)$")
    attendance: NonNegative
    participants: Change


class ParticipantEnrolled(Contract):
    course: CourseRef
    participant_id: str
    group: ParticipantGroup
    participants: Change


class ParticipantCompleted(Contract):
    course: CourseRef
    participant_id: str
    completions: Change


class CourseCompleted(Contract):
    course: CourseRef
    final_participants: NonNegative
    final_completions: NonNegative
    participants: Change
    completions: Change


class CourseCancelled(Contract):
    """A cancelled course stops counting in ``courses`` and ``course_participants``."""

    course: CourseRef
    reason: str
    participants: Change
    completions: Change


EVENTS: dict[str, type[Contract]] = {
    COURSE_SCHEDULED: CourseScheduled,
    COURSE_STARTED: CourseStarted,
    COURSE_COMPLETED: CourseCompleted,
    COURSE_CANCELLED: CourseCancelled,
    SESSION_HELD: SessionHeld,
    PARTICIPANT_ENROLLED: ParticipantEnrolled,
    PARTICIPANT_COMPLETED: ParticipantCompleted,
}
