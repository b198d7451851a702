"""Contract v2: volunteer events carry an age band, never a birth year, and every event names its schema."""

from __future__ import annotations

import json

import pytest

from shared.catalog import events_dir, schema_id
from shared.contracts import EVENT_TYPES
from shared.contracts import registry as reg
from shared.contracts.common import AgeBand
from shared.envelope import decode, make_event


@pytest.mark.parametrize(
    ("birth_year", "band"),
    [
        (2010, "under_16"),
        (2009, "16_30"),
        (1995, "16_30"),
        (1994, "31_45"),
        (1980, "31_45"),
        (1979, "46_60"),
        (1965, "46_60"),
        (1964, "over_60"),
    ],
)
def test_age_band_edges_in_2025(birth_year: int, band: str) -> None:
    assert AgeBand.of(birth_year, 2025).value == band


def test_v2_volunteer_events_have_no_birth_year_and_v1_stays_readable() -> None:
    for v2 in (reg.VolunteerRegisteredV2, reg.VolunteerUpdatedV2):
        assert "birth_year" not in v2.model_fields
        assert "age_band" in v2.model_fields
    # The log keeps .v1 events: they still decode.
    assert EVENT_TYPES[reg.VOLUNTEER_REGISTERED] is reg.VolunteerRegistered
    assert EVENT_TYPES[reg.VOLUNTEER_REGISTERED_V2] is reg.VolunteerRegisteredV2


def test_every_event_names_its_published_schema_in_ce_dataschema() -> None:
    payload = reg.VolunteerRegisteredV2(
        volunteer_id="v-1", unit_code="QN", unit_path=["QN"], roles=[], skills=[], age_band=AgeBand.from_16_to_30
    )
    event = make_event(reg.VOLUNTEER_REGISTERED_V2, payload, source="/registry", key="v-1")
    headers = dict(event.headers())
    assert headers["ce_dataschema"].decode() == schema_id(reg.VOLUNTEER_REGISTERED_V2)
    published = json.loads((events_dir() / "schemas" / f"{reg.VOLUNTEER_REGISTERED_V2}.json").read_text())
    assert published["$id"] == headers["ce_dataschema"].decode()
    assert decode(event.key.encode(), event.value(), event.headers()).data["age_band"] == "16_30"
