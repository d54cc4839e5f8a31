"""OpenTelemetry spans of real requests (issue 18), read from the SDK's in-memory exporter.

The app is the real one from ``create_app`` with ``OTEL_TRACES_EXPORTER=otlp``, its span
exporter swapped for the SDK's :class:`InMemorySpanExporter` (through its batch processor,
flushed before reading), against the fake upstream on loopback, which records the
``traceparent`` each attempt carried.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway import tracing
from gateway.tracing import spans
from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import Behavior, FakeUpstream
from tests.integration.test_backends_routing import PLENTY, write_config

PROMPT = "tracing-canary-prompt-7f3a"
CHAT = {"model": "m", "messages": [{"role": "user", "content": PROMPT}]}
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def traced(make_app, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[Flask, InMemorySpanExporter]]]:
    """Factory: an app with tracing on, and the exporter its spans go to."""
    built: list[Flask] = []

    def build(**overrides: Any) -> tuple[Flask, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        monkeypatch.setattr(spans, "exporter_for", lambda name: exporter)
        app = make_app(otel_traces_exporter="otlp", **overrides)
        built.append(app)
        return app, exporter

    yield build
    for app in built:
        found = tracing.tracing_of(app)
        if found is not None:
            found.stop()


def finished(app: Flask, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    found = tracing.tracing_of(app)
    assert found is not None
    found.flush()
    return list(exporter.get_finished_spans())


def one_of(kind: SpanKind, found: list[ReadableSpan]) -> ReadableSpan:
    (span,) = [span for span in found if span.kind == kind]
    return span


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def sent_context(traceparent: str) -> tuple[str, str, bool]:
    """(trace id, span id, sampled) of a ``traceparent`` header (W3C trace context)."""
    match = TRACEPARENT.match(traceparent)
    assert match, traceparent
    return match.group(1), match.group(2), bool(int(match.group(3), 16) & 1)


def no_text_recorded(found: list[ReadableSpan]) -> None:
    """No prompt or completion text in any attribute or event of any span."""
    for span in found:
        values = json.dumps({**dict(span.attributes or {}), "events": [event.name for event in span.events]}, default=str)
        assert PROMPT not in values
        assert "Hello" not in values and "hello" not in values  # the fake's answers say hello


def test_a_plain_call_has_a_server_span_and_a_client_span_with_the_genai_attributes(traced, upstream: FakeUpstream) -> None:
    app, exporter = traced()
    response = app.test_client().post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS)
    assert response.status_code == 200
    usage = response.get_json()["usage"]
    found = finished(app, exporter)
    assert len(found) == 2
    server, client = one_of(SpanKind.SERVER, found), one_of(SpanKind.CLIENT, found)
    trace_id, server_span_id = hex_ids(server)
    assert server.parent is None and server.name == "POST /v1/chat/completions"
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert hex_ids(client)[0] == trace_id and client.name == "chat m"
    assert server.attributes is not None and client.attributes is not None
    assert dict(server.attributes) | {"gateway.request_id": None} == {
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "url.scheme": "http",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
        "gateway.request_id": None,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "m",
        "gen_ai.response.model": "m",
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],
        "gateway.backend.name": "default",
    }
    assert dict(client.attributes) == {
        "server.address": "127.0.0.1",
        "server.port": upstream.port,
        "gateway.backend.name": "default",
        "gen_ai.provider.name": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "m",
        "gateway.attempt.outcome": "ok",
        "gen_ai.response.model": "m",
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],
    }
    assert server.status.status_code == StatusCode.UNSET and client.status.status_code == StatusCode.UNSET
    # The request id is the trace's, everywhere: the header, the span, the id sent upstream.
    request_id = f"{trace_id}-{server_span_id}"
    assert response.headers["X-Request-ID"] == request_id == server.attributes["gateway.request_id"]
    sent = upstream.requests[-1].headers
    assert sent["x-request-id"] == request_id
    # The client span's own context went upstream.
    assert sent_context(sent["traceparent"]) == (*hex_ids(client), True)
    assert server.start_time is not None and client.start_time is not None and client.end_time is not None
    assert server.end_time is not None and server.start_time <= client.start_time <= client.end_time <= server.end_time
    no_text_recorded(found)


def test_the_access_log_line_names_the_trace_and_a_clients_request_id_is_kept(traced, upstream, capfd) -> None:
    app, exporter = traced()
    response = app.test_client().post("/v1/chat/completions", json=CHAT, headers={**KEY_HEADERS, "X-Request-ID": "client-id-1"})
    assert response.headers["X-Request-ID"] == "client-id-1"
    server = one_of(SpanKind.SERVER, finished(app, exporter))
    trace_id, span_id = hex_ids(server)
    assert server.attributes is not None and server.attributes["gateway.request_id"] == "client-id-1"
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    (line,) = [line for line in lines if line.get("msg") == "request" and line.get("request_id") == "client-id-1"]
    assert line["trace_id"] == trace_id and line["span_id"] == span_id


def test_an_incoming_traceparent_is_continued_and_sent_on(traced, upstream) -> None:
    app, exporter = traced()
    headers = {**KEY_HEADERS, "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=opaque"}
    response = app.test_client().post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200
    found = finished(app, exporter)
    server, client = one_of(SpanKind.SERVER, found), one_of(SpanKind.CLIENT, found)
    assert server.parent is not None and server.parent.is_remote and format(server.parent.span_id, "016x") == CALLER_SPAN
    assert hex_ids(server)[0] == hex_ids(client)[0] == CALLER_TRACE
    assert response.headers["X-Request-ID"] == f"{CALLER_TRACE}-{hex_ids(server)[1]}"
    sent = upstream.requests[-1].headers
    assert sent_context(sent["traceparent"]) == (CALLER_TRACE, hex_ids(client)[1], True)
    assert sent["tracestate"] == "vendor=opaque"
    assert "baggage" not in sent


def test_a_caller_that_does_not_sample_is_followed_by_the_default_sampler(traced, upstream) -> None:
    # parentbased_always_on (the SDK's default): the caller's "not sampled" is kept, nothing is
    # recorded, and the trace still goes on upstream, unsampled, under the request's id.
    app, exporter = traced()
    headers = {**KEY_HEADERS, "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}
    response = app.test_client().post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200
    assert finished(app, exporter) == []
    assert response.headers["X-Request-ID"].startswith(CALLER_TRACE + "-")
    trace_id, _, sampled = sent_context(upstream.requests[-1].headers["traceparent"])
    assert trace_id == CALLER_TRACE and not sampled


def test_a_malformed_traceparent_starts_a_new_trace(traced, upstream) -> None:
    app, exporter = traced()
    headers = {**KEY_HEADERS, "traceparent": "00-not-a-trace-01"}
    assert app.test_client().post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    server = one_of(SpanKind.SERVER, finished(app, exporter))
    assert server.parent is None


def test_a_streamed_calls_server_span_ends_at_the_streams_end_with_its_usage(traced, upstream) -> None:
    app, exporter = traced()
    upstream.behavior = Behavior(chunks=4, gap=0.05)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with app.test_client().post("/v1/chat/completions", json=body, headers=KEY_HEADERS, buffered=False) as response:
        pieces = iter(response.response)
        assert next(pieces)
        assert finished(app, exporter) == []  # the answer has started, the stream is not over
        streamed = b"".join(pieces).decode()
    events = [json.loads(block[len("data: ") :]) for block in streamed.split("\n\n") if block.startswith("data: {")]
    (usage,) = [event["usage"] for event in events if event.get("usage")]
    found = finished(app, exporter)
    server, attempt = one_of(SpanKind.SERVER, found), one_of(SpanKind.CLIENT, found)
    assert server.attributes is not None and attempt.attributes is not None
    assert server.attributes["gateway.stream.outcome"] == "completed"
    assert server.attributes["gen_ai.response.model"] == events[-1]["model"] == "m"  # named by the usage chunk
    for span in (server, attempt):
        assert span.attributes is not None
        assert span.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
        assert span.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert server.end_time is not None and server.start_time is not None and attempt.end_time is not None
    assert server.end_time - server.start_time >= 4 * 0.05 * 1e9 * 0.9  # the span lasted the stream, its gaps included
    assert attempt.end_time == server.end_time  # the answering attempt ends with the stream
    no_text_recorded(found)


def test_a_stream_the_upstream_breaks_off_is_an_error_span(traced, upstream) -> None:
    app, exporter = traced()
    upstream.behavior = Behavior(mode="drop", drop_after=2)
    response = app.test_client().post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=KEY_HEADERS)
    assert response.status_code == 200 and b"event: error" in response.get_data()
    server = one_of(SpanKind.SERVER, finished(app, exporter))
    assert server.attributes is not None and server.attributes["gateway.stream.outcome"] == "upstream_broke_off"
    assert server.status.status_code == StatusCode.ERROR and server.attributes["error.type"] == "upstream_broke_off"


@pytest.fixture
def two() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    a, b = FakeUpstream().start(), FakeUpstream().start()
    yield a, b
    a.stop()
    b.stop()


def test_a_call_with_a_retry_has_one_client_span_per_attempt(traced, tmp_path: Path, two) -> None:
    a, b = two
    fallback = "\n  - name: shared\n    deployments:\n      - {backend: a}\n      - {backend: b, priority: 1}\n"
    app, exporter = traced(**PLENTY, gateway_config=write_config(tmp_path, a, b, models=fallback))
    a.script = [Behavior(mode="status", status=503)]
    response = app.test_client().post("/v1/chat/completions", json={**CHAT, "model": "shared"}, headers=KEY_HEADERS)
    assert response.status_code == 200
    found = finished(app, exporter)
    server = one_of(SpanKind.SERVER, found)
    first, second = sorted((span for span in found if span.kind == SpanKind.CLIENT), key=lambda span: span.start_time or 0)
    assert first.parent is not None and second.parent is not None
    assert first.parent.span_id == second.parent.span_id == server.context.span_id
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["gateway.backend.name"] == "a" and second.attributes["gateway.backend.name"] == "b"
    assert first.attributes["gateway.attempt.outcome"] == "status_5xx" and first.status.status_code == StatusCode.ERROR
    assert first.attributes["error.type"] == "status_5xx" and "gen_ai.usage.input_tokens" not in first.attributes
    assert second.attributes["gateway.attempt.outcome"] == "ok" and second.attributes["http.request.resend_count"] == 1
    assert second.attributes["gen_ai.usage.output_tokens"] > 0
    assert first.end_time is not None and second.start_time is not None and first.end_time <= second.start_time
    # Each backend was sent its own attempt's context.
    assert sent_context(a.requests[-1].headers["traceparent"]) == (*hex_ids(first), True)
    assert sent_context(b.requests[-1].headers["traceparent"]) == (*hex_ids(second), True)
    assert server.attributes is not None and server.attributes["gateway.backend.name"] == "b"
    assert server.status.status_code == StatusCode.UNSET


def test_a_request_refused_before_the_upstream_has_only_its_server_span(traced, upstream) -> None:
    app, exporter = traced()
    response = app.test_client().post("/v1/chat/completions", json=CHAT)  # no credentials
    assert response.status_code == 401
    (server,) = finished(app, exporter)
    assert server.kind == SpanKind.SERVER and server.attributes is not None
    assert server.attributes["http.response.status_code"] == 401 and server.status.status_code == StatusCode.UNSET
    assert server.attributes["gateway.error.code"] == response.get_json()["error"]["code"]
    assert upstream.requests == []


def test_an_unreachable_upstream_is_an_error_on_both_spans(traced, upstream) -> None:
    app, exporter = traced(ai_api_url="http://127.0.0.1:9/v1/completions")
    response = app.test_client().post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS)
    assert response.status_code == 502
    found = finished(app, exporter)
    server, client = one_of(SpanKind.SERVER, found), one_of(SpanKind.CLIENT, found)
    assert server.status.status_code == StatusCode.ERROR and client.status.status_code == StatusCode.ERROR
    assert client.attributes is not None and client.attributes["error.type"] == "connect"
    assert server.attributes is not None and server.attributes["error.type"] == response.get_json()["error"]["code"]


def test_tracing_off_sends_no_traceparent_and_registers_nothing(app: Flask, upstream) -> None:
    assert tracing.tracing_of(app) is None
    hooks = [getattr(hook, "__name__", "") for hook in app.before_request_funcs.get(None, [])]
    assert "begin_request" not in hooks
    response = app.test_client().post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS)
    assert response.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    assert "traceparent" not in upstream.requests[-1].headers
