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


def mixed_events(n: int, *, seed: int = 7, n_units: int = 60, days: int = 50) -> list[Envelope]:
    """``n`` events over ``n_units`` communes and ``days`` days, in a field-work-like mix."""
    rng = random.Random(seed)
    paths = unit_paths(n_units)
    start = date(2026, 7, 1)
    out: list[Envelope] = []
    courses: list[tr.CourseRef] = []
    while len(out) < n:
        roll = rng.random()
        path = rng.choice(paths)
        day = start + timedelta(days=rng.randrange(days))
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
