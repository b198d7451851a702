"""The public event catalogue, generated from the contracts in :mod:`shared.contracts`.

Integrators subscribe with code we never see, so the events are a public API. ``make contract``
(``python -m scripts.cli contract``, which also runs both gates below) writes
``docs/events/asyncapi.yaml`` (AsyncAPI 3.0) and one JSON Schema 2020-12 file per event type under
``docs/events/schemas/``. The same document is served by every
service at ``GET /v1/events/catalog`` (:func:`catalog_router`), filtered to the topics it produces.

Two gates keep the contract honest (see ``docs/events/README.md``): :func:`incompatibilities` rejects
backward-incompatible changes to a published type, and :func:`personal_data_fields` rejects fields
that could carry a person's name or contact details.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.contracts import EVENT_TYPES, TOPIC_OF_TYPE
from shared.contracts import registry as reg
from shared.contracts import reporting as rpt
from shared.contracts import training as trn
from shared.contracts import visits as vis
from shared.envelope import CONTENT_TYPE, SPEC_VERSION, dataschema
from shared.topics import (
    EVENT_TOPICS,
    REGISTRY_TOPIC,
    REPORTING_TOPIC,
    TRAINING_TOPIC,
    VISITS_TOPIC,
    TopicSpec,
    load_topics,
)

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "https://digital-bridge.youthunion.vn/events/"
# Serialization mode describes what producers write (``model_dump``); fields with defaults are not
# required, so adding an optional field stays a compatible change.
SCHEMA_MODE: Literal["serialization"] = "serialization"
CATALOG_VERSION = "1.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
ASYNCAPI_FILE = "asyncapi.yaml"
SCHEMAS_DIR = "schemas"

PRODUCER_OF_TOPIC: dict[str, str] = {
    REGISTRY_TOPIC: "registry",
    VISITS_TOPIC: "visits",
    TRAINING_TOPIC: "training",
    REPORTING_TOPIC: "metrics",
}
# A service's catalogue covers the topics it produces; metrics, which consumes them all (and
# produces the reporting topic), serves the whole catalogue.
SERVICE_TOPICS: dict[str, tuple[str, ...]] = {
    svc: (topic,) for topic, svc in PRODUCER_OF_TOPIC.items() if svc != "metrics"
}


def repo_root() -> Path:
    """The repository checkout this package is installed from (editable install)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "deploy" / "kafka" / "topics.yaml").exists():
            return parent
    raise FileNotFoundError("deploy/kafka/topics.yaml not found above the shared package")


def events_dir() -> Path:
    return repo_root() / "docs" / "events"


# --- descriptions for an outside reader ------------------------------------------------------------


@dataclass(frozen=True)
class EventDoc:
    title: str
    description: str
    # ``str.format`` template over the payload's fields; it documents the key and builds the example's.
    key: str
    key_description: str


_UNIT_KEY = ("{code}", "The unit code.")
_TEAM_KEY = ("{code}", "The team code.")
_VOLUNTEER_KEY = ("{volunteer_id}", "The volunteer id (an opaque, pseudonymous id).")
_MEMBERSHIP_KEY = ("{team_code}/{volunteer_id}", "`<team_code>/<volunteer_id>`: one key per membership.")
_CAMPAIGN_KEY = ("{code}", "The campaign code.")
_VISIT_KEY = ("{visit_id}", "The visit id.")
_POST_KEY = ("{post_id}", "The outreach post id.")
_COURSE_KEY = ("{course.course_code}", "The course code, so every event of one course is in order.")
_PERIOD_KEY = ("{period.period}/{period.unit_code}", "`<period>/<unit code>`: one key per unit's period.")


def _doc(title: str, description: str, key: tuple[str, str]) -> EventDoc:
    return EventDoc(title, description, key[0], key[1])


