"""The HTTP edge under real gunicorn: headers, framing, limits, error shape, secrets."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from tests.conftest import CANARIES, CANARY_AI_API_KEY, CANARY_JWT_SECRET, CANARY_MASTER_KEY
from tests.e2e.conftest import AUTH, JSON_AUTH, EventStream, GatewayServer, error_envelope, request
from tests.fakes.upstream import Behavior

MAX_REQUEST_BYTES = 2048


@pytest.fixture(scope="module")
def server(module_gateway_server) -> GatewayServer:
    return module_gateway_server(
        MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES),
        RATE_LIMIT_AI="1000 per minute",
        RATE_LIMIT_GENERAL="1000 per minute",
        LOG_LEVEL="DEBUG",
    )


def raw_exchange(server: GatewayServer, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or goes quiet)."""
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received


def raw_status(response: bytes) -> int | None:
    if not response:
        return None
    line = response.split(b"\r\n", 1)[0].decode("latin-1")
    assert line.startswith("HTTP/1."), line
    return int(line.split()[1])


def _assert_no_server_software(headers) -> None:
    assert headers["Server"] == "ai-proxy"
    for name, value in headers.items():
        assert "gunicorn" not in value.lower(), (name, value)
        assert "werkzeug" not in value.lower(), (name, value)
        assert "python" not in value.lower(), (name, value)


@pytest.mark.timeout(30)
def test_server_and_security_headers(server, upstream) -> None:
    cases = [
        ("GET", "/health", None, {}),
        ("GET", "/", None, {}),
        ("GET", "/nope", None, AUTH),
        ("POST", "/api/ai/completion", None, {}),
        ("POST", "/api/ai/completion", {"prompt": "hi"}, AUTH),
    ]
    for method, path, body, headers in cases:
        status, response_headers, _ = request(server.url, method, path, body, headers=headers)
        assert status < 500, (method, path, status)
        _assert_no_server_software(response_headers)
        assert response_headers["X-Content-Type-Options"] == "nosniff"
        assert response_headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in response_headers["Content-Security-Policy"]

    stream = EventStream(server.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True})
    try:
        assert stream.status == 200
        _assert_no_server_software(stream.headers)
        assert stream.headers["X-Content-Type-Options"] == "nosniff"
        assert stream.read_all()[-1] == "data: [DONE]"
    finally:
        stream.close()

    # gunicorn's own error pages do not name it either.
    response = raw_exchange(server, b"BOGUS\r\n\r\n")
    assert raw_status(response) == 400
    assert b"gunicorn" not in response.lower()


@pytest.mark.timeout(30)
def test_health_needs_no_auth_and_is_never_rate_limited(gateway_server) -> None:
    server = gateway_server(RATE_LIMIT_GENERAL="5 per minute")
    statuses = [request(server.url, "GET", "/health", timeout=2)[0] for _ in range(200)]
    assert statuses == [200] * 200
    # ...while the general quota does apply elsewhere, to the same client.
    index = [request(server.url, "GET", "/", timeout=2)[0] for _ in range(6)]
    assert index == [200] * 5 + [429]
    assert request(server.url, "GET", "/health", timeout=2)[0] == 200


@pytest.mark.timeout(30)
def test_oversized_header_is_a_client_error(server, upstream) -> None:
    for name in ("X-Big", "X-API-Key"):
        head = (
            b"POST /api/ai/completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 15\r\n" + name.encode() + b": " + b"a" * 10240 + b"\r\nConnection: close\r\n\r\n"
            b'{"prompt":"hi"}'
        )
        response = raw_exchange(server, head)
        status = raw_status(response)
        assert status is not None and 400 <= status < 500, response[:300]
        assert b"gunicorn" not in response.lower()
    assert upstream.requests == []
    assert request(server.url, "GET", "/health", timeout=2)[0] == 200


@pytest.mark.timeout(30)
def test_content_length_with_chunked_is_refused(server, upstream) -> None:
    body = b'{"prompt":"hi"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = (
        "POST /api/ai/completion HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"X-API-Key: {CANARY_MASTER_KEY}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(chunked)}\r\n"
        "Transfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    response = raw_exchange(server, head + chunked)
    status = raw_status(response)
    assert status is None or 400 <= status < 500, response[:300]
    assert upstream.requests == [], "an ambiguous request was relayed upstream"
    # The gateway still serves well-formed requests afterwards.
    status, _, _ = request(server.url, "POST", "/api/ai/completion", {"prompt": "hi"}, headers=AUTH)
    assert status == 200
    assert len(upstream.requests) == 1


def _chunked_post(server, document: bytes) -> tuple[int, dict, bytes]:
    pieces = [document[i : i + 700] for i in range(0, len(document), 700)]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", "/api/ai/completion", body=iter(pieces), headers=JSON_AUTH, encode_chunked=True)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_chunked_body_over_the_limit_is_413(server, upstream) -> None:
    # A chunked body within the limit is read and relayed...
    status, _, body = _chunked_post(server, json.dumps({"prompt": "x" * 500}).encode())
    assert status == 200, body
    assert upstream.requests[-1].json()["prompt"] == "x" * 500
    # ...one over it is refused without reaching the upstream.
    status, headers, body = _chunked_post(server, json.dumps({"prompt": "x" * 3 * MAX_REQUEST_BYTES}).encode())
    assert status == 413, body
    assert headers["Content-Type"] == "application/json"
    assert error_envelope(body)["code"] == "request_too_large"
    assert len(upstream.requests) == 1


