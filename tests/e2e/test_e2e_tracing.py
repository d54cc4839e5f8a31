"""Tracing under real gunicorn (issue 18): spans exported as OTLP over HTTP to a receiver on
loopback, from the worker's batch processor, and the last ones flushed when the worker stops.

The receiver is a tiny real HTTP server in the test: it takes ``POST /v1/traces`` bodies
and decodes them as the protobuf ``ExportTraceServiceRequest`` (opentelemetry-proto),
as a collector would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.conftest import JSON_AUTH, EventStream, request
from tests.fakes.upstream import Behavior

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@dataclass
class Received:
    """One span as the receiver decoded it, with its resource's attributes."""

    span: Span
    resource: dict[str, Any]

    @property
    def attributes(self) -> dict[str, Any]:
        return _values(self.span.attributes)

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _values(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver:
    """``POST /v1/traces`` (OTLP/HTTP, protobuf) on loopback; keeps every span it was sent."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.posts = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def take(self, export: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.posts += 1
            for resource_spans in export.resource_spans:
                resource = _values(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(Received(span, resource) for span in scope_spans.spans)

    def relayed(self) -> list[Received]:
        """The spans of AI requests (not of the fixture's ``GET /health``), and their client spans."""
        with self._lock:
            traces = {item.trace_id for item in self.spans if item.attributes.get("http.route") == "/v1/chat/completions"}
            return [item for item in self.spans if item.trace_id in traces]

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """The spans of AI requests, once there are ``count`` of them (or at the timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.relayed()) < count:
            time.sleep(0.05)
        return self.relayed()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.stop()


def _tracing_env(receiver: OtlpReceiver, schedule_delay_ms: int) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "gateway-e2e",
        "OTEL_BSP_SCHEDULE_DELAY": str(schedule_delay_ms),
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


def _chat(stream: bool = False) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def test_spans_reach_an_otlp_receiver_from_a_gunicorn_worker(gateway_server, upstream, receiver: OtlpReceiver) -> None:
    server = gateway_server(**_tracing_env(receiver, schedule_delay_ms=200))
    headers = {**JSON_AUTH, "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    status, answer_headers, _ = request(server.url, "POST", "/v1/chat/completions", _chat(), headers=headers)
    assert status == 200
    upstream.behavior = Behavior(chunks=3, gap=0.05)
    stream = EventStream(server.url, "/v1/chat/completions", _chat(stream=True))
    assert stream.status == 200 and stream.read_all()[-1] == "data: [DONE]"
    stream.close()
    found = receiver.wait_for(4, timeout=10)
    assert len(found) == 4, server.log()
    servers = [item for item in found if item.span.kind == Span.SPAN_KIND_SERVER]
    clients = [item for item in found if item.span.kind == Span.SPAN_KIND_CLIENT]
    assert len(servers) == 2 and len(clients) == 2
    assert {item.resource["service.name"] for item in found} == {"gateway-e2e"}
    # The plain call continued the caller's trace; its request id is the trace's.
    (plain,) = [item for item in servers if item.trace_id == CALLER_TRACE]
    assert plain.span.parent_span_id.hex() == CALLER_SPAN
    assert answer_headers["X-Request-ID"] == f"{CALLER_TRACE}-{plain.span_id}"
    (plain_client,) = [item for item in clients if item.trace_id == CALLER_TRACE]
    assert plain_client.span.parent_span_id == plain.span.span_id
    assert upstream.requests[0].headers["traceparent"].startswith(f"00-{CALLER_TRACE}-{plain_client.span_id}-")
    # The stream's spans: a new trace, the server span lasting the stream, with its usage.
    (streamed,) = [item for item in servers if item.trace_id != CALLER_TRACE]
    assert streamed.attributes["gateway.stream.outcome"] == "completed"
    assert streamed.attributes["gen_ai.usage.output_tokens"] > 0 and streamed.attributes["gen_ai.operation.name"] == "chat"
    assert streamed.span.end_time_unix_nano - streamed.span.start_time_unix_nano >= 0.1 * 1e9
    assert "hi" not in {str(value) for item in found for value in item.attributes.values()}


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_the_last_spans_are_exported_when_the_worker_stops(
    gateway_server, upstream, receiver: OtlpReceiver, worker_class: str
) -> None:
    # A batch schedule longer than the test: the spans can only leave at the worker's exit.
    server = gateway_server(GATEWAY_WORKER_CLASS=worker_class, **_tracing_env(receiver, schedule_delay_ms=600_000))
    for _ in range(3):
        status, _, _ = request(server.url, "POST", "/v1/chat/completions", _chat(), headers=JSON_AUTH)
        assert status == 200
    time.sleep(0.5)
    assert receiver.posts == 0
    assert server.stop() == 0  # SIGTERM: a graceful stop
    found = receiver.wait_for(6, timeout=2)
    assert len(found) == 6, server.log()
    assert sorted(item.span.kind for item in found) == [Span.SPAN_KIND_SERVER] * 3 + [Span.SPAN_KIND_CLIENT] * 3