EVENT_DOCS: dict[str, EventDoc] = {
    reg.UNIT_CREATED: _doc(
        "Unit created",
        "A unit (the province, a commune, ward or special zone, or a school's union branch) joined the "
        "organisation tree. `path` lists unit codes from the province root down to this unit; use it to "
        "roll figures up the tree.",
        _UNIT_KEY,
    ),
    reg.UNIT_UPDATED: _doc(
        "Unit updated",
        "A unit was renamed, changed kind or moved under another parent. `path` is its new path and "
        "`previous_path` the old one: move whatever you total per unit from the old ancestors to the new.",
        _UNIT_KEY,
    ),
    reg.UNIT_MERGED: _doc(
        "Unit merged",
        "A unit was merged into `successor_code` (the 2025 pattern: communes merged into one). Its teams, "
        "volunteers, child units and campaign targets were moved to the successor by earlier events; from "
        "now on records that name its code belong to the successor. Count its history under the successor: "
        "treat it as a child of `successor_code`.",
        _UNIT_KEY,
    ),
    reg.UNIT_SPLIT: _doc(
        "Unit split",
        "A unit was split into `successors`; `teams` says which successor took each of its teams (each "
        "also has its own `team.updated`). The unit is closed: it takes no new records, and its history "
        "stays under its own code and parent.",
        _UNIT_KEY,
    ),
    reg.UNIT_CLOSED: _doc(
        "Unit closed",
        "A unit takes no new records. Its history stays under its own code and parent; records that name "
        "it are refused with a 409 problem.",
        _UNIT_KEY,
    ),
    reg.TEAM_CREATED: _doc(
        "Team created",
        "A volunteer team was founded at a unit. `kind` tells a permanent team at a public-administration "
        "centre (`base`) from a mobile, literacy or campaign team (then `campaign_code` is set). The team "
        "counts towards the `teams` indicator at `unit_path`.",
        _TEAM_KEY,
    ),
    reg.TEAM_UPDATED: _doc(
        "Team updated",
        "A team's name, kind, unit, base, campaign or active flag changed. The event carries the whole "
        "team; `previous_kind` and `previous_unit_path` let you move its count from the old kind and "
        "units to the new ones.",
        _TEAM_KEY,
    ),
    reg.TEAM_DEACTIVATED: _doc(
        "Team deactivated",
        "A team was stood down and no longer counts in `teams`. What it did before (visits, courses) still counts.",
        _TEAM_KEY,
    ),
    reg.VOLUNTEER_REGISTERED: _doc(
        "Volunteer registered (v1, superseded)",
        "Superseded by `volunteer.registered.v2`, which carries an age band instead of the birth year; "
        "no producer sends v1 any more, but the log keeps those sent before. A volunteer joined a unit: "
        "an opaque id, the unit, roles, skills and birth year. Counts towards `volunteers`.",
        _VOLUNTEER_KEY,
    ),
    reg.VOLUNTEER_UPDATED: _doc(
        "Volunteer updated (v1, superseded)",
        "Superseded by `volunteer.updated.v2` (an age band instead of the birth year). A volunteer's "
        "unit, roles, skills or active flag changed; `previous_unit_path` lets you move their count.",
        _VOLUNTEER_KEY,
    ),
    reg.VOLUNTEER_REGISTERED_V2: _doc(
        "Volunteer registered",
        "A volunteer joined a unit. The event carries an opaque id, the unit, roles, skills and an age "
        "band only: names, birth years and contact details never leave the registry. Counts towards "
        "`volunteers`.",
        _VOLUNTEER_KEY,
    ),
    reg.VOLUNTEER_UPDATED_V2: _doc(
        "Volunteer updated",
        "A volunteer's unit, roles, skills, age band or active flag changed. The event carries the whole "
        "(non-personal) record; `previous_unit_path` lets you move their count between units.",
        _VOLUNTEER_KEY,
    ),
    reg.VOLUNTEER_LEFT: _doc(
        "Volunteer left",
        "A volunteer left the organisation and no longer counts in `volunteers`.",
        _VOLUNTEER_KEY,
    ),
    reg.MEMBERSHIP_STARTED: _doc(
        "Membership started",
        "A volunteer joined a team on `since` (a local date, Asia/Ho_Chi_Minh).",
        _MEMBERSHIP_KEY,
    ),
    reg.MEMBERSHIP_ENDED: _doc(
        "Membership ended",
        "A volunteer left a team on `until` (a local date, Asia/Ho_Chi_Minh).",
        _MEMBERSHIP_KEY,
    ),
    reg.CAMPAIGN_CREATED: _doc(
        "Campaign created",
        "A campaign (a time-boxed push such as the digital literacy campaign) was created with its dates "
        "and its targets: one value per indicator and unit.",
        _CAMPAIGN_KEY,
    ),
    reg.CAMPAIGN_TARGETS_SET: _doc(
        "Campaign targets set",
        "A campaign's targets were replaced: `targets` is the complete new list, not a difference.",
        _CAMPAIGN_KEY,
    ),
    vis.VISIT_RECORDED: _doc(
        "Visit recorded",
        "A team recorded a visit to a household (`setting: household`) or support given at a "
        "public-administration centre (`setting: service_centre`). `figures` is what the visit adds to "
        "the indicators (households visited, people supported, VNeID installs and activations, online "
        "applications) at `figures.unit_path` on `figures.visited_on` (a local date). A household appears "
        "only as a pseudonymous `household_ref`.",
        _VISIT_KEY,
    ),
    vis.VISIT_CORRECTED: _doc(
        "Visit corrected",
        "A recorded visit was corrected. The event carries the full corrected record: subtract "
        "`previous` and add `figures` to keep exact totals.",
        _VISIT_KEY,
    ),
    vis.VISIT_VOIDED: _doc(
        "Visit voided",
        "A visit was voided (recorded by mistake, or a duplicate) and no longer counts: subtract `figures`, "
        "which are the figures it had contributed.",
        _VISIT_KEY,
    ),
    vis.OUTREACH_PUBLISHED: _doc(
        "Outreach post published",
        "A unit published an outreach post on a fan page, in a newspaper or as a visual (image, short "
        "video). It counts one towards `outreach_posts` at `unit_path` on `published_on`.",
        _POST_KEY,
    ),
    vis.OUTREACH_VOIDED: _doc(
        "Outreach post voided",
        "An outreach post was withdrawn: subtract one from `outreach_posts` for its unit, channel and date.",
        _POST_KEY,
    ),
    trn.COURSE_SCHEDULED: _doc(
        "Course scheduled",
        "A team scheduled a digital-literacy course. `course` says where and when it counts (unit path, "
        "audience, dates); it counts towards `courses` unless it is cancelled.",
        _COURSE_KEY,
    ),
    trn.COURSE_STARTED: _doc(
        "Course started",
        "The first session of a course took place on `started_on`.",
        _COURSE_KEY,
    ),
    trn.SESSION_HELD: _doc(
        "Session held",
        "A session of a course was held. `attendance_kind` is `head_count` (people present were counted) "
        "or `roster` (enrolled participants were ticked off). `participants` is the course's counted "
        "participant figure before and after this session: add `after - before` to `course_participants`.",
        _COURSE_KEY,
    ),
    trn.PARTICIPANT_ENROLLED: _doc(
        "Participant enrolled",
        "A participant enrolled on a roster course. They appear only as an opaque id and an age group. "
        "Add `participants.after - participants.before` to `course_participants`.",
        _COURSE_KEY,
    ),
    trn.PARTICIPANT_COMPLETED: _doc(
        "Participant completed",
        "A participant completed a roster course: add `completions.after - completions.before` to "
        "`course_completions`.",
        _COURSE_KEY,
    ),
    trn.COURSE_COMPLETED: _doc(
        "Course completed",
        "A course finished with `final_participants` and `final_completions`. Apply the `participants` "
        "and `completions` differences (`after - before`) to your totals.",
        _COURSE_KEY,
    ),
    trn.COURSE_CANCELLED: _doc(
        "Course cancelled",
        "A course was cancelled: it stops counting in `courses`, and the `participants` and `completions` "
        "differences (`after - before`) remove what it had contributed.",
        _COURSE_KEY,
    ),
    rpt.PERIOD_CLOSED: _doc(
        "Period closed",
        "A unit's manager closed a reporting period (an ISO week or a campaign's window): `reported` holds "
        "the figures frozen then, shaped as `/v1/summary`. Records that arrive later are adjustments; "
        "the live figures never stop moving.",
        _PERIOD_KEY,
    ),
    rpt.PERIOD_APPROVED: _doc(
        "Period approved",
        "The parent unit's manager (or an admin, for the province) approved a closed period.",
        _PERIOD_KEY,
    ),
    rpt.PERIOD_REOPENED: _doc(
        "Period reopened",
        "An admin reopened a closed or approved period, with a reason; the next close reports again "
        "with a higher `version`.",
        _PERIOD_KEY,
    ),
}

