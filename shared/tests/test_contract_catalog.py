"""The event catalogue: generated files are current, complete, compatible and free of personal data."""

from __future__ import annotations

import copy
import json
import re
from datetime import date, datetime
from typing import Any, Literal

import orjson
import pytest
from pydantic import Field

from shared import catalog
from shared.catalog import (
    asyncapi_document,
    committed_schemas,
    compatibility_report,
    event_schema,
    event_schemas,
    incompatibilities,
    personal_data_fields,
)
from shared.contracts import EVENT_TYPES, TOPIC_OF_TYPE
from shared.contracts import visits as vis
from shared.contracts.common import Area, Contract, Setting, UnitPath
from shared.envelope import decode, make_event
from shared.topics import EVENT_TOPICS, load_topics

# --- staleness and coverage ------------------------------------------------------------------------


def test_committed_catalog_files_are_exactly_what_make_contract_generates() -> None:
    stale = catalog.stale_files()
    assert stale == [], f"docs/events is out of date, run `make contract`: {stale}"
    on_disk = {p.name.removesuffix(".json") for p in (catalog.events_dir() / "schemas").glob("*.json")}
    assert on_disk == set(EVENT_TYPES)


def test_asyncapi_document_covers_every_topic_with_its_partitions_and_retention() -> None:
    doc = asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    by_address = {c["address"]: c for c in doc["channels"].values()}
    specs = load_topics()
    assert set(by_address) == {s.name for s in specs}
    for spec in specs:
        kafka = by_address[spec.name]["bindings"]["kafka"]
        assert kafka["partitions"] == spec.partitions
        assert kafka["topicConfiguration"]["retention.ms"] == int(spec.config["retention.ms"])
    for topic in EVENT_TOPICS:
        channel = by_address[topic]
        assert "murmur2(key)" in channel["description"]
        assert "kept forever" in channel["description"]
        refs = {m["$ref"].rsplit("/", 1)[1] for m in channel["messages"].values()}
        assert refs == {t for t, tt in TOPIC_OF_TYPE.items() if tt == topic}
    assert all(c.get("x-internal") for a, c in by_address.items() if a.endswith(".dlq"))


def test_every_message_documents_headers_key_schema_and_an_example() -> None:
    doc = asyncapi_document()
    messages = doc["components"]["messages"]
    assert set(messages) == set(EVENT_TYPES)
    for event_type, message in messages.items():
        headers = message["headers"]
        assert set(headers["required"]) == {
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "content-type",
        }
        assert headers["properties"]["ce_type"]["const"] == event_type
        assert message["bindings"]["kafka"]["key"]["description"]
        assert len(message["description"]) > 40, f"{event_type} needs a description for an outside reader"
        payload_ref = message["payload"]["$ref"].rsplit("/", 1)[1]
        assert payload_ref == EVENT_TYPES[event_type].__name__
        assert payload_ref in doc["components"]["schemas"]
        schema = event_schemas()[event_type]
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(f"/schemas/{event_type}.json")


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_example_message_is_what_a_producer_sends_and_a_consumer_decodes(event_type: str) -> None:
    example = asyncapi_document()["components"]["messages"][event_type]["examples"][0]
    key = example["headers"]["ce_subject"]
    headers = [(k, v.encode()) for k, v in example["headers"].items()]
    envelope = decode(key.encode(), orjson.dumps(example["payload"]), headers)
    assert envelope.type == event_type
    assert envelope.data == example["payload"]
    real = make_event(event_type, envelope.payload(), source=catalog.source_of(event_type), key=key)
    assert {k for k, _ in real.headers()} == set(example["headers"])
    assert real.value() == orjson.dumps(example["payload"])


def test_example_keys_follow_the_documented_key_rule() -> None:
    assert catalog.example_key(vis.VISIT_RECORDED) == catalog.EXAMPLES[vis.VISIT_RECORDED]["visit_id"]
    assert catalog.example_key("org.youthunion.registry.membership.started.v1") == (
        "QN-HALONG-TNTN-01/3f6b1c2e-8a4d-4e7b-9c1a-5d2e7f8a9b01"
    )
    assert catalog.example_key("org.youthunion.training.session.held.v1") == "QN-HALONG-BDHVS-2025-014"


