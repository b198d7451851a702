"""OpenTelemetry tracing across HTTP, the outbox, Kafka and the consumers.

One trace follows a request to every service that handles what it caused:

- FastAPI's own server span covers the request (``create_app`` hands it our provider);
- :func:`shared.envelope.make_event` keeps the current span's W3C ``traceparent`` in the event,
  and the outbox keeps it with the entry (an optional ``traceparent`` field);
- the relay publishes a traced entry in a PRODUCER span, a child of that context, and sends the
  span's own context as the CloudEvents distributed-tracing extension (header ``ce_traceparent``);
- a consumer handles the event in a CONSUMER span whose parent is that header, from decoding to
  the commit (whole-fetch consumers such as the metrics projector) or around the handler.

Exported only when configured: :func:`configure_tracing` with an OTLP/HTTP endpoint (or the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT``) installs the SDK with a batching exporter. Otherwise the
SDK is never imported, :func:`enabled` is False and every hook returns at once: the projector pays
one boolean test per event, and events carry no ``ce_traceparent``.

When on, a span costs ~40 us of CPU (SDK span start, attributes, end and batching, measured here
with an in-memory exporter; OTLP encoding comes on top, in the exporter's thread), so a consumer
at 5,000 events/s spends ~0.2 s per second on spans. Sample at the
head for a busy deployment (``OTEL_TRACES_SAMPLER=parentbased_traceidratio``,
``OTEL_TRACES_SAMPLER_ARG=0.01``): events of an unsampled trace make no spans at all downstream.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig

INSTRUMENTATION = "digital-bridge"
_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def enabled() -> bool:
    """Whether spans are made at all (a provider is installed)."""
    return _tracer is not None


def install(provider: TracerProvider) -> None:
    """Trace with ``provider`` from now on (tests install one that keeps spans in memory)."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION)


def uninstall() -> None:
    """Stop making spans (apps built meanwhile keep the provider they were given)."""
    global _provider, _tracer
    _provider = None
    _tracer = None


def configure_tracing(service: str, endpoint: str | None = None) -> bool:
    """Export spans over OTLP/HTTP when an endpoint is configured; return whether tracing is on.

    ``endpoint`` is the collector's base URL (``http://collector:4318``); without it the standard
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables are used.
    Idempotent: a process installs one provider.
    """
    if _tracer is not None:
        return True
    from_env = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint and not from_env:
        return False
    # Imported here: a service that does not export never loads the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # An explicit endpoint is a base URL, as the variable is; the exporter reads the variables itself.
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces") if endpoint else OTLPSpanExporter()
    provider = SdkTracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    # Global too, so a library's own instrumentation (and FastAPI for apps built earlier) uses it.
    trace.set_tracer_provider(provider)
    install(provider)
    return True


def fastapi_telemetry() -> TelemetryConfig:
    """``FastAPI(telemetry=...)``: request spans from our provider; no OTel metrics or logs (we have
    Prometheus and structlog). With no provider installed, FastAPI falls back to the global one, which
    stays the no-op proxy unless :func:`configure_tracing` ran."""
    return {"tracer_provider": _provider, "metrics": False, "logs": False}


def traceparent_of(span: Span) -> str | None:
    """The W3C ``traceparent`` of ``span`` (None for an invalid span context)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, or None when tracing is off or no span is current."""
    if _tracer is None:
        return None
    return traceparent_of(trace.get_current_span())


def current_ids() -> tuple[str, str] | None:
    """Hex trace and span id of the current span, for log lines (None when off or outside a span)."""
    if _tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def context_of(traceparent: str | None) -> Context | None:
    """The parent context a ``traceparent`` names (None when absent; a malformed one gives an empty context)."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def _sampled(traceparent: str) -> bool:
    """Whether the ``traceparent``'s flags ask for recording (a malformed one counts as sampled)."""
    try:
        return bool(int(traceparent[-2:], 16) & 1)
    except ValueError:
        return True


def start_publish(topic: str, event_id: str, event_type: str, traceparent: str | None) -> Span | None:
    """A PRODUCER span for publishing one event, child of the context it was written in.

    None when tracing is off, when the event was written outside any trace (a sweep of old entries,
    a background job: those stay untraced rather than starting a trace per event), or when its
    trace is not sampled (the event then carries the context it was written in).
    """
    if _tracer is None or not traceparent or not _sampled(traceparent):
        return None
    return _tracer.start_span(
        f"publish {topic}",
        context=context_of(traceparent),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
            "messaging.message.id": event_id,
            "cloudevents.event_id": event_id,
            "cloudevents.event_type": event_type,
        },
    )


def start_consume(
    consumer: str, topic: str, partition: int, offset: int, event_id: str, event_type: str, traceparent: str | None
) -> Span | None:
    """A CONSUMER span for handling one event, child of the publish span named by its ``traceparent``
    (None, as for :func:`start_publish`, when off, untraced or unsampled)."""
    if _tracer is None or not traceparent or not _sampled(traceparent):
        return None
    return _tracer.start_span(
        f"process {topic}",
        context=context_of(traceparent),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.kafka.offset": offset,
            "messaging.consumer.group.name": consumer,
            "messaging.message.id": event_id,
            "cloudevents.event_id": event_id,
            "cloudevents.event_type": event_type,
        },
    )


def end_all(spans: Iterable[Span], error: BaseException | str | None = None) -> None:
    """End ``spans``, marked as failed when ``error`` is given."""
    for span in spans:
        if error is not None:
            span.set_status(StatusCode.ERROR, str(error) or type(error).__name__)
            if isinstance(error, BaseException):
                span.record_exception(error)
        span.end()