_TOPIC_DOCS: dict[str, str] = {
    REGISTRY_TOPIC: "The organisation: the unit tree, volunteer teams, volunteers (by opaque id only), "
    "team memberships and campaigns with their targets.",
    VISITS_TOPIC: "The work in the field: household visits and support at public-administration centres, "
    "with the figures they add to the indicators, and outreach posts.",
    REPORTING_TOPIC: "The weekly reporting cycle: a unit's period closed with its frozen figures, approved by "
    "the parent unit, or reopened with a reason.",
    TRAINING_TOPIC: "Digital-literacy courses: scheduling, sessions, enrolments and completions, with the "
    "participant and completion figures they change.",
}

# --- one realistic example per event type ----------------------------------------------------------

_QN = ["QN"]
_HALONG = ["QN", "QN-HALONG"]
_VANDON = ["QN", "QN-VANDON"]
_V1 = "3f6b1c2e-8a4d-4e7b-9c1a-5d2e7f8a9b01"
_V2 = "a1d9e4c7-2b5f-4c3e-8e6a-0f1b2c3d4e52"
_VISIT = "0c8f5e3a-7d21-4b9e-a6c4-2e1f9d8b7a63"
_POST = "5b2e9d47-3c8a-4f1e-b7d6-9a0c1e2f3d74"
_PARTICIPANT = "e7c3a1f9-6b4d-4a2e-9f8c-1d0b2a3c4e85"
_SESSION = "9d4f2b6a-1e8c-4d7a-b3f5-6c2e0a9b8d96"
_TEAM = "QN-HALONG-TNTN-01"
_COURSE = "QN-HALONG-BDHVS-2025-014"
_CAMPAIGN = "BDHVS-2025"
_PERIOD = {
    "period": "2025-W28",
    "first": "2025-07-07",
    "last": "2025-07-13",
    "unit_code": "QN-HALONG",
    "unit_path": ["QN", "QN-HALONG"],
}
_FIGURES: dict[str, Any] = {
    "unit_code": "QN-HALONG",
    "unit_path": _HALONG,
    "visited_on": "2025-07-12",
    "households": 1,
    "people": {"total": 3, "elderly": 2, "women": 2, "veterans": 1},
    "services": {
        "vneid_installed": 2,
        "vneid_activated": 2,
        "online_applications_l3": 0,
        "online_applications_l4": 1,
        "digital_skills_guidance": 3,
    },
    "area": "urban",
    "team_code": _TEAM,
}
_COURSE_REF = {
    "course_code": _COURSE,
    "unit_code": "QN-HALONG",
    "unit_path": _HALONG,
    "audience": "elderly_middle_aged",
    "starts_on": "2025-07-14",
    "ends_on": "2025-07-25",
    "mode": "in_person",
    "team_code": _TEAM,
}
_TEAM_BODY = {
    "code": _TEAM,
    "name": "Đội thanh niên tình nguyện Trung tâm phục vụ hành chính công phường Hạ Long",
    "kind": "permanent",
    "unit_code": "QN-HALONG",
    "unit_path": _HALONG,
    "base": "Trung tâm phục vụ hành chính công phường Hạ Long",
    "campaign_code": None,
}
_VOLUNTEER_BODY = {
    "volunteer_id": _V1,
    "unit_code": "QN-HALONG",
    "unit_path": _HALONG,
    "roles": ["union_member", "student"],
    "skills": ["it", "vneid"],
    "birth_year": 2003,
}
_VOLUNTEER_BODY_V2 = {**{k: v for k, v in _VOLUNTEER_BODY.items() if k != "birth_year"}, "age_band": "16_30"}
_TARGETS = [
    {"indicator": "households_visited", "unit_code": "QN-HALONG", "value": 1200, "merged_from": ["QN-CAMPHA"]},
    {"indicator": "vneid_installs", "unit_code": "QN-HALONG", "value": 800, "merged_from": []},
    {"indicator": "courses", "unit_code": "QN-VANDON", "value": 6, "merged_from": []},
]

