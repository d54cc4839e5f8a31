"""Requests gunicorn refuses before the app sees them, under real gunicorn: every
refusal answers the gateway's JSON envelope with a 4xx, never gunicorn's HTML page
(gateway.server.EnvelopeErrors)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import GatewayServer, error_envelope, request
from tests.e2e.test_e2e_http import raw_exchange

HOST = b"Host: 127.0.0.1\r\n"

# name -> (raw request, expected status, expected error.code)
REFUSED: dict[str, tuple[bytes, int, str]] = {
    "invalid header name": (b"GET /health HTTP/1.1\r\n" + HOST + b"Bad Header: 1\r\n\r\n", 400, "invalid_header"),
    "duplicated content-length": (
        b"POST /auth/token HTTP/1.1\r\n" + HOST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        400,
        "invalid_header",
    ),
    "content-length with transfer-encoding": (
        b"POST /auth/token HTTP/1.1\r\n" + HOST + b"Content-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        400,
        "invalid_header",
    ),
    "obs-fold": (b"GET /health HTTP/1.1\r\n" + HOST + b"X-Folded: a\r\n  b\r\n\r\n", 400, "invalid_header"),
    "bare LF": (b"GET /health HTTP/1.1\nHost: 127.0.0.1\n\n", 400, "invalid_request"),
    "HTTP/2.0 request line": (b"GET /health HTTP/2.0\r\n" + HOST + b"\r\n", 400, "unsupported_http_version"),
    "too many headers": (
        b"GET /health HTTP/1.1\r\n" + HOST + b"".join(b"X-H%d: 1\r\n" % i for i in range(120)) + b"\r\n",
        431,
        "headers_too_large",
    ),
    "too large header": (b"GET /health HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
    "long request line": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + HOST + b"\r\n", 414, "request_line_too_long"),
    "unknown transfer coding": (
        b"POST /auth/token HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: xchunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        400,
        "unsupported_transfer_encoding",
    ),
}


@pytest.fixture(scope="module")
def server(module_gateway_server) -> GatewayServer:
    return module_gateway_server()


def _split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("case", list(REFUSED))
def test_refusal_is_a_4xx_in_the_envelope(server: GatewayServer, case: str) -> None:
    data, expected_status, expected_code = REFUSED[case]
    response = raw_exchange(server, data)
    assert response, f"{case}: no answer"
    assert b"<html" not in response.lower(), response[:400]
    status, headers, body = _split(response)
    assert status == expected_status, response[:400]
    assert headers["content-type"] == "application/json", headers
    assert headers["connection"] == "close", headers
    assert int(headers["content-length"]) == len(body)
    error = error_envelope(body)
    assert error["code"] == expected_code, error
    assert error["type"] == "invalid_request_error"
    assert "gunicorn" not in response.decode("latin-1").lower()


def test_refusals_do_not_echo_the_request(server: GatewayServer) -> None:
    """A refused request line may carry a credential: neither the answer nor the log repeats it."""
    secret = "sk-in-a-query-string-0123456789"
    response = raw_exchange(server, f"GET /health?key={secret} HTTP/9.9\r\nHost: x\r\n\r\n".encode())
    status, _, body = _split(response)
    assert status == 400 and json.loads(body)["error"]["code"] == "unsupported_http_version"
    assert secret not in response.decode("latin-1")
    assert secret not in server.log()
    assert request(server.url, "GET", "/health", timeout=2)[0] == 200


@pytest.mark.parametrize("case", ["invalid header name", "too many headers", "unknown transfer coding"])
def test_the_gthread_worker_refuses_in_the_envelope_too(module_gateway_server, case: str) -> None:
    server = module_gateway_server(GATEWAY_WORKER_CLASS="gthread")
    data, expected_status, expected_code = REFUSED[case]
    response = raw_exchange(server, data)
    assert b"<html" not in response.lower(), response[:400]
    status, headers, body = _split(response)
    assert (status, error_envelope(body)["code"]) == (expected_status, expected_code), response[:400]
    assert request(server.url, "GET", "/health", timeout=2)[0] == 200
