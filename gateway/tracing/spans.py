"""The spans of a traced request (imported only when tracing is on: see :mod:`gateway.tracing`).

:class:`Tracing` is one process's set-up: a tracer provider with a batch span processor
and the exporter ``OTEL_TRACES_EXPORTER`` names, the rest from the SDK's own ``OTEL_*``
variables (endpoint, headers, timeout, sampler, resource, batch sizes). :func:`install`
hooks it into the app, in this order of a request:

1. the ``before_request`` hook right after the record's own (:func:`gateway.create_app`
   registers it there) starts the ``SERVER`` span, continuing an incoming ``traceparent``,
   and keeps a :class:`RequestTrace` on the record (:attr:`gateway.exchange.Exchange.trace`);
2. each attempt at a backend (:mod:`gateway.backends.dispatch`) starts a ``CLIENT`` span
   child of it, whose ``traceparent`` goes upstream (:meth:`RequestTrace.attempt_started`);
3. an ``after_request`` hook notes the answer's ``model`` (a non-streamed answer's);
4. the sink ends them all when the record is finished (a stream's end): an attempt
   followed by another ends where its answer (or failure) came, the last one and the
   server span at the record's finish. Times come from the record's own clock, so the
   spans say what the record says.

The spans are never the current context (nothing is attached to the greenlet or
thread): their parents are passed explicitly, so nothing leaks from one request to the next.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, g, request
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway import config
from gateway.config import Settings
from gateway.exchange import Exchange, UpstreamAttempt, add_sink
from gateway.upstream.accounting import TokenUsage
from gateway.upstream.client import UpstreamConfig
from gateway.upstream.relay import UPSTREAM_ANSWER

log = logging.getLogger(__name__)

SERVICE_NAME = "ai-proxy-gateway"  # service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say otherwise
# The gateway's AI operations (gateway.operations) -> gen_ai.operation.name, for calls that
# generate (POST); listing models or reading a stored response is no GenAI operation.
GENAI_OPERATIONS = {
    "chat": "chat",
    "completion": "text_completion",
    "embeddings": "embeddings",
    "responses": "chat",
    "images": "generate_content",
}
# A backend's dialect (gateway.backends.config) -> gen_ai.provider.name.
PROVIDERS = {"openai": "openai", "azure": "azure.ai.openai"}
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
# How a stream may end without an error (the others: the upstream broke off, a deadline, ...).
_CLEAN_STREAM_ENDS = frozenset({"completed", "client_disconnected"})
_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


def exporter_for(name: str) -> SpanExporter:
    """The exporter ``OTEL_TRACES_EXPORTER`` names: ``otlp`` (OTLP/HTTP, protobuf) or ``console``."""
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _use_env_file_variables() -> None:
    """``OTEL_*`` variables set only in the ``.env`` file, made visible to the SDK, which reads
    the process environment (a variable set there wins, as for every other setting)."""
    for name, value in config.environment().items():
        if name.startswith("OTEL_") and name not in os.environ:
            os.environ[name] = value
    for name in _PROTOCOLS:
        protocol = os.environ.get(name, "http/protobuf").strip()
        if protocol != "http/protobuf":
            log.warning("tracing: %s=%s is not supported; spans are sent as OTLP over HTTP (http/protobuf)", name, protocol)


def _resource() -> Resource:
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    return resource


@functools.lru_cache(maxsize=256)
def _server(base_url: str) -> tuple[str, int]:
    """(server.address, server.port) of a backend's URL."""
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def genai_operation(exchange: Exchange) -> str | None:
    """The record's ``gen_ai.operation.name``, or ``None`` when it is no GenAI call."""
    if exchange.operation is None or exchange.method != "POST":
        return None
    return GENAI_OPERATIONS.get(exchange.operation)


class Tracing:
    """One process's tracer provider, its batch processor and exporter, and the hooks' work."""

    def __init__(self, exporter: SpanExporter, resource: Resource | None = None) -> None:
        self.provider = TracerProvider(resource=resource or _resource())
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("gateway")
        self.propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing:
        _use_env_file_variables()
        return cls(exporter_for(settings.otel_traces_exporter))

    def flush(self) -> None:
        """Export every ended span now (tests; :meth:`stop`)."""
        self.provider.force_flush()

    def stop(self, timeout_seconds: float = 5.0) -> None:
        """Export what is queued, then stop the processor's thread and the exporter."""
        self.provider.force_flush(int(timeout_seconds * 1000))
        self.provider.shutdown()

    # --- the hooks ------------------------------------------------------------------------
    def begin_request(self) -> None:
        """``before_request``, right after the record is made: the server span starts
        (at the record's start), and the request id follows it unless the client sent one."""
        exchange: Exchange = g.exchange
        req = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup, not one per use
        parent = self.propagator.extract(req.headers)
        start_ns = time.time_ns() - int((time.perf_counter() - exchange.started) * 1e9)
        method = exchange.method if exchange.method in HTTP_METHODS else "_OTHER"
        rule = req.url_rule.rule if req.url_rule is not None else None
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": exchange.path, "url.scheme": req.scheme}
        if rule is not None:
            attributes["http.route"] = rule
        span = self.tracer.start_span(
            f"{method} {rule}" if rule else method, context=parent, kind=SpanKind.SERVER, start_time=start_ns, attributes=attributes
        )
        trace = RequestTrace(self, span, start_ns, exchange.started)
        exchange.trace = trace
        if exchange.request_id != req.headers.get("X-Request-ID"):
            exchange.request_id = f"{trace.trace_id}-{trace.span_id}"

    def note_answer(self, response: Response) -> Response:
        """``after_request``: the model a non-streamed answer names (``gen_ai.response.model``)."""
        exchange: Exchange | None = g.get("exchange")
        trace = exchange.trace if exchange is not None else None
        if trace is not None:
            answer = getattr(response, UPSTREAM_ANSWER, None)
            model = answer.get("model") if isinstance(answer, dict) else None
            if isinstance(model, str) and model:
                trace.response_model = model[:200]
        return response

    def end_request(self, exchange: Exchange) -> None:
        """Sink: end the record's spans (see the module)."""
        if exchange.trace is not None:
            exchange.trace.end(exchange)


