"""A client that disconnects mid-stream is billed for what the upstream produced
(STREAM_DISCONNECT): ``abort`` closes the upstream at once and bills the text relayed so
far as an estimate; ``drain`` reads the upstream to its end and bills its exact usage."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from gateway.config import ConfigError
from gateway.store.tables import usage
from gateway.upstream.accounting import relayed_text_chars
from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import Behavior

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _row(app) -> tuple:  # type: ignore[no-untyped-def]
    app.extensions["gateway.usage"].flush(5)
    with app.extensions["gateway.store"].engine.connect() as conn:
        return tuple(conn.execute(select(usage.c.completion_tokens, usage.c.tokens_estimated, usage.c.status)).one())


def _disconnect_after(app, events: int) -> bytes:  # type: ignore[no-untyped-def]
    response = app.test_client().post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS, buffered=False)
    received = b""
    chunks = iter(response.response)
    while received.count(b"\n\n") < events:
        received += next(chunks)
    next(chunks)  # the WSGI server asks for the next events and fails to write them: not relayed
    response.close()  # what the WSGI server does when the client goes away
    return received


def test_abort_closes_the_upstream_and_bills_the_text_relayed(make_app, upstream) -> None:
    upstream.behavior = Behavior(chunks=40, gap=0.02)
    app = make_app(stream_disconnect="abort")
    received = _disconnect_after(app, 3)
    assert upstream.wait_for_active_streams(0, timeout=1.0)  # the upstream stream was closed at once
    completion, estimated, status = _row(app)
    assert estimated is True and status == 200
    assert completion == -(-relayed_text_chars(received) // 4)  # the text the client got, four characters per token
    assert 0 < completion < 40


def test_drain_reads_the_upstream_to_its_end_for_its_exact_usage(make_app, upstream) -> None:
    upstream.behavior = Behavior(chunks=12, gap=0.01)
    app = make_app(stream_disconnect="drain")
    started = time.monotonic()
    _disconnect_after(app, 2)
    assert time.monotonic() - started < 5
    completion, estimated, status = _row(app)
    assert (completion, estimated, status) == (12, False, 200)  # the fake's usage chunk: one token per event


def test_drain_applies_to_a_stream_closed_before_its_first_event(make_app, upstream) -> None:
    upstream.behavior = Behavior(chunks=6)
    app = make_app(stream_disconnect="drain")
    response = app.test_client().post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS, buffered=False)
    response.close()
    assert _row(app) == (6, False, 200)


def test_stream_disconnect_must_be_abort_or_drain(make_app) -> None:
    with pytest.raises(ConfigError, match="STREAM_DISCONNECT must be abort or drain"):
        make_app(stream_disconnect="wait")
