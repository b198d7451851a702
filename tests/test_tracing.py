"""One trace from ``POST /v1/visits`` through the outbox relay and Kafka to the metrics projector.

The visits and metrics services run in-process on the real broker and database, with an SDK tracer
provider that keeps spans in memory (``InMemorySpanExporter``) installed through ``shared.tracing``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from metrics.app import MetricsSettings
from metrics.app import build_app as build_metrics
from services.visits.tests.factories import province_tree, visit_body
from shared import tracing
from shared.kafka import EventProducer
from shared.testing import collect_events, running_app, token, wait_until
from shared.topics import REGISTRY_TOPIC, VISITS_TOPIC
from visits.app import VisitsSettings
from visits.app import build_app as build_visits

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    provider = TracerProvider(resource=Resource.create({"service.name": "digital-bridge-tests"}))
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


def ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    """The span's parents up to the root, as far as they were collected."""
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


async def test_a_recorded_visit_is_one_trace_from_the_post_through_the_relay_and_kafka_to_the_projector(
    make_settings: Callable[..., Any], provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    visits_settings: VisitsSettings = make_settings(VisitsSettings)
    metrics_settings: MetricsSettings = make_settings(MetricsSettings)
    visits_topic = visits_settings.topic(VISITS_TOPIC)
    visits_app, metrics_app = build_visits(visits_settings), build_metrics(metrics_settings)
    producer = EventProducer(visits_settings.kafka_bootstrap, client_id="tracing-tests")
    try:
        async with running_app(visits_app) as visits, running_app(metrics_app):
            # Registry facts for visits to accept the visit, made in a span of their own (as an
            # import by the registry would be): the per-batch consumer path joins that trace.
            with provider.get_tracer("tests").start_as_current_span("registry import") as seeding:
                facts = province_tree()
            await producer.send_all({REGISTRY_TOPIC: visits_settings.topic(REGISTRY_TOPIC)}, facts)
            view = next(c for c in visits_app.state.runtime.consumers if c.name == "visits.registry-view")

            async def registry_applied() -> bool:
                assert view.processed is not None
                where = await view.processed.positions(e.id for e in facts)
                return len(where) == len(facts) and all(
                    (view.committed(tp) or 0) > offset for tp, offset in where.values()
                )

            await wait_until(registry_applied, timeout=60)
            resp = await visits.post("/v1/visits", json=visit_body(), headers=token("admin"))
            assert resp.status_code == 201, resp.text
            assert resp.json()["status"] == "recorded"

            def finished(kind: SpanKind) -> list[ReadableSpan]:
                return [s for s in spans.get_finished_spans() if s.kind is kind]

            def processed() -> list[ReadableSpan]:
                return [
                    s
                    for s in finished(SpanKind.CONSUMER)
                    if (s.attributes or {}).get("messaging.destination.name") == visits_topic
                ]

            async def projected() -> bool:
                return bool(processed())

            await wait_until(projected, timeout=60, interval=0.2)
            received = await collect_events(visits_settings.kafka_bootstrap, [visits_topic], count=1, timeout=30)
    finally:
        await producer.stop()

    by_id = {s.context.span_id: s for s in spans.get_finished_spans()}
    publishes = [s for s in finished(SpanKind.PRODUCER) if s.name == f"publish {visits_topic}"]
    assert len(publishes) == 1, [s.name for s in publishes]
    publish = publishes[0]
    assert publish.attributes is not None
    assert publish.attributes["cloudevents.event_type"] == "org.youthunion.visits.visit.recorded.v1"

    # The publish span descends from the request's server span: the event was made inside it.
    servers = [s for s in ancestors(publish, by_id) if s.kind is SpanKind.SERVER]
    assert [s.name for s in servers] == ["POST /v1/visits"]
    server = servers[0]
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/visits"
    assert server.attributes["http.response.status_code"] == 201
    assert server.parent is None  # the request started the trace

    # The projector handled the event in a span whose parent is the publish span, in the same trace.
    (process,) = processed()
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    assert process.context.trace_id == publish.context.trace_id == server.context.trace_id
    assert process.attributes is not None
    assert str(process.attributes["messaging.consumer.group.name"]).startswith("metrics.")
    assert process.attributes["cloudevents.event_id"] == publish.attributes["cloudevents.event_id"]
    assert process.start_time is not None
    assert publish.start_time is not None
    assert process.start_time >= publish.start_time

    # The visits service's registry read model (a batch consumer) applied each fact in a span
    # whose parent is the span the fact was made in.
    applied = [
        s
        for s in finished(SpanKind.CONSUMER)
        if (s.attributes or {}).get("messaging.consumer.group.name") == "visits.registry-view"
    ]
    assert len({(s.attributes or {})["cloudevents.event_id"] for s in applied}) == len(facts)
    assert {s.parent.span_id if s.parent else None for s in applied} == {seeding.get_span_context().span_id}

    # On the wire: the CloudEvents distributed-tracing extension names the publish span.
    (event,) = [r for r in received if r.envelope.id == publish.attributes["cloudevents.event_id"]]
    context = publish.context
    flags = int(context.trace_flags)
    assert flags & 1  # sampled
    assert event.headers["ce_traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}".encode()
    assert event.envelope.traceparent == event.headers["ce_traceparent"].decode()
