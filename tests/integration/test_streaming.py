"""Streaming relay in-process: bytes, headers, failures, disconnects."""

from __future__ import annotations

import json

import pytest

from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import Behavior

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _events(raw: bytes) -> list[str]:
    return [block for block in raw.decode().split("\n\n") if block.strip()]


@pytest.mark.parametrize("framing", ["chunked", "close"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/ai/chat"])
def test_stream_is_relayed_byte_for_byte(client, upstream, framing, path) -> None:
    upstream.behavior = Behavior(chunks=4, framing=framing)
    response = client.post(path, json=CHAT, headers=KEY_HEADERS)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in response.headers
    events = _events(response.get_data())
    assert events[-1] == "data: [DONE]"
    assert len(events) == 4 + 2  # content events, the finish event, [DONE]
    assert json.loads(events[0][len("data: ") :])["object"] == "chat.completion.chunk"
    assert upstream.requests[-1].json() == {**CHAT, "stream_options": {"include_usage": True}}


def test_completion_stream(client, upstream) -> None:
    body = {"model": "m", "prompt": "hi", "stream": True}
    response = client.post("/api/ai/completion", json=body, headers=KEY_HEADERS)
    assert _events(response.get_data())[-1] == "data: [DONE]"


def test_stream_events_arrive_one_by_one(client, upstream) -> None:
    upstream.behavior = Behavior(chunks=3, gap=0.05)
    response = client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS, buffered=False)
    pieces = [piece for piece in response.response if piece]
    response.close()
    assert len(pieces) >= 4  # not one buffered blob


def test_upstream_breaking_off_never_looks_complete(client, upstream) -> None:
    upstream.behavior = Behavior(mode="drop", drop_after=2)
    response = client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS)
    assert response.status_code == 200
    events = _events(response.get_data())
    assert "data: [DONE]" not in events
    assert events[-1].startswith("event: error\ndata: ")
    error = json.loads(events[-1].split("data: ", 1)[1])["error"]
    assert error["code"] == "upstream_stream_error"
    assert len(events) == 3  # the two events sent, then the error


def test_upstream_error_before_stream_starts_is_a_real_status(client, upstream) -> None:
    upstream.behavior = Behavior(mode="status", status=429, headers={"Retry-After": "3"})
    response = client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS)
    assert response.status_code == 429 and response.headers["Retry-After"] == "3"
    upstream.behavior = Behavior(mode="status", status=500)
    assert client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).status_code == 502


def test_idle_upstream_mid_stream_ends_with_error_event(make_app, upstream) -> None:
    upstream.behavior = Behavior(chunks=3, gap=1.5)
    client = make_app(upstream_read_timeout=0.5).test_client()
    events = _events(client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).get_data())
    assert events[-1].startswith("event: error")
    assert "data: [DONE]" not in events


def test_client_disconnect_releases_the_upstream_stream(client, upstream) -> None:
    upstream.behavior = Behavior(chunks=50, gap=0.05)
    response = client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS, buffered=False)
    iterator = iter(response.response)
    assert next(iterator)
    assert upstream.wait_for_active_streams(1, timeout=2)
    response.close()  # what the WSGI server does when the client goes away
    assert upstream.wait_for_active_streams(0, timeout=2)


def test_upstream_answering_json_to_a_stream_request_is_passed_through(client, upstream) -> None:
    upstream.behavior = Behavior(mode="raw", body=b'{"id": "x"}', content_type="application/json")
    response = client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS)
    assert response.status_code == 200 and response.get_json() == {"id": "x"}


def _usage_chunks(events: list[str]) -> list[dict]:
    chunks = [json.loads(e[len("data: ") :]) for e in events if e.startswith("data: {")]
    return [c for c in chunks if c.get("choices") == [] and c.get("usage")]


def test_client_that_did_not_ask_for_usage_sees_no_usage_chunk(client, upstream, capfd) -> None:
    upstream.behavior = Behavior(chunks=3)
    events = _events(client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).get_data())
    assert _usage_chunks(events) == []
    assert events[-1] == "data: [DONE]" and len(events) == 3 + 2
    line = [json.loads(x) for x in capfd.readouterr().err.splitlines() if '"stream":' in x][-1]
    assert (line["prompt_tokens"], line["completion_tokens"], line["tokens_estimated"]) == (9, 3, False)


def test_client_that_asked_for_usage_gets_it_untouched(client, upstream) -> None:
    upstream.behavior = Behavior(chunks=3)
    body = {**CHAT, "stream_options": {"include_usage": True}}
    raw = client.post("/v1/chat/completions", json=body, headers=KEY_HEADERS).get_data()
    assert upstream.requests[-1].body == json.dumps(body).encode()  # forwarded as sent
    usage = _usage_chunks(_events(raw))
    assert len(usage) == 1 and usage[0]["usage"]["completion_tokens"] == 3


