"""Hostile upstreams under real gunicorn (gevent, one worker): the worker keeps serving.

An upstream that pours one endless event, trickles its status line, cuts its header
block or sends an empty 200 must cost the gateway one bounded request, never the
worker (``/health``, the other requests on it, its in-memory quotas).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.e2e.conftest import JSON_AUTH, EventStream, GatewayServer, error_envelope, request
from tests.fakes.upstream import Behavior

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
TOTAL_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def server(module_gateway_server) -> GatewayServer:
    return module_gateway_server(
        RATE_LIMIT_AI="1000 per minute",
        RATE_LIMIT_GENERAL="1000 per minute",
        UPSTREAM_READ_TIMEOUT="20",
        UPSTREAM_TOTAL_TIMEOUT=str(TOTAL_TIMEOUT),
    )


@pytest.fixture
def idle_upstream(upstream):
    assert upstream.wait_for_active_streams(0, timeout=10), "a stream from an earlier test is still running"
    return upstream


def _health_latency(server: GatewayServer) -> float:
    started = time.monotonic()
    status, _, _ = request(server.url, "GET", "/health", timeout=5)
    assert status == 200
    return time.monotonic() - started


def _worker_boots(server: GatewayServer) -> int:
    return server.log().count("Booting worker with pid")


@pytest.mark.timeout(90)
def test_an_endless_event_ends_the_stream_and_the_worker_keeps_serving(server, idle_upstream) -> None:
    boots = _worker_boots(server)
    idle_upstream.behavior = Behavior(mode="no_event_boundary", event_bytes=48 * 1024 * 1024)
    result: dict[str, object] = {}

    def pour() -> None:
        # Read the raw body (up to 4 MiB): the gateway's answer, not a client's framing, is under test.
        stream = EventStream(server.url, "/v1/chat/completions", {**CHAT, "stream": True}, timeout=60)
        pieces, size = [], 0
        try:
            result["status"] = stream.status
            while size < 4 * 1024 * 1024 and (piece := stream.response.read1(65536)):
                pieces.append(piece)
                size += len(piece)
            result["body"] = b"".join(pieces)
        finally:
            stream.close()

    thread = threading.Thread(target=pour, daemon=True)
    thread.start()
    assert idle_upstream.wait_for_active_streams(1, timeout=5)
    latencies = []
    probing_ends = time.monotonic() + 4
    while time.monotonic() < probing_ends:
        latencies.append(_health_latency(server))
        time.sleep(0.2)
    assert max(latencies) < 1.5, latencies
    thread.join(timeout=60)
    assert not thread.is_alive(), "the stream did not end"
    assert result["status"] == 200
    body = result["body"]
    assert isinstance(body, bytes) and body.startswith(b"event: error\ndata: ") and body.endswith(b"\n\n")
    assert json.loads(body.split(b"data: ", 1)[1])["error"]["code"] == "upstream_event_too_large"
    assert idle_upstream.wait_for_active_streams(0, timeout=10)  # the upstream connection was dropped
    assert _worker_boots(server) == boots and "WORKER TIMEOUT" not in server.log()


@pytest.mark.timeout(30)
def test_a_trickled_status_line_is_cut_at_the_total_timeout(server, idle_upstream) -> None:
    # One byte per 0.5 s never trips the 20 s read timeout; UPSTREAM_TOTAL_TIMEOUT (3 s) must.
    idle_upstream.behavior = Behavior(mode="trickle_status", gap=0.5)
    result: dict[str, object] = {}

    def call() -> None:
        started = time.monotonic()
        result["answer"] = request(server.url, "POST", "/v1/chat/completions", CHAT, headers=JSON_AUTH, timeout=20)
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    assert idle_upstream.wait_for_requests(1, timeout=5)
    assert _health_latency(server) < 1.5  # the worker serves others meanwhile
    thread.join(timeout=15)
    status, headers, body = result["answer"]  # type: ignore[misc]
    assert status == 504 and error_envelope(body)["code"] == "upstream_timeout"
    assert TOTAL_TIMEOUT - 0.5 < result["seconds"] < TOTAL_TIMEOUT + 2.5  # type: ignore[operator]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("behavior", "code"),
    [
        (Behavior(mode="truncated_head"), "upstream_incomplete"),
        (Behavior(mode="empty_200"), "upstream_empty_response"),
        (Behavior(mode="empty_200", empty_framing="close"), "upstream_empty_response"),
    ],
    ids=["truncated-head", "empty-200", "empty-200-close"],
)
def test_a_cut_or_empty_answer_is_a_502_envelope(server, idle_upstream, behavior, code, stream) -> None:
    idle_upstream.behavior = behavior
    status, headers, body = request(server.url, "POST", "/v1/chat/completions", {**CHAT, "stream": stream}, headers=JSON_AUTH)
    assert status == 502 and headers["Content-Type"] == "application/json"
    assert error_envelope(body)["code"] == code


@pytest.mark.timeout(30)
def test_surrogates_and_nul_in_an_answer_are_relayed(server, idle_upstream) -> None:
    idle_upstream.behavior = Behavior(mode="surrogates")
    status, _, body = request(server.url, "POST", "/v1/chat/completions", CHAT, headers=JSON_AUTH)
    assert status == 200 and b'"model":"fake\\ud800model\\u0000"' in body
    stream = EventStream(server.url, "/v1/chat/completions", {**CHAT, "stream": True})
    try:
        assert stream.status == 200 and stream.read_all()[-1] == "data: [DONE]"
    finally:
        stream.close()
