"""The request record through a real app: made first, finished once, sinks in spine order."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from gateway.exchange import Exchange
from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import Behavior, FakeUpstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _recorded(app: Flask) -> list[Exchange]:
    seen: list[Exchange] = []
    app.extensions["gateway.sinks"].append(seen.append)
    return seen


def test_the_app_registers_its_sinks_in_order(app: Flask) -> None:
    names = [getattr(sink, "__name__", "") for sink in app.extensions["gateway.sinks"]]
    assert names == ["access_log", "record_usage", "count_request"]


def test_a_plain_request_is_finished_once_at_its_response(app: Flask, client: FlaskClient) -> None:
    seen = _recorded(app)
    response = client.get("/health")
    assert response.status_code == 200
    (record,) = seen
    assert record.finished and record.status == 200 and record.endpoint == "meta.health"
    assert record.request_id == response.headers["X-Request-ID"] and record.operation is None


def test_a_refused_ai_request_records_its_error_and_caller(app: Flask, client: FlaskClient) -> None:
    seen = _recorded(app)
    response = client.post("/v1/chat/completions", json={"model": "m", "messages": "no"}, headers=KEY_HEADERS)
    assert response.status_code == 400
    (record,) = seen
    assert record.operation == "chat" and record.caller is not None and record.caller.id == "master"
    assert record.error_code == response.get_json()["error"]["code"] and record.upstream is None


def test_a_stream_is_finished_once_at_its_end_with_its_usage(app: Flask, client: FlaskClient, upstream: FakeUpstream) -> None:
    seen = _recorded(app)
    upstream.behavior = Behavior(chunks=3, gap=0.01)
    with client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=KEY_HEADERS, buffered=False) as response:
        pieces = iter(response.response)
        assert next(pieces)
        assert seen == []  # the response is out, the stream is not over
        b"".join(pieces)
    (record,) = seen
    assert record.stream and record.outcome == "completed" and record.usage is not None
    assert record.upstream is not None and record.upstream.duration_ms is not None
