"""The relay: operations, what goes upstream, what comes back, upstream faults."""

from __future__ import annotations

import json
import socket
import time

import pytest

from gateway.operations import OPERATIONS
from tests.conftest import CANARY_AI_API_KEY, CANARY_MASTER_KEY, KEY_HEADERS
from tests.fakes.upstream import Behavior, FakeUpstream

BODIES = {
    "completion": {"model": "gpt-3.5-turbo", "prompt": "Once upon a time...", "max_tokens": 100},
    "chat": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "embeddings": {"model": "m", "input": ["a", "b"]},
    "images": {"model": "m", "prompt": "a cat"},
    "responses": {"model": "m", "input": "hi", "max_output_tokens": 50},
}


def _call(client, op, path, **headers):
    if op.method == "GET":
        return client.get(path, headers={**KEY_HEADERS, **headers})
    return client.post(path, json=BODIES[op.name], headers={**KEY_HEADERS, **headers})


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
@pytest.mark.parametrize("which", [0, 1], ids=["api-ai-path", "v1-path"])
def test_every_operation_is_served_at_both_paths(client, upstream, op, which) -> None:
    path = op.gateway_paths[which]
    response = _call(client, op, path)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.is_json
    received = upstream.requests[-1]
    assert received.method == op.method
    assert received.path == "/v1" + op.upstream_path
    if op.has_body:
        assert received.json() == BODIES[op.name]


def test_original_completion_contract(client, upstream) -> None:
    response = client.post("/api/ai/completion", json=BODIES["completion"], headers=KEY_HEADERS)
    body = response.get_json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"]
    assert upstream.requests[-1].path == "/v1/completions"


def test_body_is_forwarded_byte_for_byte(client, upstream) -> None:
    raw = b'{"model":"m",  "prompt":"caf\xc3\xa9 \\u2713", "max_tokens": 5}'
    client.post("/v1/completions", data=raw, content_type="application/json", headers=KEY_HEADERS)
    assert upstream.requests[-1].body == raw


def test_upstream_gets_its_own_key_and_no_client_credentials(client, upstream) -> None:
    client.post(
        "/api/ai/completion",
        json=BODIES["completion"],
        headers={
            **KEY_HEADERS,
            "Cookie": "session=abc",
            "Proxy-Authorization": "Basic eHg6eXk=",
            "X-Forwarded-For": "1.2.3.4",
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "hop",
            "Host": "evil.example",
            "OpenAI-Organization": "org-x",
        },
    )
    headers = upstream.requests[-1].headers
    assert headers["authorization"] == f"Bearer {CANARY_AI_API_KEY}"
    for name in ("x-api-key", "cookie", "proxy-authorization", "x-forwarded-for", "x-secret", "openai-organization"):
        assert name not in headers
    assert CANARY_MASTER_KEY not in json.dumps(headers)
    assert headers["host"].startswith("127.0.0.1:")


def test_no_authorization_upstream_when_no_ai_api_key(make_app, upstream) -> None:
    client = make_app(ai_api_key="").test_client()
    client.get("/v1/models", headers=KEY_HEADERS)
    assert "authorization" not in upstream.requests[-1].headers


def test_client_cannot_choose_upstream_host_or_path(client, upstream) -> None:
    body = {
        **BODIES["completion"],
        "api_base": "http://evil.example",
        "base_url": "http://evil.example",
        "url": "http://evil.example/x",
    }
    client.post("/api/ai/completion", json=body, headers={**KEY_HEADERS, "X-Forwarded-Host": "evil.example"})
    assert upstream.requests[-1].path == "/v1/completions"
    for path in ("/api/ai/completion/..%2f..%2fadmin", "/api/ai/../admin", "//api/ai/completion", "/v1/files"):
        response = client.post(path, json=BODIES["completion"], headers=KEY_HEADERS)
        assert response.status_code in (404, 405)
    assert len(upstream.requests) == 1


