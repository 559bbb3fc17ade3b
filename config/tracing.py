"""OpenTelemetry, configured once per process: Flask, urllib3, Celery and asyncpg spans.

The trace context travels gateway -> service (traceparent header) -> outbox row
(its ``headers``) -> Celery task (message headers) -> the next outbox row, so one
order is one trace. Spans are exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT
is set, and nowhere otherwise (the context still propagates and reaches the logs).

A trace the sampler dropped costs little: its requests still carry and log their context,
makes no asyncpg spans (they would be dropped with it) and no urllib3 client spans.
"""
from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

_provider: TracerProvider | None = None


def configure(service: str, *, exporter: SpanExporter | None = None, sample_ratio: float = 1.0) -> TracerProvider:
    """Install the tracer provider and the client-side instrumentations (idempotent).

    Parent-based sampling: a trace a caller sampled is always followed (so one order stays
    one trace across processes), and a new one is recorded with ``sample_ratio``
    (TRACE_SAMPLE_RATIO). Unsampled requests still carry their trace context.
    """
    global _provider
    if _provider is not None:
        if exporter is not None:
            _provider.add_span_processor(SimpleSpanProcessor(exporter))
        return _provider
    name = os.environ.get("OTEL_SERVICE_NAME") or f"oms-{service}"
    _provider = TracerProvider(resource=Resource.create({"service.name": name}),
                               sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    if exporter is not None:
        _provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)

    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    URLLib3Instrumentor().instrument()
    _asyncpg_instrumentor().instrument()
    return _provider


def unsampled() -> bool:
    """Inside a trace the sampler dropped: every span started here would be dropped too."""
    span_context = trace.get_current_span().get_span_context()
    return span_context.is_valid and not span_context.trace_flags.sampled


def _asyncpg_instrumentor():
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    class Instrumentor(AsyncPGInstrumentor):
        """asyncpg's spans, skipped under an unsampled trace: the instrumentation builds each
        statement's attributes and a span before the sampler drops it, ~9 % of the inventory's
        CPU per read. Overrides its private wrappers; guard: tests/test_library_guards.py."""

        async def _do_execute(self, func, instance, args, kwargs):
            if unsampled():
                return await func(*args, **kwargs)
            return await super()._do_execute(func, instance, args, kwargs)

        async def _do_cursor_execute(self, func, instance, args, kwargs):
            if unsampled():
                return await func(*args, **kwargs)
            return await super()._do_cursor_execute(func, instance, args, kwargs)

        async def _do_prepared_execute(self, func, instance, args, kwargs):
            if unsampled():
                return await func(*args, **kwargs)
            return await super()._do_prepared_execute(func, instance, args, kwargs)

    return Instrumentor()


def instrument_flask(app) -> None:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor().instrument_app(app, excluded_urls="health,ready,metrics")


def instrument_celery() -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def current_ids() -> dict:
    """trace_id and span_id of the current span, for log lines."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}
