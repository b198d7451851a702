"""Unit tests of the CloudEvents envelope (pure logic, no broker)."""

from __future__ import annotations

import orjson
import pytest

from shared.contracts import registry as ev
from shared.envelope import EnvelopeError, decode, make_event


def _unit_event() -> object:
    return make_event(
        ev.UNIT_CREATED,
        ev.UnitCreated(
            code="QN-HALONG", name="Phường Hạ Long", kind="ward", parent_code="QN", path=["QN", "QN-HALONG"]
        ),
        source="/registry",
        key="QN-HALONG",
    )


def test_binary_mode_round_trip_keeps_attributes_and_vietnamese_text() -> None:
    e = _unit_event()
    headers = dict(e.headers())  # type: ignore[attr-defined]
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == ev.UNIT_CREATED.encode()
    assert headers["content-type"] == b"application/json"
    assert headers["ce_time"].endswith(b"Z")
    back = decode(b"QN-HALONG", e.value(), e.headers())  # type: ignore[attr-defined]
    assert back.id == e.id  # type: ignore[attr-defined]
    assert back.key == "QN-HALONG"
    assert back.data["name"] == "Phường Hạ Long"
    assert back.topic == "registry.events.v1"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h, v: ([x for x in h if x[0] != "ce_id"], v), "missing header ce_id"),
        (lambda h, v: ([(k, b"0.3" if k == "ce_specversion" else x) for k, x in h], v), "ce_specversion"),
        (lambda h, v: ([(k, b"org.nope.v1" if k == "ce_type" else x) for k, x in h], v), "unknown event type"),
        (lambda h, v: (h, b"{not json"), "not JSON"),
        (lambda h, v: (h, orjson.dumps({"code": "X"})), "does not match"),
        (lambda h, v: (h, b"[1]"), "JSON object"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(mutate: object, message: str) -> None:
    e = _unit_event()
    headers, value = mutate(e.headers(), e.value())  # type: ignore[attr-defined, operator]
    with pytest.raises(EnvelopeError, match=message):
        decode(b"k", value, headers)


def test_make_event_refuses_a_payload_of_the_wrong_type() -> None:
    with pytest.raises(TypeError):
        make_event(
            ev.TEAM_CREATED, ev.VolunteerLeft(volunteer_id="v", unit_code="QN", unit_path=["QN"]), source="/x", key="k"
        )