def test_request_id_is_generated_forwarded_and_returned(client, upstream) -> None:
    response = client.get("/v1/models", headers=KEY_HEADERS)
    generated = response.headers["X-Request-ID"]
    assert len(generated) >= 16 and upstream.requests[-1].headers["x-request-id"] == generated
    response = client.get("/v1/models", headers={**KEY_HEADERS, "X-Request-ID": "client-id.42"})
    assert response.headers["X-Request-ID"] == "client-id.42"
    assert upstream.requests[-1].headers["x-request-id"] == "client-id.42"


@pytest.mark.parametrize("unsafe", ["a b", "x" * 200, "é", "a\tb", "<script>"])
def test_unsafe_request_ids_are_replaced(client, upstream, unsafe) -> None:
    response = client.get("/v1/models", headers={**KEY_HEADERS, "X-Request-ID": unsafe})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] != unsafe
    assert upstream.requests[-1].headers["x-request-id"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": "{}", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": "model=m"}, 415, "unsupported_media_type"),
        ({"data": "", "content_type": "application/json"}, 400, "invalid_request"),
        ({"data": "{oops", "content_type": "application/json"}, 400, "invalid_request"),
        ({"data": "[1, 2]", "content_type": "application/json"}, 400, "invalid_request"),
        ({"data": '{"a": NaN}', "content_type": "application/json"}, 400, "invalid_request"),
        ({"data": "[" * 3000 + "]" * 3000, "content_type": "application/json"}, 400, "invalid_request"),
        ({"data": '{"stream": "true"}', "content_type": "application/json"}, 400, "invalid_type"),
        ({"data": b'{"p": "\xff"}', "content_type": "application/json"}, 400, "invalid_request"),
    ],
    ids=["text-plain", "form", "empty", "broken", "array", "nan", "deep", "stream-string", "bad-utf8"],
)
def test_bad_bodies_get_json_errors_and_never_reach_upstream(client, upstream, kwargs, status, code) -> None:
    response = client.post("/api/ai/completion", headers=KEY_HEADERS, **kwargs)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert upstream.requests == []


def test_body_over_the_limit_is_413(make_app, upstream) -> None:
    client = make_app(max_request_bytes=1024).test_client()
    big = {"model": "m", "prompt": "x" * 2000}
    response = client.post("/api/ai/completion", json=big, headers=KEY_HEADERS)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_too_large"
    assert upstream.requests == []


def test_streaming_flag_on_non_streaming_operation_is_400(client, upstream) -> None:
    response = client.post("/v1/embeddings", json={"model": "m", "input": "x", "stream": True}, headers=KEY_HEADERS)
    assert response.status_code == 400
    assert upstream.requests == []


def test_wrong_method_is_405_with_allow(client) -> None:
    response = client.get("/api/ai/completion", headers=KEY_HEADERS)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_unknown_route_with_credentials_is_404_envelope(client) -> None:
    response = client.get("/api/ai/nothing", headers=KEY_HEADERS)
    assert response.status_code == 404
    assert response.get_json()["error"]["type"] == "invalid_request_error"


# --- upstream faults -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_gateway_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "code", "param"}
    text = response.get_data(as_text=True)
    assert CANARY_AI_API_KEY not in text and "Traceback" not in text and "127.0.0.1" not in text


def test_connection_refused_is_502(make_app) -> None:
    client = make_app(ai_api_url=f"http://127.0.0.1:{_free_port()}/v1/completions").test_client()
    started = time.monotonic()
    _assert_gateway_error(
        client.post("/api/ai/completion", json=BODIES["completion"], headers=KEY_HEADERS), 502, "upstream_unavailable"
    )
    assert time.monotonic() - started < 2


def test_hanging_upstream_is_504_at_the_read_timeout(make_app, upstream) -> None:
    upstream.behavior = Behavior(mode="hang", hang_seconds=10)
    client = make_app(upstream_read_timeout=0.5).test_client()
    started = time.monotonic()
    _assert_gateway_error(client.post("/api/ai/completion", json=BODIES["completion"], headers=KEY_HEADERS), 504, "upstream_timeout")
    assert time.monotonic() - started < 3


