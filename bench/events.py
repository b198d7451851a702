"""Realistic synthetic events for the benchmarks: visits, courses, participants and outreach."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta

from shared.contracts import training as tr
from shared.contracts import visits as vi
from shared.contracts.common import Change
from shared.envelope import Envelope, make_event

PROVINCE = "QN"


def unit_paths(n_units: int = 60) -> list[list[str]]:
    return [[PROVINCE, f"QN-C{i:03d}"] for i in range(n_units)]


# How late field records reach the log in the campaign order: most the same day, some a few days
# later (a tablet offline in a border commune), a few weeks later (a typhoon). Shares of records.
LATE_1_3_DAYS = 0.12
LATE_4_14_DAYS = 0.03


def event_day(rng: random.Random, start: date, days: int, i: int, n: int, arrival: str) -> date:
    """The day the ``i``-th of ``n`` events is about.

    ``campaign``: the log follows the campaign, so the day advances through the stream, with the
    late shares above. ``uniform``: any day of the ``days`` at random, as replaying a whole campaign
    shuffled would be; every fetch then touches nearly every unit's every day (the worst case).
    """
    if arrival == "uniform":
        return start + timedelta(days=rng.randrange(days))
    today = i * days // max(n, 1)
    roll = rng.random()
    late = 0
    if roll < LATE_1_3_DAYS:
        late = rng.randint(1, 3)
    elif roll < LATE_1_3_DAYS + LATE_4_14_DAYS:
        late = rng.randint(4, 14)
    return start + timedelta(days=max(0, today - late))


def mixed_events(
    n: int, *, seed: int = 7, n_units: int = 60, days: int = 50, arrival: str = "campaign"
) -> list[Envelope]:
    """``n`` events over ``n_units`` communes and ``days`` days, in a field-work-like mix; ``arrival``
    says how their days run through the stream (see :func:`event_day`)."""
    rng = random.Random(seed)
    paths = unit_paths(n_units)
    start = date(2026, 7, 1)
    out: list[Envelope] = []
    courses: list[tr.CourseRef] = []
    while len(out) < n:
        roll = rng.random()
        path = rng.choice(paths)
        day = event_day(rng, start, days, len(out), n, arrival)
        if roll < 0.55:
            out.append(visit(path, day, rng))
        elif roll < 0.62 or not courses:
            ref = tr.CourseRef(
                course_code=f"C-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}",
                unit_code=path[-1],
                unit_path=path,
                audience=rng.choice(["youth_children", "elderly_middle_aged", "general"]),
                starts_on=day,
                ends_on=day + timedelta(days=5),
            )
            courses.append(ref)
            out.append(
                make_event(
                    tr.COURSE_SCHEDULED,
                    tr.CourseScheduled(
                        course=ref,
                        client_ref=str(uuid.uuid4()),
                        title="Kỹ năng số cho người cao tuổi",
                        team_code=f"LIT-{path[-1]}",
                        mode="in_person",
                        topics=["vneid"],
                        capacity=None,
                    ),
                    source="/training",
                    key=ref.course_code,
                )
            )
        elif roll < 0.85:
            ref = rng.choice(courses)
            n_before = rng.randrange(0, 60)
            out.append(
                make_event(
                    tr.PARTICIPANT_ENROLLED,
                    tr.ParticipantEnrolled(
                        course=ref,
                        participant_id=str(uuid.uuid4()),
                        group="elderly",
                        participants=Change(before=n_before, after=n_before + 1),
                    ),
                    source="/training",
                    key=ref.course_code,
                )
            )
        else:
            out.append(
                make_event(
                    vi.OUTREACH_PUBLISHED,
                    vi.OutreachPublished(
                        post_id=str(uuid.uuid4()),
                        client_ref=str(uuid.uuid4()),
                        unit_code=path[-1],
                        unit_path=path,
                        channel=rng.choice(["fanpage", "newspaper", "visual", "visual"]),
                        published_on=day,
                        title="Tuổi trẻ Quảng Ninh hỗ trợ người dân cài đặt VNeID",
                    ),
                    source="/visits",
                    key=str(uuid.uuid4()),
                )
            )
    return out


def visit(path: list[str], day: date, rng: random.Random) -> Envelope:
    total = rng.randint(1, 12)
    visit_id = str(uuid.uuid4())
    figures = vi.VisitFigures(
        unit_code=path[-1],
        unit_path=path,
        visited_on=day,
        households=1,
        people=vi.People(total=total, elderly=rng.randint(0, total), women=rng.randint(0, total), veterans=0),
        services=vi.Services(
            vneid_installed=rng.randint(0, total),
            vneid_activated=rng.randint(0, total),
            online_applications_l3=rng.randint(0, 3),
            online_applications_l4=rng.randint(0, 2),
            digital_skills_guidance=rng.randint(0, total),
        ),
    )
    return make_event(
        vi.VISIT_RECORDED,
        vi.VisitRecorded(
            visit_id=visit_id,
            client_ref=visit_id,
            team_code=f"MOB-{path[-1]}",
            setting="household",
            area=rng.choice(["remote", "border", "island", "rural"]),
            household_ref=f"HH-{rng.getrandbits(40):x}",
            volunteer_ids=[str(uuid.uuid4())],
            recorded_at=datetime.now(UTC),
            figures=figures,
        ),
        source="/visits",
        key=visit_id,
    )


def visit_body(rng: random.Random, unit_code: str, team_code: str, volunteer_id: str, day: date) -> dict[str, object]:
    """A realistic POST /v1/visits body with a unique client_ref."""
    total = rng.randint(1, 8)
    return {
        "client_ref": str(uuid.uuid4()),
        "team_code": team_code,
        "unit_code": unit_code,
        "visited_on": day.isoformat(),
        "setting": "household",
        "area": rng.choice(["remote", "border", "island"]),
        "household_ref": f"HH-{rng.getrandbits(40):x}",
        "households": 1,
        "people": {"total": total, "elderly": rng.randint(0, total), "women": rng.randint(0, total), "veterans": 0},
        "services": {
            "vneid_installed": rng.randint(0, total),
            "vneid_activated": rng.randint(0, total),
            "online_applications_l3": rng.randint(0, 2),
            "online_applications_l4": rng.randint(0, 1),
            "digital_skills_guidance": rng.randint(0, total),
        },
        "volunteer_ids": [volunteer_id],
        "notes": "Hỗ trợ cài đặt VNeID cho hộ gia đình",
    }
