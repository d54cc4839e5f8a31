"""Streams across several backends: retried only before their first event; after it, a
break ends the stream with the error event and nothing is sent twice. Usage rows name
the backend that answered."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from gateway.store.tables import usage
from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import Behavior
from tests.integration.test_backends_routing import CHAT, PLENTY, two, write_config

__all__ = ["two"]  # the fixture, shared


def stream(client: Any, model: str) -> list[dict | str]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    answer = client.post(CHAT, data=json.dumps(body), headers={**KEY_HEADERS, "Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.mimetype == "text/event-stream"
    events: list[dict | str] = []
    for block in answer.get_data(as_text=True).split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def text_of(events: list[dict | str]) -> list[str]:
    return [e["choices"][0]["delta"].get("content", "") for e in events if isinstance(e, dict) and e.get("choices")]


def test_a_backend_failing_before_its_first_event_is_retried_transparently(make_app, tmp_path, two) -> None:
    a, b = two
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b)).test_client()
    a.behavior = Behavior(mode="drop", drop_after=0)  # a head, then the connection closes: no event
    for _ in range(4):
        events = stream(client, "shared")
        assert events[-1] == "[DONE]"
        assert not any(isinstance(e, dict) and "error" in e for e in events)
        assert text_of(events) == ["tok0 ", "tok1 ", "tok2 ", "tok3 ", "tok4 ", ""]
    assert b.requests  # b served every one that a broke


def test_a_stream_broken_after_five_events_ends_with_the_error_event_and_no_copy(make_app, tmp_path, two) -> None:
    a, b = two
    app = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b))
    client = app.test_client()
    a.behavior = Behavior(mode="drop", drop_after=5, chunks=10)
    events = stream(client, "only-a")
    assert text_of(events) == ["tok0 ", "tok1 ", "tok2 ", "tok3 ", "tok4 "]  # each once, in order
    assert isinstance(events[-1], dict) and events[-1]["error"]["code"] == "upstream_stream_error"
    assert "[DONE]" not in events
    assert len(a.requests) == 1 and not b.requests  # no retry after the first byte
    app.extensions["gateway.usage"].flush(5)
    with app.extensions["gateway.store"].engine.connect() as conn:
        row = conn.execute(select(usage.c.backend, usage.c.upstream_model, usage.c.attempts)).one()
    assert tuple(row) == ("a", None, 1)


def test_usage_rows_name_the_backend_that_answered_and_the_attempts(make_app, tmp_path, two) -> None:
    a, b = two
    app = make_app(
        **PLENTY,
        gateway_config=write_config(
            tmp_path,
            a,
            b,
            models="""
  - name: shared
    deployments:
      - {backend: a, model: model-a}
      - {backend: b, model: model-b, priority: 1}
""",
        ),
    )
    client = app.test_client()
    a.behavior = Behavior(mode="status", status=503)
    body = {"model": "shared", "messages": [{"role": "user", "content": "hi"}]}
    answer = client.post(CHAT, data=json.dumps(body), headers={**KEY_HEADERS, "Content-Type": "application/json"})
    assert answer.status_code == 200
    app.extensions["gateway.usage"].flush(5)
    with app.extensions["gateway.store"].engine.connect() as conn:
        row = conn.execute(select(usage.c.model, usage.c.backend, usage.c.upstream_model, usage.c.attempts)).one()
    assert tuple(row) == ("shared", "b", "model-b", 2)
