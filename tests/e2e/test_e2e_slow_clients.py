"""Slow and greedy clients under real gunicorn (gevent worker): a body trickled in is
cut with 408 after ``REQUEST_BODY_TIMEOUT``; unauthenticated connections beyond
``MAX_CONNECTIONS_PER_ADDRESS`` from one address are refused with 429, while
authenticated ones from the same address are not counted; ``/health`` keeps
answering meanwhile. Bounded: a few dozen loopback connections, seconds long."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.e2e.conftest import AUTH, EventStream, GatewayServer, error_envelope, request
from tests.fakes.upstream import Behavior

ATTACKER = "127.0.0.1"
BYSTANDER = "127.0.0.2"  # another loopback address: not under the attacker's cap
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
HIGH_LIMITS = {"RATE_LIMIT_AI": "1000 per minute", "RATE_LIMIT_GENERAL": "1000 per minute"}


def _open(server: GatewayServer, source: str = ATTACKER) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0))
    sock.sendall(b"POST /auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
    return sock


def _trickle_until_answered(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Send one byte every 0.2 s until the server answers and closes; (answer, seconds)."""
    started = time.monotonic()
    sock.settimeout(0.2)
    answer = b""
    while time.monotonic() - started < limit:
        try:
            sock.sendall(b" ")
        except OSError:
            pass
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not data:
            break
        answer += data
    return answer, time.monotonic() - started


def _health_ms(server: GatewayServer) -> float:
    conn_started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5, source_address=(BYSTANDER, 0))
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return (time.monotonic() - conn_started) * 1000


def _status_and_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    return int(head.split()[1]), error_envelope(body)


@pytest.mark.timeout(60)
def test_a_trickled_body_is_cut_with_408(gateway_server) -> None:
    server: GatewayServer = gateway_server(REQUEST_BODY_TIMEOUT="2", MAX_CONNECTIONS_PER_ADDRESS="0")
    clients = [_open(server) for _ in range(5)]
    results: list[tuple[bytes, float]] = []
    threads = [threading.Thread(target=lambda s=s: results.append(_trickle_until_answered(s, 15))) for s in clients]
    for thread in threads:
        thread.start()
    health = [_health_ms(server) for _ in range(5)]
    for thread in threads:
        thread.join(20)
    for sock in clients:
        sock.close()
    assert len(results) == 5
    for answer, seconds in results:
        status, error = _status_and_error(answer)
        assert status == 408 and error["code"] == "request_timeout", answer[:300]
        assert 1.5 < seconds < 8, seconds
    assert max(health) < 2000, health
    log = server.log()
    assert log.count('"status": 408') == 5, log


@pytest.mark.timeout(60)
def test_connections_per_address_are_capped_and_health_answers(gateway_server) -> None:
    """30 slow clients from one address on a worker of 20 connections: without the cap
    they would take every connection and /health would wait; with a cap of 8 the rest
    are refused at once, and the 8 are cut by the body deadline."""
    server: GatewayServer = gateway_server(REQUEST_BODY_TIMEOUT="4", MAX_CONNECTIONS_PER_ADDRESS="8", GATEWAY_WORKER_CONNECTIONS="20")
    clients = []
    for _ in range(30):
        clients.append(_open(server))
        time.sleep(0.02)
    results: list[tuple[bytes, float]] = []
    lock = threading.Lock()

    def run(sock: socket.socket) -> None:
        outcome = _trickle_until_answered(sock, 15)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run, args=(sock,)) for sock in clients]
    for thread in threads:
        thread.start()
    health = []
    for _ in range(10):
        health.append(_health_ms(server))
        time.sleep(0.2)
    for thread in threads:
        thread.join(20)
    for sock in clients:
        sock.close()
    statuses = []
    for answer, _ in results:
        status, error = _status_and_error(answer)
        statuses.append(status)
        if status == 429:
            assert error["code"] == "too_many_connections" and error["type"] == "rate_limit_error", error
            assert b"retry-after: 1" in answer.lower()
        else:
            assert status == 408 and error["code"] == "request_timeout", error
    assert statuses.count(408) == 8 and statuses.count(429) == 22, statuses
    assert max(health) < 2000, health
    # Once the slow clients are gone, the address may connect again.
    status, _, body = request(server.url, "POST", "/auth/token", {"apiKey": "wrong"}, timeout=5)
    assert status == 401, body
    assert json.loads(body)["error"]["code"] == "invalid_api_key"


