"""SSE relay under real gunicorn (gevent): timing, framing, failures, disconnects."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.e2e.conftest import JSON_AUTH, EventStream, GatewayServer, request
from tests.fakes.upstream import Behavior

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(scope="module")
def server(module_gateway_server) -> GatewayServer:
    return module_gateway_server(RATE_LIMIT_AI="1000 per minute", RATE_LIMIT_GENERAL="1000 per minute")


@pytest.fixture
def idle_upstream(upstream):
    """The fake with no stream left over from an earlier test."""
    assert upstream.wait_for_active_streams(0, timeout=5), "a stream from an earlier test is still running"
    return upstream


def _data(event: str) -> str:
    assert event.startswith("data: "), event
    return event[len("data: ") :]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_events_arrive_as_the_upstream_sends_them(server, idle_upstream, framing) -> None:
    gap = 0.3
    idle_upstream.behavior = Behavior(chunks=5, gap=gap, framing=framing)
    stream = EventStream(server.url, "/v1/chat/completions", CHAT)
    try:
        assert stream.status == 200
        assert stream.headers["Content-Type"].split(";")[0] == "text/event-stream"
        assert stream.headers["Cache-Control"] == "no-cache"
        assert stream.headers["X-Accel-Buffering"] == "no"
        assert stream.headers.get("Content-Length") is None
        assert stream.headers["Server"] == "ai-proxy"
        events = stream.read_all()
    finally:
        stream.close()

    assert len(events) == 5 + 2, events  # five deltas, the finish chunk, [DONE]
    assert events[-1] == "data: [DONE]"
    deltas = [json.loads(_data(e))["choices"][0]["delta"].get("content") for e in events[:5]]
    assert deltas == [f"tok{i} " for i in range(5)]

    times = [t for t, _ in stream.events]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(g >= gap - 0.1 for g in gaps), f"events were bunched together: gaps {gaps}"
    # Not buffered: the first event arrives about when the upstream sent it, long before the last.
    assert times[0] - stream.sent_at < 1.0
    assert times[-1] - times[0] >= 6 * gap - 0.2


@pytest.mark.timeout(30)
def test_completion_stream_ends_with_done(server, idle_upstream) -> None:
    idle_upstream.behavior = Behavior(chunks=3)
    stream = EventStream(server.url, "/api/ai/completion", {"model": "fake-model", "prompt": "hi", "stream": True})
    try:
        assert stream.status == 200
        events = stream.read_all()
    finally:
        stream.close()
    assert events[-1] == "data: [DONE]"
    assert [json.loads(_data(e))["choices"][0]["text"] for e in events[:3]] == ["tok0 ", "tok1 ", "tok2 "]


@pytest.mark.timeout(40)
def test_long_stream_outlives_the_worker_timeout(gateway_server, idle_upstream) -> None:
    server = gateway_server(GATEWAY_TIMEOUT="2")
    idle_upstream.behavior = Behavior(chunks=5, gap=1.0)
    stream = EventStream(server.url, "/v1/chat/completions", CHAT, timeout=15)
    try:
        assert stream.status == 200
        events = stream.read_all()
    finally:
        stream.close()
    times = [t for t, _ in stream.events]
    assert times[-1] - stream.sent_at > 2 * 2, "the stream should run well past GATEWAY_TIMEOUT"
    assert events[-1] == "data: [DONE]", events
    assert len(events) == 7
    log = server.log()
    assert "WORKER TIMEOUT" not in log, log
    # The same worker is still serving.
    assert log.count("Booting worker") == 1, log


@pytest.mark.timeout(30)
def test_upstream_drop_ends_with_an_error_event(server, idle_upstream) -> None:
    idle_upstream.behavior = Behavior(mode="drop", drop_after=2, gap=0.05)
    stream = EventStream(server.url, "/v1/chat/completions", CHAT)
    try:
        assert stream.status == 200
        events = stream.read_all()
    finally:
        stream.close()
    assert "data: [DONE]" not in events
    assert len(events) == 3, events
    assert [json.loads(_data(e))["object"] for e in events[:2]] == ["chat.completion.chunk"] * 2
    kind, data = events[-1].split("\n", 1)
    assert kind == "event: error"
    error = json.loads(_data(data))["error"]
    assert error["code"] == "upstream_stream_error"


@pytest.mark.timeout(30)
def test_client_disconnect_closes_the_upstream_stream(server, idle_upstream) -> None:
    idle_upstream.behavior = Behavior(chunks=100, gap=0.1)
    stream = EventStream(server.url, "/v1/chat/completions", CHAT)
    try:
        assert stream.status == 200
        assert stream.next_events()
        assert idle_upstream.active_streams == 1
    finally:
        stream.close()
    started = time.monotonic()
    assert idle_upstream.wait_for_active_streams(0, timeout=2.0), "the upstream stream outlived its client"
    assert time.monotonic() - started < 2.0
    # The gateway is fine afterwards.
    status, _, _ = request(server.url, "GET", "/health", timeout=2)
    assert status == 200


@pytest.mark.timeout(30)
def test_health_answers_while_a_stream_hangs(server, idle_upstream) -> None:
    idle_upstream.behavior = Behavior(mode="hang", hang_seconds=2)
    body = json.dumps(CHAT).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in JSON_AUTH.items())
        + "Connection: close\r\n\r\n"
    )
    stuck = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        stuck.sendall(head.encode() + body)
        assert idle_upstream.wait_for_requests(1, timeout=5), "the stuck request never reached the upstream"
        for _ in range(3):
            started = time.monotonic()
            status, _, payload = request(server.url, "GET", "/health", timeout=1.0)
            assert status == 200 and json.loads(payload) == {"status": "ok"}
            assert time.monotonic() - started < 1.0
    finally:
        stuck.close()