def test_stream_usage_request_can_be_switched_off(make_app, upstream, capfd) -> None:
    client = make_app(upstream_stream_usage=False).test_client()
    client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).get_data()
    assert upstream.requests[-1].json() == CHAT
    line = [json.loads(x) for x in capfd.readouterr().err.splitlines() if '"stream":' in x][-1]
    # the relayed text ("tok0 " .. "tok4 ": 25 characters), four characters per token, rounded up
    assert line["tokens_estimated"] is True and line["completion_tokens"] == 7


def test_non_streamed_usage_is_logged(client, upstream, capfd) -> None:
    client.post("/v1/chat/completions", json={"model": "m", "messages": []}, headers=KEY_HEADERS)
    line = [json.loads(x) for x in capfd.readouterr().err.splitlines() if '"path": "/v1/chat/completions"' in x][-1]
    assert (line["prompt_tokens"], line["completion_tokens"], line["tokens_estimated"]) == (9, 6, False)


# --- hostile upstreams (issue 11) -----------------------------------------------------


def test_an_event_that_never_ends_is_cut_at_the_event_limit(make_app, upstream, capfd) -> None:
    from sqlalchemy import select

    from gateway.store.tables import usage

    app = make_app()  # MAX_STREAM_EVENT_BYTES: 1 MiB by default
    upstream.behavior = Behavior(mode="no_event_boundary", event_bytes=6 * 1024 * 1024)
    response = app.test_client().post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS)
    body = response.get_data()
    assert response.status_code == 200
    events = _events(body)
    assert len(events) == 1 and len(body) < 4096  # nothing of the endless event reached the client
    assert events[0].startswith("event: error\ndata: ")
    error = json.loads(events[0].split("data: ", 1)[1])["error"]
    assert error["code"] == "upstream_event_too_large" and set(error) == {"message", "type", "code", "param"}
    assert upstream.wait_for_active_streams(0, timeout=3)  # the upstream connection was closed
    line = [json.loads(x) for x in capfd.readouterr().err.splitlines() if '"stream":' in x][-1]
    assert line["stream"] == "event_too_large" and line["tokens_estimated"] is True
    assert app.extensions["gateway.usage"].flush(timeout=5)
    with app.extensions["gateway.store"].engine.connect() as connection:
        rows = [row._asdict() for row in connection.execute(select(usage))]
    assert len(rows) == 1 and rows[0]["status"] == 200 and rows[0]["tokens_estimated"] is True
    assert rows[0]["completion_tokens"] == 0


def test_events_before_an_endless_one_are_relayed_first(make_app, upstream) -> None:
    upstream.behavior = Behavior(mode="no_event_boundary", events_before=3, event_bytes=2 * 1024 * 1024)
    client = make_app(max_stream_event_bytes=64 * 1024).test_client()
    events = _events(client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).get_data())
    assert len(events) == 3 + 1
    assert all(json.loads(e[len("data: ") :])["object"] == "chat.completion.chunk" for e in events[:3])
    assert events[-1].startswith("event: error") and "upstream_event_too_large" in events[-1]


def test_the_event_limit_is_on_one_event_not_the_stream(make_app, upstream) -> None:
    # Each event is ~200 bytes, the stream ~1.3 KiB: a 512-byte limit changes nothing.
    upstream.behavior = Behavior(chunks=5)
    client = make_app(max_stream_event_bytes=512).test_client()
    events = _events(client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).get_data())
    assert events[-1] == "data: [DONE]" and len(events) == 5 + 2


def test_surrogates_and_nul_in_a_stream_are_relayed_and_counted(client, upstream, capfd) -> None:
    upstream.behavior = Behavior(mode="surrogates")
    body = {**CHAT, "stream_options": {"include_usage": True}}
    response = client.post("/v1/chat/completions", json=body, headers=KEY_HEADERS)
    assert response.status_code == 200
    events = _events(response.get_data())
    assert events[-1] == "data: [DONE]" and len(events) == 3
    assert '"model":"fake\\ud800model\\u0000"' in events[0]
    line = [json.loads(x) for x in capfd.readouterr().err.splitlines() if '"stream":' in x][-1]
    assert line["stream"] == "completed" and (line["prompt_tokens"], line["completion_tokens"]) == (5, 7)


@pytest.mark.parametrize("framing", ["length", "close"])
def test_an_empty_event_stream_ends_with_an_error_event(client, upstream, capfd, framing) -> None:
    upstream.behavior = Behavior(mode="empty_200", empty_framing=framing, content_type="text/event-stream")
    response = client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS)
    assert response.status_code == 200  # the status went out with the stream's head
    events = _events(response.get_data())
    assert len(events) == 1 and events[0].startswith("event: error\ndata: ")
    assert json.loads(events[0].split("data: ", 1)[1])["error"]["code"] == "upstream_stream_error"
    assert "empty body" in capfd.readouterr().err