EXAMPLES: dict[str, dict[str, Any]] = {
    reg.UNIT_CREATED: {
        "code": "QN-HALONG",
        "name": "Phường Hạ Long",
        "kind": "ward",
        "parent_code": "QN",
        "path": _HALONG,
    },
    reg.UNIT_UPDATED: {
        "code": "QN-VANDON",
        "name": "Đặc khu Vân Đồn",
        "kind": "special_zone",
        "parent_code": "QN",
        "path": _VANDON,
        "previous_path": ["QN", "QN-CAMPHA", "QN-VANDON"],
    },
    reg.UNIT_MERGED: {
        "code": "QN-CAMPHA",
        "successor_code": "QN-HALONG",
        "successor_path": _HALONG,
        "merged_on": "2025-07-01",
    },
    reg.UNIT_SPLIT: {
        "code": "QN-VANDON",
        "successors": ["QN-VANDON-B", "QN-VANDON-N"],
        "teams": [{"team_code": _TEAM, "unit_code": "QN-VANDON-B"}],
        "split_on": "2025-07-01",
    },
    reg.UNIT_CLOSED: {
        "code": "QN-VANDON",
        "path": _VANDON,
        "reason": "Sáp nhập vào đặc khu mới",
        "closed_on": "2025-07-01",
    },
    reg.TEAM_CREATED: _TEAM_BODY,
    reg.TEAM_UPDATED: {
        **_TEAM_BODY,
        "kind": "campaign",
        "campaign_code": _CAMPAIGN,
        "active": True,
        "previous_kind": "permanent",
        "previous_unit_path": _HALONG,
        "members": 42,
        "previous_active": True,
    },
    reg.TEAM_DEACTIVATED: {
        "code": _TEAM,
        "kind": "permanent",
        "unit_code": "QN-HALONG",
        "unit_path": _HALONG,
        "members": 42,
    },
    reg.VOLUNTEER_REGISTERED: _VOLUNTEER_BODY,
    reg.VOLUNTEER_UPDATED: {
        **_VOLUNTEER_BODY,
        "unit_code": "QN-VANDON",
        "unit_path": _VANDON,
        "skills": ["it", "vneid", "teaching"],
        "active": True,
        "previous_unit_path": _HALONG,
        "previous_roles": ["union_member", "student"],
        "previous_skills": ["it", "vneid"],
    },
    reg.VOLUNTEER_REGISTERED_V2: _VOLUNTEER_BODY_V2,
    reg.VOLUNTEER_UPDATED_V2: {
        **_VOLUNTEER_BODY_V2,
        "unit_code": "QN-VANDON",
        "unit_path": _VANDON,
        "skills": ["it", "vneid", "teaching"],
        "active": True,
        "previous_unit_path": _HALONG,
        "previous_roles": ["union_member", "student"],
        "previous_skills": ["it", "vneid"],
    },
    reg.VOLUNTEER_LEFT: {
        "volunteer_id": _V1,
        "unit_code": "QN-HALONG",
        "unit_path": _HALONG,
        "roles": ["union_member", "student"],
        "skills": ["it", "vneid"],
    },
    reg.MEMBERSHIP_STARTED: {
        "team_code": _TEAM,
        "volunteer_id": _V1,
        "since": "2025-07-01",
        "team_kind": "permanent",
        "team_unit_path": _HALONG,
        "team_active": True,
    },
    reg.MEMBERSHIP_ENDED: {
        "team_code": _TEAM,
        "volunteer_id": _V1,
        "until": "2025-09-30",
        "team_kind": "permanent",
        "team_unit_path": _HALONG,
        "team_active": True,
    },
    reg.CAMPAIGN_CREATED: {
        "code": _CAMPAIGN,
        "name": "Chiến dịch “Bình dân học vụ số” năm 2025",
        "starts_on": "2025-07-01",
        "ends_on": "2025-12-31",
        "targets": _TARGETS,
    },
    reg.CAMPAIGN_TARGETS_SET: {
        "code": _CAMPAIGN,
        "targets": [*_TARGETS, {"indicator": "outreach_posts", "unit_code": "QN", "value": 2000, "merged_from": []}],
    },
    vis.VISIT_RECORDED: {
        "visit_id": _VISIT,
        "client_ref": "tablet-07/2025-07-12/0003",
        "team_code": _TEAM,
        "setting": "household",
        "area": "urban",
        "household_ref": "hh-5c1e9a0f27b4",
        "volunteer_ids": [_V1, _V2],
        "recorded_at": "2025-07-12T03:15:00Z",
        "figures": _FIGURES,
    },
    vis.VISIT_CORRECTED: {
        "visit_id": _VISIT,
        "team_code": _TEAM,
        "setting": "household",
        "area": "urban",
        "household_ref": "hh-5c1e9a0f27b4",
        "volunteer_ids": [_V1, _V2],
        "corrected_at": "2025-07-12T09:40:00Z",
        "figures": {**_FIGURES, "services": {**_FIGURES["services"], "online_applications_l4": 2}},
        "previous": _FIGURES,
    },
    vis.VISIT_VOIDED: {
        "visit_id": _VISIT,
        "reason": "duplicate",
        "voided_at": "2025-07-13T01:05:00Z",
        "figures": _FIGURES,
    },
    vis.OUTREACH_PUBLISHED: {
        "post_id": _POST,
        "client_ref": "web/2025-07-15/hdsd-vneid",
        "unit_code": "QN-HALONG",
        "unit_path": _HALONG,
        "team_code": _TEAM,
        "channel": "fanpage",
        "published_on": "2025-07-15",
        "title": "Hướng dẫn kích hoạt tài khoản định danh điện tử mức độ 2",
        "url": "https://www.facebook.com/tuoitrehalong/posts/1234567890",
    },
    vis.OUTREACH_VOIDED: {
        "post_id": _POST,
        "reason": "posted twice",
        "unit_code": "QN-HALONG",
        "unit_path": _HALONG,
        "team_code": _TEAM,
        "channel": "fanpage",
        "published_on": "2025-07-15",
    },
    trn.COURSE_SCHEDULED: {
        "course": _COURSE_REF,
        "client_ref": "web/2025-07-01/lop-vneid-14",
        "title": "Bình dân học vụ số: VNeID và dịch vụ công trực tuyến",
        "team_code": _TEAM,
        "mode": "in_person",
        "topics": ["vneid", "online_public_services"],
        "capacity": 30,
    },
    trn.COURSE_STARTED: {"course": _COURSE_REF, "started_on": "2025-07-14"},
    trn.SESSION_HELD: {
        "course": _COURSE_REF,
        "session_id": _SESSION,
        "held_on": "2025-07-16",
        "duration_minutes": 90,
        "attendance_kind": "head_count",
        "attendance": 24,
        "participants": {"before": 18, "after": 24},
    },
    trn.PARTICIPANT_ENROLLED: {
        "course": _COURSE_REF,
        "participant_id": _PARTICIPANT,
        "group": "elderly",
        "participants": {"before": 11, "after": 12},
    },
    trn.PARTICIPANT_COMPLETED: {
        "course": _COURSE_REF,
        "participant_id": _PARTICIPANT,
        "completions": {"before": 4, "after": 5},
    },
    trn.COURSE_COMPLETED: {
        "course": _COURSE_REF,
        "final_participants": 26,
        "final_completions": 21,
        "participants": {"before": 24, "after": 26},
        "completions": {"before": 0, "after": 21},
    },
    trn.COURSE_CANCELLED: {
        "course": _COURSE_REF,
        "reason": "storm warning",
        "participants": {"before": 12, "after": 0},
        "completions": {"before": 0, "after": 0},
    },
    rpt.PERIOD_CLOSED: {
        "period": _PERIOD,
        "closed_at": "2025-07-14T02:10:00Z",
        "closed_by": "manager-qn-halong",
        "reported": {
            "households_visited": 42,
            "people_supported": 131,
            "online_applications": {"l3": 12, "l4": 5, "total": 17},
        },
        "version": 1,
    },
    rpt.PERIOD_APPROVED: {
        "period": _PERIOD,
        "approved_at": "2025-07-14T08:30:00Z",
        "approved_by": "manager-qn",
        "version": 1,
    },
    rpt.PERIOD_REOPENED: {
        "period": _PERIOD,
        "reopened_at": "2025-07-21T01:00:00Z",
        "reopened_by": "admin-province",
        "reason": "Số liệu tuần bão về muộn / The typhoon week's records arrived late",
        "version": 1,
    },
}
EXAMPLE_TIME = "2025-07-12T03:15:00Z"


def example_payload(event_type: str) -> BaseModel:
    """The example as a validated model; fails when it drifts from the contract."""
    data = EXAMPLES[event_type]
    model = EVENT_TYPES[event_type].model_validate(data)
    # Every field appears in the example, exactly as a producer would serialize it.
    if model.model_dump(mode="json") != data:
        raise ValueError(f"example of {event_type} is not in the producer's serialized form")
    return model


def example_key(event_type: str) -> str:
    model = example_payload(event_type)
    return EVENT_DOCS[event_type].key.format(**{name: getattr(model, name) for name in type(model).model_fields})


