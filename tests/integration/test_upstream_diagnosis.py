"""A wrong AI_API_URL is easy to diagnose (issue 12, item 6): the 502's log line names the
upstream's address and the variable; in development the 502 itself says which variable to
check; the address never reaches a client, the upstream key never reaches the log."""

from __future__ import annotations

import json
import socket

import pytest

from tests.conftest import CANARY_AI_API_KEY, KEY_HEADERS

BODY = {"model": "m", "prompt": "hi", "max_tokens": 4}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gateway_lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("mode", ["development", "production"])
def test_an_unreachable_upstream_is_named_in_the_log(make_app, capsys, mode: str) -> None:
    port = _closed_port()
    extra = (
        {"node_env": "production", "master_api_key": KEY_HEADERS["X-API-Key"], "jwt_secret": "j" * 40} if mode == "production" else {}
    )
    client = make_app(ai_api_url=f"http://127.0.0.1:{port}/v1/completions", **extra).test_client()
    capsys.readouterr()
    response = client.post("/api/ai/completion", json=BODY, headers={**KEY_HEADERS, "X-Request-ID": "diag-1"})
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == "upstream_unavailable"
    assert "127.0.0.1" not in response.get_data(as_text=True) and str(port) not in error["message"]
    if mode == "development":
        assert "AI_API_URL" in error["message"]
    else:
        assert error["message"] == "The AI backend could not be reached."
    logged = capsys.readouterr().err
    lines = [line for line in _gateway_lines(logged) if line["logger"] == "gateway.upstream.client"]
    assert len(lines) == 1, logged
    assert lines[0]["level"] == "WARNING" and lines[0]["request_id"] == "diag-1"
    assert f"http://127.0.0.1:{port}" in lines[0]["msg"] and "AI_API_URL" in lines[0]["msg"]
    assert CANARY_AI_API_KEY not in logged
