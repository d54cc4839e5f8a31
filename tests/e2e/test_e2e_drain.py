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

from gateway.server.workers import drain_seconds
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
        busy.request(
            "POST",
            "/api/ai/completion",
            body=json.dumps({"model": "m", "prompt": "hi"}),
            headers={**AUTH, "Content-Type": "application/json"},
        )
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


@pytest.mark.timeout(60)
def test_a_new_connection_gets_its_first_request_served_during_the_drain(gateway_server, upstream) -> None:
    """During a reload the old worker may accept a connection whose request has not arrived
    yet: that is not an idle kept-alive connection, and its first request is served."""
    server: GatewayServer = gateway_server(GATEWAY_GRACEFUL_TIMEOUT=str(GRACEFUL), **HIGH_LIMITS)
    upstream.behavior = Behavior(mode="drip", gap=0.01)  # keeps the worker draining for ~2 s
    busy = http.client.HTTPConnection(HOST, server.port, timeout=10)
    fresh = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        busy.request(
            "POST",
            "/api/ai/completion",
            body=json.dumps({"model": "m", "prompt": "hi"}),
            headers={**AUTH, "Content-Type": "application/json"},
        )
        fresh.connect()  # accepted by the worker; its request comes after the SIGTERM
        time.sleep(0.5)
        server.signal(signal.SIGTERM)
        time.sleep(0.5)
        fresh.request("GET", "/health")
        response = fresh.getresponse()
        assert response.status == 200, response.read()
        response.read()
        assert response.getheader("Connection") == "close"
        assert busy.getresponse().status == 200
    finally:
        busy.close()
        fresh.close()
    assert server.proc.wait(timeout=GRACEFUL + 5) == 0, server.log()


@pytest.mark.timeout(90)
def test_stop_right_after_a_reload_ends_within_the_measured_bound(gateway_server, upstream) -> None:
    """SIGHUP then SIGTERM with streams on the old worker: gunicorn's master handles the
    reload first, so the stop takes longer than one graceful timeout. The bound below
    is what deploy/ai-proxy.service's TimeoutStopSec is derived from."""
    server: GatewayServer = gateway_server(GATEWAY_GRACEFUL_TIMEOUT=str(GRACEFUL), **HIGH_LIMITS)
    upstream.behavior = Behavior(chunks=60, gap=0.5)  # 30 s streams
    streams = [EventStream(server.url, "/v1/chat/completions", CHAT, timeout=40) for _ in range(3)]
    try:
        for stream in streams:
            assert stream.next_events()
        started = time.monotonic()
        server.signal(signal.SIGHUP)
        assert server.wait_for_log(lambda text: text.count("Booting worker with pid") >= 2, timeout=10), server.log()
        time.sleep(2)  # the old worker notices its SIGTERM within 1 s and stops accepting
        late = [EventStream(server.url, "/v1/chat/completions", CHAT, timeout=40) for _ in range(2)]
        streams += late
        for stream in late:
            assert stream.next_events()
        server.signal(signal.SIGTERM)
        readers = [threading.Thread(target=s.read_all) for s in streams]
        for reader in readers:
            reader.start()
        try:
            returncode = server.proc.wait(timeout=3 * GRACEFUL + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn did not exit:\n{server.log()}")
        took = time.monotonic() - started
        for reader in readers:
            reader.join(5)
    finally:
        for stream in streams:
            stream.close()
    log = server.log()
    print(f"stop right after a reload took {took:.1f} s with GATEWAY_GRACEFUL_TIMEOUT={GRACEFUL}")
    assert returncode == 0, log
    # The worst case: the old worker drains inside the master's reload, then the new one.
    new_worker = log.splitlines()[[i for i, line in enumerate(log.splitlines()) if "Hang up" in line][0] + 1]
    assert "Booting worker" in new_worker, log
    assert 2 * drain_seconds(GRACEFUL) < took < 2 * GRACEFUL + 2, (took, log)
    for stream in streams:
        assert stream.events[-1][1].startswith("event: error"), stream.events[-2:]


@pytest.mark.timeout(60)
def test_a_non_streamed_request_past_the_drain_deadline_gets_its_error(gateway_server, upstream) -> None:
    server: GatewayServer = gateway_server(GATEWAY_GRACEFUL_TIMEOUT=str(GRACEFUL), **HIGH_LIMITS)
    upstream.behavior = Behavior(mode="drip", gap=0.5)  # a JSON answer one byte every 0.5 s: minutes
    conn = http.client.HTTPConnection(HOST, server.port, timeout=GRACEFUL + 5)
    try:
        conn.request(
            "POST",
            "/api/ai/completion",
            body=json.dumps({"model": "m", "prompt": "hi"}),
            headers={**AUTH, "Content-Type": "application/json"},
        )
        time.sleep(1.0)
        server.signal(signal.SIGTERM)
        signalled = time.monotonic()
        response = conn.getresponse()
        body = response.read()
        answered = time.monotonic() - signalled
    finally:
        conn.close()
    assert response.status == 502, body
    assert json.loads(body)["error"]["type"] == "api_error"
    assert response.getheader("Connection") == "close"
    assert drain_seconds(GRACEFUL) - 0.5 < answered < GRACEFUL, answered
    assert server.proc.wait(timeout=GRACEFUL + 5) == 0, server.log()
    cut = [line for line in _log_lines(server) if line.get("requests_cut") is not None]
    assert len(cut) == 1 and (cut[0]["streams_cut"], cut[0]["requests_cut"]) == (0, 1), cut
    assert _usage_rows(server) == 1
