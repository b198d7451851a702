"""Tracing hooks in the envelope, the outbox and the consumer: the trace context they carry when
tracing is on, and nothing at all when it is off. No broker here (tests/test_tracing.py runs the
whole path on real Kafka and FerretDB)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import date

import pytest
from aiokafka import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import tracing
from shared.consumer import Consumed, Fetch
from shared.contracts import registry as ev
from shared.envelope import Envelope, decode, make_event
from shared.kafka import record_of
from shared.outbox import entry_record, outbox_entry


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    provider = TracerProvider()
    tracing.install(provider)
    try:
        yield provider
    finally:
        tracing.uninstall()
        provider.shutdown()


@pytest.fixture
def spans(provider: TracerProvider) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def joined() -> Envelope:
    payload = ev.MembershipStarted(team_code="HL-PERM", volunteer_id="vol-huong", since=date(2025, 7, 1))
    return make_event(ev.MEMBERSHIP_STARTED, payload, source="/registry", key="HL-PERM/vol-huong")


def as_record(env: Envelope, offset: int = 7) -> ConsumerRecord[bytes, bytes]:
    topic, key, value, headers = record_of(env)
    return ConsumerRecord(topic, 2, offset, 0, 0, key, value, None, len(key), len(value), headers)


async def consume(fetch: Fetch) -> list[Consumed]:
    return [c async for c in fetch]


async def test_with_tracing_off_events_carry_no_trace_context_and_consumers_make_no_spans() -> None:
    assert not tracing.enabled()
    assert tracing.fastapi_telemetry()["tracer_provider"] is None
    event = joined()
    assert event.traceparent is None
    assert "ce_traceparent" not in dict(event.headers())
    # Outbox entries keep exactly the fields they had before tracing existed.
    assert set(outbox_entry(event)) == {"id", "type", "topic", "source", "subject", "key", "time", "data"}
    fetch = Fetch([as_record(event)], consumer="metrics.projector")
    assert [c.envelope.id for c in await consume(fetch)] == [event.id]
    assert fetch.trace_spans == []


def test_nothing_loads_the_sdk_or_installs_a_provider_unless_an_endpoint_is_configured() -> None:
    script = textwrap.dedent(
        """
        import sys
        from opentelemetry import trace
        import shared.consumer, shared.http, shared.outbox, shared.runtime
        from shared import tracing
        assert not tracing.configure_tracing("visits")
        assert not tracing.enabled()
        assert "opentelemetry.sdk" not in sys.modules
        assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
        assert tracing.configure_tracing("visits", "http://127.0.0.1:4318/")
        assert tracing.enabled()
        provider = trace.get_tracer_provider()
        assert type(provider).__module__ == "opentelemetry.sdk.trace"
        assert provider.resource.attributes["service.name"] == "visits"
        (processor,) = provider._active_span_processor._span_processors
        assert processor._batch_processor._exporter._endpoint == "http://127.0.0.1:4318/v1/traces"
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)  # noqa: S603
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_an_event_made_in_a_span_keeps_its_traceparent_through_the_outbox_and_the_kafka_headers(
    provider: TracerProvider,
) -> None:
    with provider.get_tracer("tests").start_as_current_span("POST /v1/teams/HL-PERM/members") as span:
        event = joined()
    ctx = span.get_span_context()
    assert event.traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    entry = outbox_entry(event)
    assert entry["traceparent"] == event.traceparent
    # The relay sends its publish span's context instead of the one the entry was written in.
    publish = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    _, _, _, headers = entry_record(entry, publish)
    assert dict(headers)["ce_traceparent"] == publish.encode()
    _, _, _, as_written = entry_record(entry)
    assert dict(as_written)["ce_traceparent"] == event.traceparent.encode()


def test_decode_reads_the_cloudevents_extension_or_the_plain_w3c_header() -> None:
    event = joined()
    _, key, value, headers = record_of(event)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert decode(key, value, [*headers, ("ce_traceparent", traceparent.encode())]).traceparent == traceparent
    assert decode(key, value, [*headers, ("traceparent", traceparent.encode())]).traceparent == traceparent
    assert decode(key, value, headers).traceparent is None
    # Transport metadata: an event is the same event whatever trace carried it.
    assert decode(key, value, [*headers, ("ce_traceparent", traceparent.encode())]) == decode(key, value, headers)


async def test_a_fetch_starts_one_consumer_span_per_traced_event_on_its_first_pass_only(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    with provider.get_tracer("tests").start_as_current_span("registry import") as parent:
        traced = joined()
    untraced = Envelope(type=traced.type, source=traced.source, key=traced.key, data=traced.data)
    fetch = Fetch([as_record(traced, 7), as_record(untraced, 8)], consumer="metrics.projector")
    assert len(await consume(fetch)) == 2
    assert len(await consume(fetch)) == 2  # a second pass (a fold done again) starts no new span
    assert len(fetch.trace_spans) == 1
    tracing.end_all(fetch.trace_spans)
    (finished,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert finished.kind is SpanKind.CONSUMER
    assert finished.parent is not None
    assert finished.parent.span_id == parent.get_span_context().span_id
    assert finished.context.trace_id == parent.get_span_context().trace_id
    assert finished.attributes is not None
    assert finished.attributes["messaging.kafka.offset"] == 7
    assert finished.attributes["messaging.consumer.group.name"] == "metrics.projector"
    assert finished.attributes["cloudevents.event_id"] == traced.id
    # A fetch made without a consumer name (the runner's one-event retries) never traces.
    assert Fetch([as_record(traced)]).trace_spans == []
    assert len(await consume(Fetch([as_record(traced)]))) == 1
    assert len([s for s in spans.get_finished_spans() if s.kind is SpanKind.CONSUMER]) == 1


def test_events_of_an_unsampled_trace_make_no_spans_downstream(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    assert tracing.start_publish("visits.events.v1", "e-1", "t", unsampled) is None
    assert tracing.start_consume("metrics.projector", "visits.events.v1", 0, 1, "e-1", "t", unsampled) is None
    sampled = unsampled[:-2] + "01"
    span = tracing.start_consume("metrics.projector", "visits.events.v1", 0, 1, "e-1", "t", sampled)
    assert span is not None
    tracing.end_all([span], "handler failed")
    (finished,) = spans.get_finished_spans()
    assert finished.status.status_code.name == "ERROR"
    assert finished.status.description == "handler failed"