# --- the compatibility gate ------------------------------------------------------------------------


def test_no_published_event_type_changed_incompatibly_since_the_last_commit() -> None:
    baseline = committed_schemas()
    assert baseline, "no committed schemas found: run `make contract`"
    report = compatibility_report(baseline, event_schemas())
    assert report == [], "incompatible change to a published event type; add a .v2 type instead:\n" + "\n".join(report)


def _object(props: dict[str, Any], required: list[str], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if defs:
        schema["$defs"] = defs
    return schema


_KIND = {"enum": ["household", "service_centre"], "type": "string", "title": "Setting"}
_INNER = _object({"total": {"type": "integer", "minimum": 0}}, ["total"])
BASE = _object(
    {
        "visit_id": {"type": "string"},
        "setting": {"$ref": "#/$defs/Setting"},
        "people": {"$ref": "#/$defs/People"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "ids": {"type": "array", "items": {"type": "string"}},
    },
    ["visit_id", "setting", "people", "ids"],
    {"Setting": _KIND, "People": _INNER},
)


def _changed(edit: Any) -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    edit(new)
    return new


def _rename(s: dict[str, Any]) -> None:
    s["properties"]["id"] = s["properties"].pop("visit_id")
    s["required"] = ["id", "setting", "people", "ids"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s["properties"].pop("ids"), r"'ids' was removed"),
        (_rename, r"'visit_id' was removed or renamed \(renamed\? new fields: id\)"),
        (lambda s: s["properties"].update(visit_id={"type": "integer"}), r"'visit_id' changed type from string to"),
        (lambda s: s["$defs"]["People"]["properties"]["total"].update(type="number"), r"'people.total' changed type"),
        (lambda s: s["properties"]["ids"]["items"].update(type="integer"), r"'ids\[\]' changed type"),
        (
            lambda s: s["properties"].update(visit_id={"anyOf": [{"type": "string"}, {"type": "null"}]}),
            r"from string to null\|string",
        ),
        (
            lambda s: (s["properties"].update(room={"type": "string"}), s["required"].append("room")),
            r"'room' is a new required field",
        ),
        (lambda s: s["required"].append("note"), r"'note' became required"),
        (
            lambda s: s["$defs"]["Setting"].update(enum=["household"]),
            r"'setting' narrowed its enum: \['service_centre'\]",
        ),
        (
            lambda s: s["properties"].update(visit_id={"type": "string", "enum": ["a"]}),
            r"'visit_id' narrowed to the enum",
        ),
        (
            lambda s: s["$defs"]["People"]["properties"]["total"].update(minimum=1),
            r"'people.total' raised its lower bound from 0 \(inclusive\) to 1",
        ),
        (
            lambda s: s["$defs"]["People"]["properties"]["total"].update(exclusiveMinimum=0),
            r"'people.total' raised its lower bound from 0 \(inclusive\) to 0 \(exclusive\)",
        ),
        (lambda s: s["properties"]["ids"].update(minItems=1), r"'ids' raised minItems from 0 to 1"),
        (lambda s: s["properties"]["visit_id"].update(pattern="^v-"), r"'visit_id' changed pattern"),
        (lambda s: s["properties"]["visit_id"].update(format="uuid"), r"'visit_id' changed format"),
    ],
)
def test_incompatibilities_reports_each_breaking_change(edit: Any, expected: str) -> None:
    problems = incompatibilities(BASE, _changed(edit))
    assert any(re.search(expected, p) for p in problems), problems


def _move_to_defs(schema: dict[str, Any], field: str, name: str) -> None:
    schema["$defs"][name] = schema["properties"][field]
    schema["properties"][field] = {"$ref": f"#/$defs/{name}"}


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s["properties"].update(area={"type": "string", "default": "urban"}),
        lambda s: s["$defs"]["Setting"]["enum"].append("school"),
        lambda s: s["properties"]["visit_id"].update(description="The visit id."),
        lambda s: s["required"].remove("ids"),
        lambda s: s["$defs"]["People"]["properties"]["total"].pop("minimum"),
        lambda s: _move_to_defs(s, "visit_id", "VisitId"),
        lambda s: s["properties"]["note"]["anyOf"].reverse(),
    ],
    ids=[
        "optional field added",
        "enum widened",
        "description",
        "field no longer required",
        "constraint loosened",
        "moved into $defs",
        "union reordered",
    ],
)
def test_incompatibilities_accepts_backward_compatible_changes(edit: Any) -> None:
    assert incompatibilities(BASE, _changed(edit)) == []