@pytest.mark.timeout(30)
def test_oversized_chunked_body_is_never_relayed_truncated(server, upstream) -> None:
    # Whitespace after a JSON object is still valid JSON, so a body cut off at
    # MAX_REQUEST_BYTES parses: it must be refused, not relayed as if complete.
    document = b'{"model": "fake-model", "prompt": "hi"}' + b" " * (3 * MAX_REQUEST_BYTES)
    status, headers, body = _chunked_post(server, document)
    assert upstream.requests == [], "an oversized body was relayed upstream"
    assert status == 413, body
    assert error_envelope(body)["code"] == "request_too_large"


@pytest.mark.timeout(40)
def test_gateway_errors_share_one_envelope(gateway_server, upstream) -> None:
    server = gateway_server(MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES), RATE_LIMIT_AI="2 per minute")
    checks = []

    def check(expected: int, code: str, method: str, path: str, body=None, headers=None):
        status, response_headers, response_body = request(server.url, method, path, body, headers=headers)
        checks.append((expected, code, status, response_headers, response_body))
        return response_headers

    headers = check(401, "missing_credentials", "POST", "/api/ai/completion", {"prompt": "hi"})
    assert headers["WWW-Authenticate"].startswith("Bearer")
    check(401, "invalid_api_key", "POST", "/api/ai/completion", {"prompt": "hi"}, {"X-API-Key": "wrong"})
    check(401, "invalid_api_key", "GET", "/v1/models", None, {"Authorization": "Bearer not.a.jwt"})
    check(404, "not_found", "GET", "/no/such/path", None, AUTH)
    headers = check(405, "method_not_allowed", "GET", "/api/ai/completion", None, AUTH)
    assert "POST" in headers["Allow"]
    # 413 and 415 are refused before the upstream call, so they leave the AI quota
    # (2 per minute) alone: two calls go upstream, and the third is the 429.
    check(413, "request_too_large", "POST", "/api/ai/completion", json.dumps({"prompt": "x" * 3000}).encode(), JSON_AUTH)
    check(415, "unsupported_media_type", "POST", "/api/ai/completion", b'{"prompt": "hi"}', {**AUTH, "Content-Type": "text/plain"})
    for _ in range(2):
        assert request(server.url, "POST", "/api/ai/completion", {"prompt": "hi"}, headers=AUTH)[0] == 200
    headers = check(429, "gateway_rate_limited", "POST", "/api/ai/completion", {"prompt": "hi"}, AUTH)
    assert int(headers["Retry-After"]) >= 1

    for expected, code, status, headers, body in checks:
        assert status == expected, (expected, status, body)
        assert headers["Content-Type"] == "application/json", (expected, headers)
        assert headers["Server"] == "ai-proxy"
        error = error_envelope(body)
        assert error["code"] == code, (expected, error)
        assert error["type"] == (
            "authentication_error" if expected == 401 else "rate_limit_error" if expected == 429 else "invalid_request_error"
        ), error
    assert len(upstream.requests) == 2  # the two admitted calls only


def _exchange(server: GatewayServer, method: str, path: str, body=None, headers=None) -> bytes:
    """Status line, headers and body of one response, as text to grep."""
    status, response_headers, response_body = request(server.url, method, path, body, headers=headers)
    return f"{status}\n{response_headers}\n".encode() + response_body


@pytest.mark.timeout(40)
def test_no_secret_ever_leaves_the_gateway(server, upstream) -> None:
    seen: list[bytes] = []
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    seen.append(_exchange(server, "GET", "/"))
    seen.append(_exchange(server, "GET", "/health", None, AUTH))
    status, headers, body = request(server.url, "POST", "/auth/token", {"apiKey": CANARY_MASTER_KEY})
    assert status == 200
    seen.append(f"{headers}".encode() + body)
    token = json.loads(body)["token"]
    seen.append(_exchange(server, "POST", "/v1/chat/completions", chat, {"Authorization": f"Bearer {token}"}))
    seen.append(_exchange(server, "POST", "/auth/token", {"apiKey": CANARY_MASTER_KEY[:-1]}))
    seen.append(_exchange(server, "POST", "/auth/token", {"apiKey": CANARY_AI_API_KEY}))
    seen.append(_exchange(server, "POST", "/auth/token", {"apiKey": CANARY_JWT_SECRET}))
    seen.append(_exchange(server, "POST", "/v1/chat/completions", chat, {"X-API-Key": CANARY_AI_API_KEY}))
    seen.append(_exchange(server, "POST", "/v1/chat/completions", chat, {"Authorization": f"Bearer {CANARY_JWT_SECRET}"}))
    seen.append(_exchange(server, "POST", "/v1/chat/completions", chat, {**AUTH, "Authorization": f"Bearer {token}x"}))
    seen.append(_exchange(server, "GET", "/v1/models", None, AUTH))
    for status in (400, 401, 403, 429, 500):
        upstream.behavior = Behavior(mode="status", status=status)
        seen.append(_exchange(server, "POST", "/v1/chat/completions", chat, AUTH))
    upstream.behavior = Behavior(mode="drop", drop_after=1)
    stream = EventStream(server.url, "/v1/chat/completions", {**chat, "stream": True})
    try:
        seen.append(f"{stream.headers}".encode() + b"".join(e.encode() for e in stream.read_all()))
    finally:
        stream.close()

    # The upstream did get the gateway's own key (that is its job)...
    assert upstream.requests and all(r.headers.get("authorization") == f"Bearer {CANARY_AI_API_KEY}" for r in upstream.requests)
    # ...and never the client's credentials.
    for recorded in upstream.requests:
        assert CANARY_MASTER_KEY not in json.dumps(recorded.headers)
        assert token not in json.dumps(recorded.headers)
    # Nothing the clients saw and nothing logged carries a secret.
    log = server.log()
    assert '"status": 401' in log and '"status": 502' in log  # the log did record this test
    for canary in CANARIES:
        for exchange in seen:
            assert canary.encode() not in exchange, exchange[:300]
        assert canary not in log
    assert token not in log
