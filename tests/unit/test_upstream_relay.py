"""stream_events without a server: the event limit, and the turns it gives other greenlets."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator

import pytest

from gateway.upstream import streams
from gateway.upstream.streams import RelayLimits, stream_events


class _Raw:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.reads = 0
        self.received = 0

    def read1(self, size: int, decode_content: bool = True) -> bytes:
        self.reads += 1
        data = next(self.chunks, b"")
        self.received += len(data)
        return data

    def tell(self) -> int:
        return self.received


class _Upstream:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.raw = _Raw(chunks)
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def _limits(max_event_bytes: int = 1024 * 1024) -> RelayLimits:
    return RelayLimits(deadline=time.monotonic() + 30, max_bytes=1 << 30, max_event_bytes=max_event_bytes)


def test_an_endless_event_ends_the_stream_once_past_the_limit() -> None:
    # The upstream never stops: only the limit ends the stream.
    endless = itertools.chain([b"data: 1\n\ndata: 2\n\n", b"data: "], itertools.repeat(b"x" * 65536))
    upstream, outcomes = _Upstream(endless), []
    out = list(stream_events(upstream, _limits(1024 * 1024), outcomes.append))
    assert out[0] == b"data: 1\n\ndata: 2\n\n"
    assert len(out) == 2 and out[1].startswith(b"event: error\ndata: ")
    assert json.loads(out[1].split(b"data: ", 1)[1])["error"]["code"] == "upstream_event_too_large"
    assert outcomes == ["event_too_large"] and upstream.closed == 1
    assert upstream.raw.reads == 2 + 1024 * 1024 // 65536  # stopped at the first read past the limit


def test_without_gevent_there_is_no_yield() -> None:
    # The unit tests run without gevent's monkey-patching: threads share the CPU already.
    streams._cooperative_yield.cache_clear()
    assert streams._cooperative_yield() is None


def test_a_stream_that_keeps_coming_gives_other_greenlets_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    turns: list[int] = []
    upstream = _Upstream(iter([b"data: %d\n\n" % i for i in range(50)]))
    monkeypatch.setattr(streams, "_cooperative_yield", lambda: lambda: turns.append(upstream.raw.reads))
    monkeypatch.setattr(streams, "YIELD_EVERY", 0.0)  # a turn before every read
    out = list(stream_events(upstream, _limits(), lambda outcome: None))
    assert len(out) == 50
    assert turns == list(range(51))  # before each of the 50 reads with data and the one that finds the end


def test_turns_are_rationed_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    turns: list[int] = []
    upstream = _Upstream(iter([b"data: %d\n\n" % i for i in range(1000)]))
    monkeypatch.setattr(streams, "_cooperative_yield", lambda: lambda: turns.append(1))
    monkeypatch.setattr(streams, "YIELD_EVERY", 3600.0)
    assert len(list(stream_events(upstream, _limits(), lambda outcome: None))) == 1000
    assert turns == []  # a fast reader does not pay for a switch per event
