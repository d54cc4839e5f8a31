"""SSE framing: whole events only, bytes untouched."""

from __future__ import annotations

import json

from gateway.upstream.sse import EventFramer, error_event


def test_whole_events_pass_through_unchanged() -> None:
    framer = EventFramer()
    data = b'data: {"a": 1}\n\ndata: [DONE]\n\n'
    assert framer.feed(data) == data
    assert framer.pending == 0


def test_split_event_is_held_until_complete() -> None:
    framer = EventFramer()
    assert framer.feed(b'data: {"a"') == b""
    assert framer.feed(b": 1}\n") == b""
    assert framer.feed(b"\ndata: x") == b'data: {"a": 1}\n\n'
    assert framer.flush() == b"data: x"


def test_crlf_and_cr_boundaries() -> None:
    framer = EventFramer()
    assert framer.feed(b"data: a\r\n\r\ndata: b\r\n") == b"data: a\r\n\r\n"
    assert framer.feed(b"\r\n") == b"data: b\r\n\r\n"
    assert EventFramer().feed(b"data: c\r\rdata: d") == b"data: c\r\r"


def test_multibyte_utf8_split_across_chunks_is_byte_exact() -> None:
    text = 'data: {"t": "héllo wörld ✓"}\n\n'.encode()
    framer = EventFramer()
    out = b"".join(framer.feed(text[i:i + 1]) for i in range(len(text))) + framer.flush()
    assert out == text


def test_error_event_is_an_sse_event_with_the_envelope() -> None:
    event = error_event("broke off")
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    body = json.loads(event.split(b"data: ", 1)[1])
    assert body["error"]["message"] == "broke off"
    assert set(body["error"]) == {"message", "type", "code", "param"}