def test_dripping_upstream_is_cut_at_the_total_deadline(make_app, upstream) -> None:
    upstream.behavior = Behavior(mode="drip", gap=0.2)
    client = make_app(upstream_read_timeout=1.0, upstream_total_timeout=1.0).test_client()
    started = time.monotonic()
    _assert_gateway_error(client.post("/api/ai/completion", json=BODIES["completion"], headers=KEY_HEADERS), 504, "upstream_timeout")
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("behavior", "status", "code"),
    [
        (Behavior(mode="status", status=401), 502, "upstream_auth_failed"),
        (Behavior(mode="status", status=403), 502, "upstream_auth_failed"),
        (Behavior(mode="status", status=500), 502, "upstream_error"),
        (Behavior(mode="status", status=503), 502, "upstream_error"),
        (Behavior(mode="redirect"), 502, "upstream_redirect"),
        (Behavior(mode="raw", body=b"<html>oops</html>", content_type="text/html"), 502, "upstream_invalid_response"),
        (Behavior(mode="close_after_request"), 502, "upstream_unavailable"),
    ],
    ids=["401", "403", "500", "503", "redirect", "html", "closed"],
)
def test_upstream_failures_become_gateway_errors(client, upstream, behavior, status, code) -> None:
    upstream.behavior = behavior
    _assert_gateway_error(client.post("/api/ai/completion", json=BODIES["completion"], headers=KEY_HEADERS), status, code)


def test_redirect_is_not_followed(client, upstream) -> None:
    upstream.behavior = Behavior(mode="redirect", location=upstream.base_url + "/models")
    client.post("/api/ai/completion", json=BODIES["completion"], headers=KEY_HEADERS)
    assert [r.path for r in upstream.requests] == ["/v1/completions"]


def test_upstream_4xx_passes_through_with_its_body(client, upstream) -> None:
    body = b'{"error": {"message": "model not found", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}'
    upstream.behavior = Behavior(mode="status", status=404, body=body)
    response = client.post("/api/ai/completion", json=BODIES["completion"], headers=KEY_HEADERS)
    assert response.status_code == 404 and response.get_data() == body


def test_upstream_non_json_4xx_is_wrapped(client, upstream) -> None:
    upstream.behavior = Behavior(mode="status", status=400, body=b"bad thing")
    response = client.post("/api/ai/completion", json=BODIES["completion"], headers=KEY_HEADERS)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "upstream_rejected"


def test_only_safe_upstream_headers_come_back(make_app, upstream) -> None:
    upstream.behavior = Behavior(
        headers={
            "Set-Cookie": "track=1",
            "Connection": "X-Foo",
            "X-Foo": "bar",
            "Keep-Alive": "timeout=5",
            "Server": "upstream/1.0",
            "Access-Control-Allow-Origin": "*",
            "X-Internal": "secret",
        }
    )
    client = make_app(allowed_origins=("https://app.example",)).test_client()
    response = client.post("/api/ai/completion", json=BODIES["completion"], headers={**KEY_HEADERS, "Origin": "https://evil.example"})
    assert response.status_code == 200
    for name in ("Set-Cookie", "X-Foo", "Keep-Alive", "X-Internal", "Access-Control-Allow-Origin"):
        assert name not in response.headers
    assert response.headers.get("Server") != "upstream/1.0"