def example_headers(event_type: str) -> dict[str, str]:
    """CloudEvents headers of the example message, as :class:`shared.envelope.Envelope` writes them."""
    key = example_key(event_type)
    return {
        "ce_specversion": SPEC_VERSION,
        "ce_id": str(uuid.uuid5(uuid.NAMESPACE_URL, ID_BASE + event_type)),
        "ce_source": source_of(event_type),
        "ce_type": event_type,
        "ce_time": EXAMPLE_TIME,
        "ce_dataschema": dataschema(event_type),
        "content-type": CONTENT_TYPE,
        "ce_subject": key,
    }


def source_of(event_type: str) -> str:
    return "/" + PRODUCER_OF_TOPIC[TOPIC_OF_TYPE[event_type]]


# --- JSON Schema per event type --------------------------------------------------------------------


def schema_id(event_type: str) -> str:
    """The schema's ``$id``: the ``ce_dataschema`` every event of the type carries."""
    return dataschema(event_type)


def event_schema(event_type: str, model: type[BaseModel] | None = None) -> dict[str, Any]:
    """The JSON Schema 2020-12 of one event type's payload (``model`` overrides, for tests)."""
    raw = (model or EVENT_TYPES[event_type]).model_json_schema(mode=SCHEMA_MODE)
    doc = EVENT_DOCS[event_type]
    head: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": schema_id(event_type),
        "title": raw.pop("title"),
        "description": doc.description,
        "x-event-type": event_type,
        "x-topic": TOPIC_OF_TYPE[event_type],
        "x-kafka-key": doc.key_description,
    }
    raw.pop("description", None)
    return {**head, **raw, "examples": [EXAMPLES[event_type]]}


def event_schemas() -> dict[str, dict[str, Any]]:
    return {t: event_schema(t) for t in sorted(EVENT_TYPES)}


# --- AsyncAPI 3.0 ----------------------------------------------------------------------------------

_INFO_DESCRIPTION = """\
The events Digital Bridge publishes on Apache Kafka, for integrators.

Every message is a CloudEvents 1.0 event in Kafka binary content mode: the CloudEvents attributes
travel as `ce_*` headers, the message value is the JSON payload (UTF-8, `content-type:
application/json`) and the Kafka key is the id of the aggregate the event is about.

- Delivery is at least once: de-duplicate on the `ce_id` header.
- Order is guaranteed per key only (one aggregate is always in one partition). Events carry
  `unit_path`, so no ordering across keys or topics is needed to place a figure in the unit tree.
- Event topics are kept forever: read from the beginning to rebuild state.
- A published type (`...v1`) only changes backward-compatibly: fields may be added, never removed,
  renamed, retyped or made required, and enum values are never removed. Ignore fields and enum values
  you do not know. A breaking change is a new type (`...v2`) published alongside the old one.
- Events carry ids, codes and counts; never a person's name or contact details.

The quick start is docs/events/README.md. Each service serves its part of this document at
`GET /v1/events/catalog`.
"""

