"""Every relayed AI request becomes one usage row: non-streamed, streamed, failed."""

from __future__ import annotations

import threading
import time

from flask import Flask
from sqlalchemy import select

from gateway.store.tables import usage
from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import Behavior, FakeUpstream


def _rows(app: Flask) -> list[dict]:
    assert app.extensions["gateway.usage"].flush(timeout=5)
    with app.extensions["gateway.store"].engine.connect() as connection:
        return [row._asdict() for row in connection.execute(select(usage).order_by(usage.c.id))]


def _managed_key(app: Flask) -> tuple[str, dict[str, str]]:
    created = app.test_client().post("/admin/keys", json={"name": "u"}, headers=KEY_HEADERS).get_json()
    return created["id"], {"X-API-Key": created["secret"]}


def test_a_completion_is_recorded_with_the_upstreams_token_counts(db_app: Flask) -> None:
    key_id, headers = _managed_key(db_app)
    response = db_app.test_client().post(
        "/v1/completions", json={"model": "gpt-test", "prompt": "hi"}, headers={**headers, "X-Request-ID": "req-usage-1"}
    )
    assert response.status_code == 200
    (row,) = _rows(db_app)
    assert row["key_id"] == key_id and row["operation"] == "completion" and row["model"] == "gpt-test"
    assert row["status"] == 200 and row["request_id"] == "req-usage-1"
    assert row["duration_ms"] > 0 and 0 < row["upstream_ms"] <= row["duration_ms"]
    # The upstream's own counts (the fake reports 5 + 7).
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (5, 7, 12)
    assert row["tokens_estimated"] is False
    assert row["ts"].tzinfo is not None


def test_a_stream_is_recorded_when_it_ends(db_app: Flask, upstream: FakeUpstream) -> None:
    upstream.behavior = Behavior(gap=0.05)
    client = db_app.test_client()
    response = client.post(
        "/v1/chat/completions", json={"model": "chat-m", "stream": True, "messages": []}, headers=KEY_HEADERS, buffered=False
    )
    assert _rows(db_app) == []  # nothing yet: the stream has not ended
    body = response.get_data()
    response.close()
    assert body.rstrip().endswith(b"data: [DONE]")
    (row,) = _rows(db_app)
    assert row["key_id"] == "master" and row["operation"] == "chat" and row["model"] == "chat-m"
    assert row["status"] == 200 and row["duration_ms"] >= 50 and row["upstream_ms"] >= 50
    # Asked for upstream (stream_options.include_usage), read from the last chunk.
    assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_estimated"]) == (9, 5, False)
    assert b'"usage"' not in body or b'"usage": null' in body  # the client did not ask, so it got no usage chunk


def test_failures_are_recorded_with_their_status(db_app: Flask, upstream: FakeUpstream) -> None:
    client = db_app.test_client()
    upstream.behavior = Behavior(mode="status", status=500)
    assert client.post("/api/ai/chat", json={"model": "m", "messages": []}, headers=KEY_HEADERS).status_code == 502
    assert client.post("/api/ai/chat", data="{oops", content_type="application/json", headers=KEY_HEADERS).status_code == 400
    assert [(r["operation"], r["status"], r["model"]) for r in _rows(db_app)] == [("chat", 502, "m"), ("chat", 400, None)]


def test_requests_that_never_reach_a_relay_view_are_not_recorded(make_app) -> None:
    app = make_app(rate_limit_ai="1 per minute")
    client = app.test_client()
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers=KEY_HEADERS).status_code == 200
    assert client.get("/v1/models", headers=KEY_HEADERS).status_code == 429
    assert client.get("/health").status_code == 200
    assert [(r["operation"], r["status"]) for r in _rows(app)] == [("models", 200)]


def test_a_slow_database_never_slows_a_request(app: Flask, monkeypatch) -> None:
    writer = app.extensions["gateway.usage"]
    release = threading.Event()
    real = writer._insert
    monkeypatch.setattr(writer, "_insert", lambda batch: release.wait(10) and real(batch))
    client = app.test_client()
    started = time.perf_counter()
    for _ in range(10):
        assert client.get("/v1/models", headers=KEY_HEADERS).status_code == 200
    assert time.perf_counter() - started < 2
    release.set()
    assert len(_rows(app)) == 10
