"""Graceful stop under real gunicorn (gevent worker), past the point where requests
finish on their own: streams still running at the worker's drain deadline end with
the SSE error event, their log lines and usage rows are written, the worker says how
many it cut and exits before the master's SIGKILL; kept-alive connections are closed
cleanly (gateway.server.GeventWorker)."""

from __future__ import annotations

import http.client
import json
import signal
import sqlite3
import subprocess
import threading
import time

import pytest

from gateway.server import drain_seconds
from tests.e2e.conftest import AUTH, HOST, EventStream, GatewayServer
from tests.fakes.upstream import Behavior

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
HIGH_LIMITS = {"RATE_LIMIT_AI": "1000 per minute", "RATE_LIMIT_GENERAL": "1000 per minute"}
GRACEFUL = 6
STREAMS = 5


def _usage_rows(server: GatewayServer) -> int:
    with sqlite3.connect(server.workdir / "instance" / "gateway.db") as db:
        return db.execute("SELECT count(*) FROM usage").fetchone()[0]


def _log_lines(server: GatewayServer) -> list[dict]:
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.mark.timeout(60)
def test_streams_past_the_drain_deadline_end_with_the_error_event(gateway_server, upstream) -> None:
    server: GatewayServer = gateway_server(GATEWAY_GRACEFUL_TIMEOUT=str(GRACEFUL), **HIGH_LIMITS)
    upstream.behavior = Behavior(chunks=30, gap=0.5)  # 15 s streams, far past the graceful timeout
    streams = [EventStream(server.url, "/v1/chat/completions", CHAT, timeout=20) for _ in range(STREAMS)]
    try:
        for stream in streams:
            assert stream.status == 200
            assert stream.next_events()
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        outcomes: list[list[str]] = []
        readers = [threading.Thread(target=lambda s=s: outcomes.append(s.read_all())) for s in streams]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(GRACEFUL + 5)
        try:
            returncode = server.proc.wait(timeout=GRACEFUL + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn did not exit:\n{server.log()}")
        exited = time.monotonic() - signalled
    finally:
        for stream in streams:
            stream.close()
    log = server.log()
    assert len(outcomes) == STREAMS, log
    for events in outcomes:
        last = events[-1]
        assert last.startswith("event: error\ndata: "), events[-3:]
        error = json.loads(last.split("data: ", 1)[1])["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "api_error", error
        assert "data: [DONE]" not in events
        assert sum(e.startswith("event: error") for e in events) == 1, events[-3:]
    for stream in streams:
        cut_after = stream.events[-1][0] - signalled
        assert drain_seconds(GRACEFUL) - 0.5 < cut_after < GRACEFUL, cut_after
    # The worker exited on its own, before the master's kill deadline.
    assert returncode == 0, log
    assert exited < GRACEFUL + 1, exited
    assert "SIGKILL" not in log and "WORKER TIMEOUT" not in log and "graceful timeout" not in log, log
    lines = _log_lines(server)
    cut = [line for line in lines if line.get("streams_cut") is not None]
    assert len(cut) == 1 and cut[0]["streams_cut"] == STREAMS and cut[0]["requests_cut"] == 0, cut
    logged = [line for line in lines if line.get("path") == "/v1/chat/completions"]
    assert len(logged) == STREAMS and all(line["stream"] == "server_shutdown" for line in logged), logged
    assert _usage_rows(server) == STREAMS


@pytest.mark.timeout(60)
def test_keep_alive_connections_are_closed_cleanly_on_sigterm(gateway_server, upstream) -> None:
    server: GatewayServer = gateway_server(GATEWAY_GRACEFUL_TIMEOUT=str(GRACEFUL), **HIGH_LIMITS)
    busy = http.client.HTTPConnection(HOST, server.port, timeout=10)
    idle = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        for conn in (busy, idle):
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            assert response.getheader("Connection") == "keep-alive"
        # A non-streamed answer that takes about 2 s, in flight across SIGTERM.
        upstream.behavior = Behavior(mode="drip", gap=0.01)
        busy.request("POST", "/api/ai/completion", body=json.dumps({"model": "m", "prompt": "hi"}),
                     headers={**AUTH, "Content-Type": "application/json"})
        time.sleep(0.5)
        server.signal(signal.SIGTERM)
        signalled = time.monotonic()
        # The idle connection is closed at once, not after the keep-alive timeout (5 s).
        idle.sock.settimeout(4)
        assert idle.sock.recv(1) == b"", "an idle kept-alive connection was not closed on SIGTERM"
        assert time.monotonic() - signalled < 2.5
        # The request already sent is run, and its answer announces the close.
        response = busy.getresponse()
        body = response.read()
        assert response.status == 200, body
        assert json.loads(body)["object"] == "text_completion"
        assert response.getheader("Connection") == "close"
        assert response.will_close
    finally:
        busy.close()
        idle.close()
    assert server.proc.wait(timeout=GRACEFUL + 5) == 0, server.log()
