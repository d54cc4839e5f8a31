"""Process lifecycle under real gunicorn: graceful SIGTERM, SIGHUP reload."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.e2e.conftest import AUTH, EventStream, GatewayServer, request
from tests.fakes.upstream import Behavior

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
HIGH_LIMITS = {"RATE_LIMIT_AI": "1000 per minute", "RATE_LIMIT_GENERAL": "1000 per minute"}


@pytest.mark.timeout(45)
def test_sigterm_lets_an_in_flight_stream_finish(gateway_server, upstream) -> None:
    server: GatewayServer = gateway_server(GATEWAY_GRACEFUL_TIMEOUT="10")
    upstream.behavior = Behavior(chunks=3, gap=1.0)
    stream = EventStream(server.url, "/v1/chat/completions", CHAT, timeout=15)
    try:
        assert stream.status == 200
        assert stream.next_events()
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        events = stream.read_all()
    finally:
        stream.close()
    assert events[-1] == "data: [DONE]", events
    assert len(events) == 3 + 2
    assert stream.events[-1][0] - signalled > 2.5, "the stream should have run on after SIGTERM"
    try:
        returncode = server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn did not exit within the graceful timeout:\n{server.log()}")
    assert returncode == 0, server.log()
    assert time.monotonic() - signalled < 10 + 1
    assert time.monotonic() - stream.events[-1][0] < 5, "exit should follow the last stream, not the timeout"
    # Shut down, not crashed: no worker was killed on the way out.
    log = server.log()
    assert "WORKER TIMEOUT" not in log and "SIGKILL" not in log, log
    assert "Shutting down" in log


def _complete(server: GatewayServer, index: int) -> tuple[int, bool]:
    """One request on a fresh connection; (status, whether the body is complete)."""
    if index % 2:
        status, _, body = request(
            server.url, "POST", "/api/ai/completion", {"model": "fake-model", "prompt": "hi"}, headers=AUTH, timeout=10
        )
        return status, status == 200 and json.loads(body)["choices"][0]["text"] == " fake completion"
    stream = EventStream(server.url, "/v1/chat/completions", CHAT, timeout=10)
    try:
        events = stream.read_all() if stream.status == 200 else []
    finally:
        stream.close()
    return stream.status, bool(events) and events[-1] == "data: [DONE]"


@pytest.mark.timeout(60)
def test_sighup_reload_loses_no_request(gateway_server, upstream) -> None:
    server: GatewayServer = gateway_server(**HIGH_LIMITS)
    upstream.behavior = Behavior(chunks=3, gap=0.05)

    def booted(log: str) -> int:
        return log.count("Booting worker with pid")

    results = []
    reloaded_at = None
    for index in range(40):
        if index == 10:
            # SIGHUP while a stream is in flight on the old worker.
            stream = EventStream(server.url, "/v1/chat/completions", CHAT, timeout=10)
            assert stream.next_events()
            server.signal(signal.SIGHUP)
            try:
                events = stream.read_all()
            finally:
                stream.close()
            results.append((index, stream.status, events[-1] == "data: [DONE]"))
            continue
        if reloaded_at is None and booted(server.log()) >= 2:
            reloaded_at = index
        status, complete = _complete(server, index)
        results.append((index, status, complete))

    assert [r for r in results if r[1] != 200 or not r[2]] == [], results
    assert server.proc.poll() is None, server.log()
    log = server.log()
    assert "Handling signal: hup" in log.lower() or "hang up" in log.lower(), log
    assert booted(log) >= 2, log
    assert reloaded_at is not None and reloaded_at <= 30, (
        f"the new worker only came up at request {reloaded_at}; the load did not span the reload:\n{log}"
    )
    # The old worker went away and the new one serves.
    assert server.wait_for_log(lambda text: "Worker exiting" in text, timeout=10), server.log()
    assert request(server.url, "GET", "/health", timeout=2)[0] == 200