@pytest.mark.timeout(60)
def test_trickled_headers_are_cut_by_the_keep_alive_timeout(gateway_server) -> None:
    """What the README says of slow clients: headers get gunicorn's keep-alive timeout (5 s)."""
    server: GatewayServer = gateway_server()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.settimeout(0.5)
    started = time.monotonic()
    answer = b""
    closed = False
    try:
        for byte in b"POST /auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
            answer += data
    finally:
        sock.close()
    took = time.monotonic() - started
    assert closed and answer == b"", answer
    assert 4 < took < 9, took


def _answer(sock: socket.socket, limit: float = 10) -> bytes:
    """Read one whole answer (Content-Length framed), or until the server closes."""
    sock.settimeout(limit)
    answer = b""
    while True:
        head, sep, body = answer.partition(b"\r\n\r\n")
        if sep:
            length = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if length and len(body) >= int(length[0]):
                return answer
        chunk = sock.recv(65536)
        if not chunk:
            return answer
        answer += chunk


def _kept_alive(server: GatewayServer, request_head: bytes, expected: bytes) -> socket.socket:
    """A connection from the attacker's address that carried one whole request, kept open."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(ATTACKER, 0))
    sock.sendall(request_head)
    answer = _answer(sock)
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert answer.startswith(expected) and b"connection: close" not in head, answer[:300]
    return sock


def _refused(server: GatewayServer) -> bool:
    """Whether a new connection from the attacker's address is refused with the 429 envelope."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(ATTACKER, 0))
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = _answer(sock)
    finally:
        sock.close()
    if answer.startswith(b"HTTP/1.1 200"):
        return False
    status, error = _status_and_error(answer)
    assert status == 429 and error["code"] == "too_many_connections", answer[:300]
    assert error["type"] == "rate_limit_error" and b"retry-after: 1" in answer.lower(), answer[:300]
    return True


@pytest.mark.timeout(60)
def test_only_unauthenticated_connections_count_against_the_cap(gateway_server) -> None:
    """Two trickled bodies, a connection kept alive after GET /health (public) and one
    kept alive after a refused key: four unauthenticated connections, the cap; a fifth
    from the same address is refused, another address is not."""
    server: GatewayServer = gateway_server(REQUEST_BODY_TIMEOUT="20", MAX_CONNECTIONS_PER_ADDRESS="4")
    held = [_open(server), _open(server)]
    try:
        held.append(_kept_alive(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"HTTP/1.1 200"))
        held.append(
            _kept_alive(
                server,
                b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: mk-wrong-" + b"x" * 40 + b"\r\n\r\n",
                b"HTTP/1.1 401",
            )
        )
        assert _refused(server)
        assert _health_ms(server) < 2000  # the bystander's address has its own cap
        # A connection that closes frees its place (the worker notices the close).
        held.pop(2).close()
        deadline = time.monotonic() + 10
        while _refused(server):
            assert time.monotonic() < deadline, "a closed connection still counts"
            time.sleep(0.2)
    finally:
        for sock in held:
            sock.close()


@pytest.mark.timeout(90)
def test_authenticated_streams_from_one_address_are_not_capped(gateway_server, upstream) -> None:
    """An application server (one address) holds three times the cap of concurrent
    streams, all served whole; meanwhile the cap still holds for unauthenticated
    connections from that address. Fails where the cap counts every connection."""
    cap = 4
    server: GatewayServer = gateway_server(REQUEST_BODY_TIMEOUT="30", MAX_CONNECTIONS_PER_ADDRESS=str(cap), **HIGH_LIMITS)
    upstream.behavior = Behavior(chunks=20, gap=0.25)  # streams of about 5 s
    streams: list[EventStream] = []
    slow: list[socket.socket] = []
    try:
        for _ in range(3 * cap):
            stream = EventStream(server.url, "/v1/chat/completions", CHAT, headers=AUTH, timeout=30)
            streams.append(stream)
            assert stream.status == 200, stream.response.read()[:300]
            assert stream.next_events()
        # An authenticated connection, kept alive, stays free for its next (public) request.
        kept = _kept_alive(
            server,
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + AUTH["X-API-Key"].encode() + b"\r\n\r\n",
            b"HTTP/1.1 200",
        )
        slow.append(kept)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _answer(kept).startswith(b"HTTP/1.1 200")
        slow.extend(_open(server) for _ in range(cap))
        assert _refused(server)
        refused_at = time.monotonic()
        for stream in streams:
            events = stream.read_all()
            assert events[-1] == "data: [DONE]" and not any(e.startswith("event: error") for e in events), events[-3:]
        # Every stream was still running when the unauthenticated cap was full.
        assert min(stream.events[-1][0] for stream in streams) > refused_at
    finally:
        for stream in streams:
            stream.close()
        for sock in slow:
            sock.close()