_HEADER_DOCS: dict[str, tuple[str, dict[str, Any]]] = {
    "ce_specversion": ("CloudEvents version.", {"const": SPEC_VERSION}),
    "ce_id": ("Unique id of the event (a UUID). A redelivered event keeps its id: de-duplicate on it.", {}),
    "ce_source": ("The producing service.", {}),
    "ce_type": ("The event type; selects the payload schema.", {}),
    "ce_time": ("When the event happened, RFC 3339 in UTC (`Z`).", {"format": "date-time"}),
    "ce_subject": ("The aggregate the event is about; equal to the Kafka key.", {}),
    "ce_dataschema": (
        "URI of the payload's JSON Schema (its file's `$id`). Events sent before contract v2 lack it.",
        {"format": "uri"},
    ),
    "ce_traceparent": (
        "W3C trace context of the span that published the event (CloudEvents distributed-tracing "
        "extension); only when tracing is on.",
        {"pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
    ),
    "content-type": ("Media type of the message value.", {"const": CONTENT_TYPE}),
}


OPTIONAL_HEADERS = ("ce_subject", "ce_dataschema", "ce_traceparent")


def _headers_schema(event_type: str) -> dict[str, Any]:
    fixed = {"ce_source": source_of(event_type), "ce_type": event_type, "ce_dataschema": dataschema(event_type)}
    props: dict[str, Any] = {}
    for name, (text, extra) in _HEADER_DOCS.items():
        prop: dict[str, Any] = {"type": "string", "description": text, **extra}
        if name in fixed:
            prop["const"] = fixed[name]
        props[name] = prop
    return {
        "type": "object",
        "required": [h for h in _HEADER_DOCS if h not in OPTIONAL_HEADERS],
        "properties": props,
    }


def _short(event_type: str) -> str:
    """``org.youthunion.visits.visit.recorded.v1`` -> ``visit.recorded.v1``."""
    return event_type.split(".", 3)[3]


def _topic_config(spec: TopicSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in sorted(spec.config.items()):
        if name == "cleanup.policy":
            out[name] = value.split(",")
        elif name in ("retention.ms", "retention.bytes"):
            out[name] = int(value)
    return out


def _retention_text(spec: TopicSpec) -> str:
    ms = int(spec.config.get("retention.ms", "604800000"))
    return "kept forever (`retention.ms=-1`)" if ms < 0 else f"kept {ms // 86_400_000} days (`retention.ms={ms}`)"


def _event_channel(spec: TopicSpec, types: list[str]) -> dict[str, Any]:
    description = (
        f"{_TOPIC_DOCS[spec.name]} Published by the {PRODUCER_OF_TOPIC[spec.name]} service; each message "
        "names its Kafka key.\n\n"
        f"Partitioning: {spec.partitions} partitions; the partition is murmur2(key) modulo the partition "
        "count (Kafka's default partitioner), so all events of one key are in one partition, in the order "
        "they were published. There is no order across keys or topics.\n\n"
        f"Retention: {_retention_text(spec)}; read from the beginning to rebuild state."
    )
    return {
        "address": spec.name,
        "title": spec.name,
        "summary": spec.description,
        "description": description,
        "messages": {_short(t): {"$ref": f"#/components/messages/{t}"} for t in types},
        "bindings": {
            "kafka": {
                "topic": spec.name,
                "partitions": spec.partitions,
                "replicas": spec.replication_factor,
                "topicConfiguration": _topic_config(spec),
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _dlq_channel(spec: TopicSpec) -> dict[str, Any]:
    return {
        "address": spec.name,
        "title": spec.name,
        "summary": "Internal dead-letter topic; not part of the public contract.",
        "description": (
            "Events that one of our consumers could not process, copied unchanged (key, value, `ce_*` "
            "headers) with `dlq_error`, `dlq_consumer`, `dlq_topic`, `dlq_partition` and `dlq_offset` "
            f"headers added. Do not subscribe to it. Retention: {_retention_text(spec)}."
        ),
        "bindings": {
            "kafka": {
                "topic": spec.name,
                "partitions": spec.partitions,
                "replicas": spec.replication_factor,
                "topicConfiguration": _topic_config(spec),
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
        "x-internal": True,
    }


def _message(event_type: str) -> dict[str, Any]:
    doc = EVENT_DOCS[event_type]
    return {
        "name": event_type,
        "title": doc.title,
        "description": doc.description,
        "contentType": CONTENT_TYPE,
        "headers": _headers_schema(event_type),
        "payload": {"$ref": f"#/components/schemas/{EVENT_TYPES[event_type].__name__}"},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": doc.key_description, "examples": [example_key(event_type)]},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
        "examples": [
            {
                "name": _short(event_type),
                "summary": f"{doc.title} (key `{example_key(event_type)}`)",
                "headers": example_headers(event_type),
                "payload": EXAMPLES[event_type],
            }
        ],
        "x-key-template": doc.key,
        "x-schema-id": schema_id(event_type),
    }


def _operation_id(topic: str) -> str:
    return "publish" + PRODUCER_OF_TOPIC[topic].capitalize() + "Events"


@cache
def _document() -> dict[str, Any]:
    missing = set(EVENT_TYPES) ^ set(EVENT_DOCS)
    if missing or set(EVENT_TYPES) != set(EXAMPLES):
        raise ValueError(f"event types without a description or example: {sorted(missing or EVENT_TYPES)}")
    specs = {s.name: s for s in load_topics()}
    types_of: dict[str, list[str]] = {topic: [] for topic in EVENT_TOPICS}
    for event_type in sorted(EVENT_TYPES):
        types_of[TOPIC_OF_TYPE[event_type]].append(event_type)
    models = sorted(set(EVENT_TYPES.values()), key=lambda m: m.__name__)
    _, defs = models_json_schema([(m, SCHEMA_MODE) for m in models], ref_template="#/components/schemas/{model}")
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in EVENT_TOPICS:
        channels[topic] = _event_channel(specs[topic], types_of[topic])
        operations[_operation_id(topic)] = {
            "action": "send",
            "title": f"The {PRODUCER_OF_TOPIC[topic]} service publishes to {topic}",
            "channel": {"$ref": f"#/channels/{topic}"},
            "messages": [{"$ref": f"#/channels/{topic}/messages/{_short(t)}"} for t in types_of[topic]],
        }
    for name in sorted(specs):
        if name not in channels:
            channels[name] = _dlq_channel(specs[name])
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Digital Bridge events",
            "version": CATALOG_VERSION,
            "description": _INFO_DESCRIPTION,
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The broker of `make run`; ask the operators for the production address.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {t: _message(t) for t in sorted(EVENT_TYPES)},
            "schemas": dict(sorted(defs["$defs"].items())),
        },
    }


def asyncapi_document(service: str | None = None) -> dict[str, Any]:
    """The AsyncAPI document; for a producing service, only its channels and what they reference."""
    doc = copy.deepcopy(_document())
    topics = SERVICE_TOPICS.get(service or "")
    if topics is None:
        return doc
    doc["info"]["description"] += f"\nThis is the part produced by the {service} service.\n"
    doc["channels"] = {k: v for k, v in doc["channels"].items() if v["address"] in topics}
    doc["operations"] = {k: v for k, v in doc["operations"].items() if _ref_target(v["channel"]) in doc["channels"]}
    refs = set(_refs(doc["channels"]))
    doc["components"]["messages"] = {k: v for k, v in doc["components"]["messages"].items() if k in refs}
    schemas = doc["components"]["schemas"]
    wanted: set[str] = set()
    todo = list(_refs(doc["components"]["messages"]))
    while todo:
        name = todo.pop()
        if name in schemas and name not in wanted:
            wanted.add(name)
            todo.extend(_refs(schemas[name]))
    doc["components"]["schemas"] = {k: v for k, v in schemas.items() if k in wanted}
    return doc


def _ref_target(node: Mapping[str, Any]) -> str:
    return str(node["$ref"]).rsplit("/", 1)[1]


def _refs(node: Any) -> Iterator[str]:
    """The last segment of every ``$ref`` under ``node``."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v.rsplit("/", 1)[1]
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


# --- rendering and files ---------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # the same example dict used twice must be written out twice, not as an alias


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def to_yaml(doc: Mapping[str, Any]) -> str:
    header = "# Generated by `make contract` (python -m scripts.cli contract) from shared/contracts. Do not edit.\n"
    return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def to_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Every generated file (path relative to ``docs/events``) and its content."""
    files = {ASYNCAPI_FILE: to_yaml(asyncapi_document())}
    for event_type, schema in event_schemas().items():
        files[f"{SCHEMAS_DIR}/{event_type}.json"] = to_json(schema)
    return files


def write(target: Path | None = None) -> list[Path]:
    """Write the catalogue and drop schema files of types that no longer exist; return what changed."""
    target = target or events_dir()
    files = render()
    changed: list[Path] = []
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    for path in sorted((target / SCHEMAS_DIR).glob("*.json")):
        if f"{SCHEMAS_DIR}/{path.name}" not in files:
            path.unlink()
            changed.append(path)
    return changed


def stale_files(target: Path | None = None) -> list[str]:
    """Generated files that differ from (or are missing on, or extra on) disk."""
    target = target or events_dir()
    files = render()
    out = [rel for rel, text in files.items() if _read(target / rel) != text]
    out += [
        f"{SCHEMAS_DIR}/{p.name}"
        for p in sorted((target / SCHEMAS_DIR).glob("*.json"))
        if f"{SCHEMAS_DIR}/{p.name}" not in files
    ]
    return out


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


# --- the compatibility gate ------------------------------------------------------------------------


def committed_schemas(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """The baseline for the gate: every schema in ``HEAD`` plus uncommitted ones from the working tree.

    A schema committed in ``HEAD`` wins over the working-tree file, so regenerating the files after a
    breaking change does not make the break invisible.
    """
    root = root or repo_root()
    rel_dir = events_dir().relative_to(repo_root()) / SCHEMAS_DIR
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((root / rel_dir).glob("*.json")):
        out[path.name.removesuffix(".json")] = json.loads(path.read_text(encoding="utf-8"))
    listed = _git(root, "ls-tree", "--name-only", "HEAD", f"{rel_dir.as_posix()}/")
    for name in (listed or "").splitlines():
        if name.endswith(".json"):
            text = _git(root, "show", f"HEAD:{name}")
            if text is not None:
                out[Path(name).name.removesuffix(".json")] = json.loads(text)
    return out


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(  # noqa: S603 - fixed git subcommands on our own checkout
            ["git", "-C", str(root), *args],  # noqa: S607 - git from PATH, like a developer's shell
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def compatibility_report(
    baseline: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Every break of a published type: a removed type, or an incompatible schema change."""
    out: list[str] = []
    for event_type in sorted(baseline):
        if event_type not in current:
            out.append(f"{event_type}: the event type was removed (publish it until it is retired)")
            continue
        out += [f"{event_type}: {p}" for p in incompatibilities(baseline[event_type], current[event_type])]
    return out


def incompatibilities(old_schema: Mapping[str, Any], new_schema: Mapping[str, Any]) -> list[str]:
    """Backward-incompatible differences from ``old_schema`` to ``new_schema`` (empty: compatible).

    Reported: a removed or renamed field, a changed type (including a field that became nullable), a
    new required field or a field that became required, a narrowed enum, and a tightened constraint
    (bounds, length, pattern, format). Adding an optional field, widening an enum, loosening a
    constraint and editing descriptions are compatible. ``$ref``s into ``$defs`` are resolved.
    """
    out: list[str] = []
    _Compare(old_schema, new_schema, out).node(old_schema, new_schema, "", frozenset())
    return out


_NULL = {"type": "null"}
_LOWER = (("minimum", False), ("exclusiveMinimum", True))
_UPPER = (("maximum", False), ("exclusiveMaximum", True))


class _Compare:
    def __init__(self, old_root: Mapping[str, Any], new_root: Mapping[str, Any], out: list[str]) -> None:
        self.roots = (old_root, new_root)
        self.out = out

    def report(self, path: str, text: str) -> None:
        self.out.append(f"'{path or '<payload>'}' {text}")

    def node(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str, seen: frozenset[tuple[str, str]]) -> None:
        old, old_ref = _resolve(self.roots[0], old)
        new, new_ref = _resolve(self.roots[1], new)
        if old_ref or new_ref:
            if (old_ref, new_ref) in seen:
                return  # a recursive model: this pair is already being compared further up
            seen = seen | {(old_ref, new_ref)}
        old_null, old = _split_null(self.roots[0], old)
        new_null, new = _split_null(self.roots[1], new)
        old_types = _types(old) | ({"null"} if old_null else set())
        new_types = _types(new) | ({"null"} if new_null else set())
        if old_types and old_types != new_types:
            self.report(path, f"changed type from {_show(old_types)} to {_show(new_types) or 'any'}")
            return
        self.enum(old, new, path)
        self.constraints(old, new, path)
        if "object" in old_types or "properties" in old:
            self.properties(old, new, path, seen)
        if "items" in old and isinstance(old["items"], Mapping) and isinstance(new.get("items"), Mapping):
            self.node(old["items"], new["items"], f"{path}[]", seen)
        self.unions(old, new, path)

    def enum(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        old_values, new_values = _enum(old), _enum(new)
        if new_values is None:
            return
        if old_values is None:
            self.report(path, f"narrowed to the enum {new_values}")
            return
        removed = [v for v in old_values if v not in new_values]
        if removed:
            self.report(path, f"narrowed its enum: {removed} no longer allowed")

    def constraints(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        lo_old, lo_new = _bound(old, _LOWER, max), _bound(new, _LOWER, max)
        if lo_new is not None and (lo_old is None or _tighter(lo_new, lo_old, higher=True)):
            self.report(path, f"raised its lower bound from {_show_bound(lo_old)} to {_show_bound(lo_new)}")
        hi_old, hi_new = _bound(old, _UPPER, min), _bound(new, _UPPER, min)
        if hi_new is not None and (hi_old is None or _tighter(hi_new, hi_old, higher=False)):
            self.report(path, f"lowered its upper bound from {_show_bound(hi_old)} to {_show_bound(hi_new)}")
        for kw in ("minLength", "minItems"):
            if kw in new and new[kw] > old.get(kw, 0):
                self.report(path, f"raised {kw} from {old.get(kw, 0)} to {new[kw]}")
        for kw in ("maxLength", "maxItems"):
            if kw in new and (kw not in old or new[kw] < old[kw]):
                self.report(path, f"lowered {kw} to {new[kw]}")
        for kw in ("pattern", "format"):
            if kw in new and new[kw] != old.get(kw):
                self.report(path, f"changed {kw} from {old.get(kw)!r} to {new[kw]!r}")

    def properties(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: str, seen: frozenset[tuple[str, str]]
    ) -> None:
        old_props: Mapping[str, Any] = old.get("properties", {})
        new_props: Mapping[str, Any] = new.get("properties", {})
        old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
        added = [p for p in new_props if p not in old_props]
        for name in old_props:
            if name not in new_props:
                hint = f" (renamed? new fields: {', '.join(added)})" if added else ""
                self.report(_join(path, name), f"was removed or renamed{hint}")
        for name in new_props:
            if name in new_required and name not in old_required:
                if name in old_props:
                    self.report(_join(path, name), "became required")
                else:
                    self.report(_join(path, name), "is a new required field")
        for name, old_prop in old_props.items():
            if name in new_props:
                self.node(old_prop, new_props[name], _join(path, name), seen)

    def unions(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        for kw in ("anyOf", "oneOf"):
            old_branches = [b for b in old.get(kw, ()) if b != _NULL]
            new_branches = [b for b in new.get(kw, ()) if b != _NULL]
            for i, branch in enumerate(old_branches):
                if not any(_branch_accepts(self.roots, branch, nb) for nb in new_branches):
                    self.report(path, f"no longer accepts {kw} branch {i} of the old schema")


def _branch_accepts(roots: tuple[Mapping[str, Any], Mapping[str, Any]], old: Any, new: Any) -> bool:
    probe: list[str] = []
    _Compare(roots[0], roots[1], probe).node(old, new, "", frozenset())
    return not probe


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _resolve(root: Mapping[str, Any], node: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """Follow local ``$ref``s; keywords next to a ``$ref`` (2020-12 allows them) are kept."""
    ref = ""
    hops = 0
    while "$ref" in node:
        ref = str(node["$ref"])
        if not ref.startswith("#"):
            raise ValueError(f"only local $refs are supported, got {ref!r}")
        target: Any = root
        for part in ref[1:].split("/")[1:]:
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        hops += 1
        if hops > 50:
            raise ValueError(f"$ref loop at {ref!r}")
    return node, ref


def _split_null(root: Mapping[str, Any], node: Mapping[str, Any]) -> tuple[bool, Mapping[str, Any]]:
    """``X | None`` (``anyOf: [X, {type: null}]``) -> (True, X)."""
    branches = node.get("anyOf")
    if isinstance(branches, list) and _NULL in branches:
        rest = [b for b in branches if b != _NULL]
        if len(rest) == 1:
            inner, _ = _resolve(root, rest[0])
            siblings = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
            return True, {**inner, **siblings}
        return True, {**node, "anyOf": rest}
    return False, node


_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}


def _types(node: Mapping[str, Any]) -> set[str]:
    t = node.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {str(x) for x in t}
    values = _enum(node)
    if values is not None:
        return {_JSON_TYPES.get(type(v), "object") for v in values}
    if "properties" in node:
        return {"object"}
    return set()


def _enum(node: Mapping[str, Any]) -> list[Any] | None:
    if "const" in node:
        return [node["const"]]
    if "enum" in node:
        return list(node["enum"])
    return None


def _bound(node: Mapping[str, Any], keywords: tuple[tuple[str, bool], ...], pick: Any) -> tuple[float, bool] | None:
    found = [(float(node[kw]), exclusive) for kw, exclusive in keywords if kw in node]
    if not found:
        return None
    value = pick(v for v, _ in found)
    return value, any(e for v, e in found if v == value)


def _tighter(new: tuple[float, bool], old: tuple[float, bool], *, higher: bool) -> bool:
    if new[0] != old[0]:
        return new[0] > old[0] if higher else new[0] < old[0]
    return new[1] and not old[1]


def _show_bound(bound: tuple[float, bool] | None) -> str:
    if bound is None:
        return "none"
    return f"{bound[0]:g} ({'exclusive' if bound[1] else 'inclusive'})"


def _show(types: set[str]) -> str:
    return "|".join(sorted(types))


# --- the personal-data check -----------------------------------------------------------------------

# Field names that always mean a person's contact details, identity documents or name.
_PERSONAL_PATTERNS = re.compile(
    r"(phone|mobile|email|e_mail|zalo|facebook_id|address|street|full_?name|first_?name|last_?name|"
    r"given_?name|family_?name|surname|middle_?name|display_?name|nick_?name|user_?name|"
    r"national_?id|citizen_?id|id_card|id_number|identity|cccd|cmnd|passport|date_of_birth|birth_?date|"
    r"dob|birthday)"
)
# ``name`` and ``title`` are personal on a person and fine on an organisation or a publication: only
# these models may have them.
ORG_NAME_FIELDS: dict[str, frozenset[str]] = {
    "UnitCreated": frozenset({"name"}),
    "UnitUpdated": frozenset({"name"}),
    "TeamCreated": frozenset({"name"}),
    "TeamUpdated": frozenset({"name"}),
    "CampaignCreated": frozenset({"name"}),
    "CourseScheduled": frozenset({"title"}),
    "OutreachPublished": frozenset({"title"}),
}
_NAME_LIKE = re.compile(r"^(?:(?P<owner>[a-z0-9_]+)_)?(?:name|names|title)$")
# ``<owner>_name`` is an organisation's name when the owner is one (``unit_name``, ``team_title``).
ORG_OWNERS = frozenset({"unit", "parent", "team", "campaign", "course", "centre", "base", "school", "channel"})


def personal_data_fields(schema: Mapping[str, Any]) -> list[str]:
    """Fields of an event schema (and every model it references) that could carry personal data.

    A field is flagged when its name is a contact detail, an identity document or a person's name
    (``phone``, ``email``, ``address``, ``full_name``, ``display_name``, ``national_id``...), or when it
    is a ``name``/``title``/``*_name`` field on a model that is not an organisation or a publication
    (:data:`ORG_NAME_FIELDS`). Results read ``Model.field``.
    """
    out: list[str] = []
    for title, node in _object_schemas(schema):
        allowed = ORG_NAME_FIELDS.get(title, frozenset())
        for name in node.get("properties", {}):
            lowered = name.lower()
            name_like = _NAME_LIKE.match(lowered)
            if name_like and name_like["owner"] is None:
                personal = lowered not in allowed
            elif name_like:
                personal = name_like["owner"] not in ORG_OWNERS
            else:
                personal = False
            if personal or _PERSONAL_PATTERNS.search(lowered):
                out.append(f"{title}.{name}")
    return sorted(set(out))


def _object_schemas(schema: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every object schema under ``schema`` (definitions included) with the model title it belongs to."""
    stack: list[tuple[str, Any]] = [(str(schema.get("title", "<payload>")), schema)]
    while stack:
        owner, node = stack.pop()
        if isinstance(node, Mapping):
            title = str(node.get("title", owner)) if "properties" in node else owner
            if "properties" in node:
                yield title, node
            for key, child in node.items():
                if key in ("examples", "default", "const", "enum"):
                    continue
                if key == "properties" and isinstance(child, Mapping):
                    stack.extend((title, sub) for sub in child.values())
                elif key == "$defs" and isinstance(child, Mapping):
                    stack.extend((name, sub) for name, sub in child.items())
                else:
                    stack.append((title, child))
        elif isinstance(node, list):
            stack.extend((owner, item) for item in node)


# --- serving ---------------------------------------------------------------------------------------


@cache
def _catalog_bytes(service: str) -> bytes:
    return orjson.dumps(asyncapi_document(service))


def catalog_router(service_name: str) -> APIRouter:
    """``GET /v1/events/catalog``: the AsyncAPI document of the events this service produces."""
    router = APIRouter(tags=["events"])

    @router.get(
        "/v1/events/catalog",
        summary="AsyncAPI 3.0 catalogue of the events this service publishes",
        description="Public and unauthenticated: the channels (Kafka topics), messages, CloudEvents headers, "
        "keys and JSON Schemas of the events this service produces (every event for services that only "
        "consume). The full catalogue is docs/events/asyncapi.yaml.",
        response_class=Response,
        responses={200: {"content": {"application/json": {}}, "description": "An AsyncAPI 3.0 document"}},
    )
    async def events_catalog() -> Response:
        return Response(_catalog_bytes(service_name), media_type="application/json")

    return router
