"""Malformed chunked request framing under real gunicorn: a 400 envelope, never a 500 or a traceback.

gunicorn parses ``Transfer-Encoding: chunked`` lazily, while the app reads the body, so
a bad chunk size, a missing CRLF, a bad chunk extension or a bad trailer surfaces as an
exception inside the view. Anyone can send one (``POST /auth/token`` needs no
credentials), so each must be a quiet client error, not an ERROR line with a traceback.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import CANARY_MASTER_KEY
from tests.e2e.conftest import GatewayServer, error_envelope
from tests.e2e.test_e2e_http import raw_exchange, raw_status


@pytest.fixture(scope="module")
def server(module_gateway_server) -> GatewayServer:
    return module_gateway_server(
        RATE_LIMIT_AI="1000 per minute", RATE_LIMIT_GENERAL="1000 per minute", RATE_LIMIT_AUTH_FAILURES="1000 per minute"
    )


BODY = json.dumps({"model": "m", "prompt": "hi"}).encode()

# Each a chunked body gunicorn refuses while the app reads it.
MALFORMED = {
    "chunk size zz": b"zz\r\n" + BODY + b"\r\n0\r\n\r\n",
    "missing CRLF after the data": b"%x\r\n%s0\r\n\r\n" % (len(BODY), BODY),
    "bad chunk extension": b"%x;a b\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY),
    "bad trailer": b"%x\r\n%s\r\n0\r\nbad trailer line\r\n\r\n" % (len(BODY), BODY),
}

TARGETS = {
    "unauthenticated token request": ("/auth/token", ""),
    "authenticated AI request": ("/api/ai/completion", f"X-API-Key: {CANARY_MASTER_KEY}\r\n"),
}


def _head(path: str, extra: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("target", TARGETS, ids=list(TARGETS))
@pytest.mark.parametrize("framing", MALFORMED, ids=list(MALFORMED))
def test_malformed_chunked_body_is_a_400_envelope_without_a_traceback(server, upstream, framing, target) -> None:
    path, extra = TARGETS[target]
    before = len(server.log())
    response = raw_exchange(server, _head(path, extra) + MALFORMED[framing])
    assert raw_status(response) == 400, response[:300]
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower()
    error = error_envelope(body)
    assert error["type"] == "invalid_request_error" and error["code"] == "malformed_body"
    assert upstream.requests == []
    server.wait_for_log(lambda text: '"status": 400' in text[before:], timeout=2)
    logged = server.log()[before:]
    assert "Traceback" not in logged and "ERROR" not in logged, logged