class RequestTrace:
    """One request's spans: its server span and a client span per attempt at a backend."""

    __slots__ = ("_tracing", "span", "start_ns", "started", "trace_id", "span_id", "context", "attempts", "response_model")

    def __init__(self, tracing: Tracing, span: Span, start_ns: int, started: float) -> None:
        self._tracing = tracing
        self.span = span
        self.start_ns = start_ns  # the span's start, in time.time_ns()
        self.started = started  # the same moment on the record's perf_counter() clock
        ids = span.get_span_context()
        self.trace_id = format(ids.trace_id, "032x")
        self.span_id = format(ids.span_id, "016x")
        self.context: Context = set_span_in_context(span)
        self.attempts: list[tuple[UpstreamAttempt, Span]] = []
        self.response_model: str | None = None

    def ns(self, perf: float) -> int:
        """A ``perf_counter()`` time of the record as a span time (``time_ns()``)."""
        return self.start_ns + int((perf - self.started) * 1e9)

    def attempt_started(self, exchange: Exchange, attempt: UpstreamAttempt, backend: UpstreamConfig) -> dict[str, str]:
        """A client span for an attempt about to be sent; returns the headers that carry its
        context upstream (``traceparent``, and ``tracestate`` when the caller sent one)."""
        operation = genai_operation(exchange)
        model = attempt.model or exchange.model
        address, port = _server(backend.base_url)
        attributes: dict[str, Any] = {
            "server.address": address,
            "server.port": port,
            "gateway.backend.name": backend.name,
            "gen_ai.provider.name": PROVIDERS.get(backend.dialect, backend.dialect),
        }
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        if model:
            attributes["gen_ai.request.model"] = model
        if self.attempts:
            attributes["http.request.resend_count"] = len(self.attempts)
        name = f"{operation} {model}" if operation and model else (operation or f"{exchange.method} {backend.name}")
        span = self._tracing.tracer.start_span(
            name, context=self.context, kind=SpanKind.CLIENT, start_time=self.ns(attempt.started), attributes=attributes
        )
        self.attempts.append((attempt, span))
        carrier: dict[str, str] = {}
        self._tracing.propagator.inject(carrier, context=set_span_in_context(span))
        return carrier

    def end(self, exchange: Exchange) -> None:
        """End the client spans and the server span (the record is finished)."""
        end_ns = self.ns(exchange.ended if exchange.ended is not None else time.perf_counter())
        last = len(self.attempts) - 1
        for number, (attempt, span) in enumerate(self.attempts):
            if span.is_recording():
                outcome = attempt.outcome or "unknown"
                span.set_attribute("gateway.attempt.outcome", outcome)
                if outcome != "ok":
                    span.set_attribute("error.type", outcome)
                    span.set_status(Status(StatusCode.ERROR))
                if number == last:
                    self._answered(span, exchange.usage)
            ended = end_ns
            if number != last and attempt.duration_ms is not None:
                ended = self.ns(attempt.started + attempt.duration_ms / 1000)
            span.end(end_time=ended)
        span = self.span
        if span.is_recording():
            self._server_attributes(span, exchange)
        span.end(end_time=end_ns)

    def _answered(self, span: Span, usage: TokenUsage | None) -> None:
        if self.response_model is not None:
            span.set_attribute("gen_ai.response.model", self.response_model)
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            if usage.estimated:
                span.set_attribute("gateway.usage.estimated", True)

    def _server_attributes(self, span: Span, exchange: Exchange) -> None:
        status = exchange.status
        attributes: dict[str, Any] = {"http.response.status_code": status, "gateway.request_id": exchange.request_id}
        operation = genai_operation(exchange)
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        if exchange.model:
            attributes["gen_ai.request.model"] = exchange.model
        if exchange.error_code:
            attributes["gateway.error.code"] = exchange.error_code
        if exchange.attempts:
            attributes["gateway.backend.name"] = exchange.attempts[-1].backend
        span.set_attributes(attributes)
        self._answered(span, exchange.usage)
        error = None
        if status >= 500:
            error = exchange.error_code or str(status)
        if exchange.stream:
            span.set_attribute("gateway.stream.outcome", exchange.outcome)
            if exchange.outcome not in _CLEAN_STREAM_ENDS:
                error = exchange.outcome
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR))


def install(app: Flask, tracing: Tracing) -> None:
    """Hook ``tracing`` into the app: call right after :func:`gateway.exchange.init_app`, so
    its ``before_request`` hook runs right after the record's (and its ``after_request``
    hook before the record's, which finishes a non-streamed record)."""
    app.before_request(tracing.begin_request)
    app.after_request(tracing.note_answer)
    add_sink(app, tracing.end_request)