class VisitRecordedBroken(Contract):
    """``visit.recorded.v1`` as a careless edit would leave it."""

    visit_id: str
    client_ref: str
    setting: Literal[Setting.household]  # narrowed: service_centre visits would no longer validate
    area: Area
    household: str | None = None  # renamed from household_ref
    volunteer_ids: str  # was a list
    recorded_at: datetime
    figures: vis.VisitFigures
    gps: str  # new and required: every old event lacks it


class VisitFiguresNarrowed(Contract):
    unit_code: str
    unit_path: UnitPath
    visited_on: date
    households: int = Field(ge=1)
    people: vis.People
    services: vis.Services
    area: Area | None = None
    team_code: str | None = None


class VisitVoidedBroken(Contract):
    visit_id: str
    reason: str
    voided_at: datetime
    figures: VisitFiguresNarrowed


def test_gate_fails_on_a_deliberately_broken_visit_recorded_schema() -> None:
    baseline = committed_schemas()
    broken = event_schema(vis.VISIT_RECORDED, VisitRecordedBroken)
    problems = incompatibilities(baseline[vis.VISIT_RECORDED], broken)
    text = "\n".join(problems)
    assert "'team_code' was removed" in text
    assert "'household_ref' was removed or renamed (renamed? new fields: household, gps)" in text
    assert "'volunteer_ids' changed type from array to string" in text
    assert "'gps' is a new required field" in text
    assert "'setting' narrowed its enum: ['service_centre'] no longer allowed" in text

    report = compatibility_report(baseline, {**event_schemas(), vis.VISIT_RECORDED: broken})
    assert len(report) == len(problems)
    assert all(line.startswith(vis.VISIT_RECORDED) for line in report)


def test_gate_follows_refs_into_nested_models_and_notices_a_removed_type() -> None:
    baseline = committed_schemas()
    nested = incompatibilities(baseline[vis.VISIT_VOIDED], event_schema(vis.VISIT_VOIDED, VisitVoidedBroken))
    assert nested == ["'figures.households' raised its lower bound from 0 (inclusive) to 1 (inclusive)"]
    current = {t: s for t, s in event_schemas().items() if t != vis.OUTREACH_VOIDED}
    assert compatibility_report(baseline, current) == [
        f"{vis.OUTREACH_VOIDED}: the event type was removed (publish it until it is retired)"
    ]


# --- personal data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_no_event_field_can_carry_a_name_or_contact_details(event_type: str) -> None:
    assert personal_data_fields(event_schemas()[event_type]) == []


class Contact(Contract):
    phone_number: str
    email: str
    home_address: str


class Participant(Contract):
    participant_id: str
    name: str
    display_name: str
    national_id: str
    contact: Contact


class Course(Contract):
    course_code: str
    title: str  # allowed only on models listed as organisations or publications
    unit_name: str
    leader_name: str
    participants: list[Participant]


def test_personal_data_check_flags_contact_details_identity_and_person_names_in_nested_models() -> None:
    schema = Course.model_json_schema(mode="serialization")
    assert personal_data_fields(schema) == [
        "Contact.email",
        "Contact.home_address",
        "Contact.phone_number",
        "Course.leader_name",
        "Course.title",
        "Participant.display_name",
        "Participant.name",
        "Participant.national_id",
    ]


def test_organisation_names_are_allowed_only_where_listed() -> None:
    unit = event_schemas()["org.youthunion.registry.unit.created.v1"]
    assert "name" in unit["properties"]
    assert personal_data_fields(unit) == []
    renamed = json.loads(json.dumps(unit).replace('"UnitCreated"', '"VolunteerCard"'))
    assert personal_data_fields(renamed) == ["VolunteerCard.name"]


def test_examples_hold_no_email_address_or_phone_number() -> None:
    text = json.dumps(catalog.EXAMPLES, ensure_ascii=False)
    assert not re.search(r"[\w.+-]+@[\w-]+\.\w+", text)
    assert not re.search(r"(\+84|\b0)\d[\d .]{7,}\d\b", text)