def test_environment_proxies_are_ignored(make_app, upstream, monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = make_app().test_client()
    assert client.get("/v1/models", headers=KEY_HEADERS).status_code == 200


# --- hostile upstreams (issue 11) -----------------------------------------------------


def _usage_rows(app) -> list[dict]:
    from sqlalchemy import select

    from gateway.store.tables import usage

    assert app.extensions["gateway.usage"].flush(timeout=5)
    with app.extensions["gateway.store"].engine.connect() as connection:
        return [row._asdict() for row in connection.execute(select(usage).order_by(usage.c.id))]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_trickled_status_line_is_cut_at_the_total_deadline(make_app, stream) -> None:
    # One byte every 0.3 s never trips the 5 s read timeout; the 1.5 s total must still hold.
    with FakeUpstream() as own:  # its own, so its connection count is this test's alone
        own.behavior = Behavior(mode="trickle_status", gap=0.3)
        client = make_app(
            ai_api_url=own.base_url + "/completions", upstream_read_timeout=5.0, upstream_total_timeout=1.5
        ).test_client()
        started = time.monotonic()
        response = client.post("/v1/chat/completions", json={**BODIES["chat"], "stream": stream}, headers=KEY_HEADERS)
        _assert_gateway_error(response, 504, "upstream_timeout")
        assert time.monotonic() - started < 3.5
        assert own.wait_until_no_open_connections(3)  # the connection was dropped, not kept


def test_the_deadline_does_not_shorten_a_kept_alive_connection(make_app) -> None:
    # After a head read within the deadline, the connection's own read timeout is back:
    # the next calls on the same pooled connection work as before.
    with FakeUpstream() as own:
        client = make_app(ai_api_url=own.base_url + "/completions", upstream_total_timeout=2.0).test_client()
        for _ in range(3):
            assert client.post("/v1/chat/completions", json=BODIES["chat"], headers=KEY_HEADERS).status_code == 200
        assert len(own.requests) == 3 and own.open_connections == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_a_header_block_cut_off_is_502_not_an_empty_200(client, upstream, capfd, stream, rst) -> None:
    upstream.behavior = Behavior(mode="truncated_head", rst=rst)
    response = client.post("/v1/chat/completions", json={**BODIES["chat"], "stream": stream}, headers=KEY_HEADERS)
    assert response.status_code == 502, response.get_data(as_text=True)
    if rst:  # the reset may arrive before the head is read at all: then it is an upstream that went away
        assert response.get_json()["error"]["code"] in ("upstream_incomplete", "upstream_unavailable")
    else:
        _assert_gateway_error(response, 502, "upstream_incomplete")
        assert "header block" in capfd.readouterr().err


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("framing", ["length", "close"])
def test_an_empty_200_is_502_not_an_empty_200(client, upstream, capfd, stream, framing) -> None:
    upstream.behavior = Behavior(mode="empty_200", empty_framing=framing)
    response = client.post("/v1/chat/completions", json={**BODIES["chat"], "stream": stream}, headers=KEY_HEADERS)
    _assert_gateway_error(response, 502, "upstream_empty_response")
    assert "empty body" in capfd.readouterr().err


def test_a_204_is_still_relayed_as_a_204(client, upstream) -> None:
    upstream.behavior = Behavior(mode="raw", status=204)
    assert client.post("/v1/chat/completions", json=BODIES["chat"], headers=KEY_HEADERS).status_code == 204


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("body", [b'{"choices": 5}', b'{"choices": [{"message": "hi"}, 3], "usage": "lots"}'])
def test_json_off_the_schema_is_relayed_with_estimated_usage(app, upstream, stream, body) -> None:
    # Relayed as the upstream sent it (see gateway.upstream.relay): no 500, usage an estimate.
    upstream.behavior = Behavior(mode="raw", body=body)
    response = app.test_client().post("/v1/chat/completions", json={**BODIES["chat"], "stream": stream}, headers=KEY_HEADERS)
    assert response.status_code == 200 and response.get_data() == body
    (row,) = _usage_rows(app)
    assert row["status"] == 200 and row["tokens_estimated"] is True and row["completion_tokens"] == 0


def test_surrogates_and_nul_in_an_answer_are_relayed_byte_for_byte(app, upstream) -> None:
    upstream.behavior = Behavior(mode="surrogates")
    response = app.test_client().post("/v1/chat/completions", json=BODIES["chat"], headers=KEY_HEADERS)
    assert response.status_code == 200
    assert b'"model":"fake\\ud800model\\u0000"' in response.get_data()
    (row,) = _usage_rows(app)
    assert (row["status"], row["prompt_tokens"], row["total_tokens"], row["tokens_estimated"]) == (200, 5, 12, False)
