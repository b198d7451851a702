"""The event envelope: CloudEvents 1.0 over Kafka in binary content mode.

Attributes travel as ``ce_*`` headers, the payload is the JSON message value (encoded with orjson)
and the Kafka key is the aggregate id, which keeps per-aggregate order within one partition. A traced
event also carries the CloudEvents distributed-tracing extension, ``ce_traceparent`` (see
:mod:`shared.tracing`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from shared.contracts import EVENT_TYPES, TOPIC_OF_TYPE
from shared.tracing import current_traceparent

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
# ``ce_dataschema`` of an event: the JSON Schema of its type, as published in docs/events/schemas/.
SCHEMA_BASE = "https://digital-bridge.youthunion.vn/events/schemas/"


def dataschema(event_type: str) -> str:
    """The URI of ``event_type``'s JSON Schema (the ``$id`` of its file in docs/events/schemas/)."""
    return f"{SCHEMA_BASE}{event_type}.json"


Headers = list[tuple[str, bytes]]


def headers_of(
    event_id: str, source: str, event_type: str, time: str, subject: str | None, traceparent: str | None
) -> Headers:
    """The Kafka headers of an event (binary content mode), ``time`` already its ``ce_time`` text."""
    h: Headers = [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", event_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", event_type.encode()),
        ("ce_time", time.encode()),
        ("ce_dataschema", dataschema(event_type).encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    if subject:
        h.append(("ce_subject", subject.encode()))
    if traceparent:
        h.append(("ce_traceparent", traceparent.encode()))
    return h


class EnvelopeError(ValueError):
    """A Kafka message that is not a well-formed event of a known type."""


@dataclass(frozen=True)
class Envelope:
    """One event: CloudEvents attributes plus the JSON payload (``data``)."""

    type: str
    source: str
    key: str
    data: dict[str, Any]
    subject: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    # W3C trace context of the span that caused the event (transport metadata, not its identity).
    traceparent: str | None = field(default=None, compare=False)
    # The validated payload, kept by :func:`decode` so consumers do not parse it twice.
    model: BaseModel | None = field(default=None, compare=False, repr=False)

    @property
    def topic(self) -> str:
        """The base topic (without a test prefix) that carries this event type."""
        return TOPIC_OF_TYPE[self.type]

    def payload(self) -> BaseModel:
        """The payload parsed into its contract model."""
        if self.model is not None:
            return self.model
        return EVENT_TYPES[self.type].model_validate(self.data)

    def headers(self) -> Headers:
        return headers_of(self.id, self.source, self.type, ce_time(self.time), self.subject, self.traceparent)

    def value(self) -> bytes:
        return orjson.dumps(self.data)

    def to_document(self) -> dict[str, Any]:
        """The envelope as a Mongo document, payload nested (an outbox keeps it compressed: ``outbox_entry``)."""
        return {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "subject": self.subject,
            "key": self.key,
            "time": self.time,
            "data": self.data,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Envelope:
        t: datetime = doc["time"]
        if t.tzinfo is None:  # BSON dates come back naive unless the client is tz-aware
            t = t.replace(tzinfo=UTC)
        return cls(
            id=doc["id"],
            type=doc["type"],
            source=doc["source"],
            subject=doc.get("subject"),
            key=doc["key"],
            time=t,
            data=doc["data"],
        )


def ce_time(t: datetime) -> str:
    """A timestamp as the ``ce_time`` attribute carries it: UTC, ``Z``-suffixed, microseconds kept."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_ce_time(text: str) -> datetime:
    """The timestamp of a ``ce_time`` text (ValueError when it is not one)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def make_event(event_type: str, payload: BaseModel, *, source: str, key: str, subject: str | None = None) -> Envelope:
    """Build an event from a contract model; the type must be registered in ``shared.contracts``."""
    expected = EVENT_TYPES.get(event_type)
    if expected is None or not isinstance(payload, expected):
        raise TypeError(f"{event_type} expects {expected}, got {type(payload).__name__}")
    return Envelope(
        type=event_type,
        source=source,
        key=key,
        subject=subject if subject is not None else key,
        data=payload.model_dump(mode="json"),
        model=payload,
        traceparent=current_traceparent(),
    )


def decode(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> Envelope:
    """Parse a Kafka message into an envelope and validate its payload against the contract.

    Raises :class:`EnvelopeError` for anything a consumer cannot process: missing headers, a wrong
    spec version, an unknown type, bad JSON, or a payload that does not match its model.
    """
    h: dict[str, str] = {}
    for name, raw in headers:
        try:
            h[name] = raw.decode()
        except (UnicodeDecodeError, AttributeError) as exc:
            raise EnvelopeError(f"header {name} is not UTF-8") from exc
    for required in ("ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time"):
        if not h.get(required):
            raise EnvelopeError(f"missing header {required}")
    if h["ce_specversion"] != SPEC_VERSION:
        raise EnvelopeError(f"unsupported ce_specversion {h['ce_specversion']}")
    event_type = h["ce_type"]
    model = EVENT_TYPES.get(event_type)
    if model is None:
        raise EnvelopeError(f"unknown event type {event_type}")
    try:
        time = parse_ce_time(h["ce_time"])
    except ValueError as exc:
        raise EnvelopeError(f"bad ce_time {h['ce_time']!r}") from exc
    if time.tzinfo is None:
        raise EnvelopeError("ce_time must carry a time zone")
    if value is None:
        raise EnvelopeError("empty message value")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"value is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EnvelopeError("value must be a JSON object")
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise EnvelopeError(f"payload does not match {event_type}: {exc.errors(include_url=False)}") from exc
    return Envelope(
        id=h["ce_id"],
        type=event_type,
        source=h["ce_source"],
        subject=h.get("ce_subject"),
        key=key.decode() if key else "",
        time=time,
        data=data,
        model=parsed,
        # A producer with OpenTelemetry's own Kafka instrumentation sends the plain header.
        traceparent=h.get("ce_traceparent") or h.get("traceparent"),
    )
