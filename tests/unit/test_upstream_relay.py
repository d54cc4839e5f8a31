"""stream_events without a server: the event limit, and the turns it gives other greenlets."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator

import pytest

from gateway.upstream import streams
from gateway.upstream.accounting import StreamUsageTap
from gateway.upstream.reads import READ_SIZE
from gateway.upstream.streams import RelayLimits, stream_events


class _Raw:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.reads = 0
        self.received = 0
        self.decoded: set[bool] = set()

    def read1(self, size: int, decode_content: bool = True) -> bytes:
        self.reads += 1
        self.decoded.add(decode_content)
        data = next(self.chunks, b"")
        self.received += len(data)
        return data

    def tell(self) -> int:
        return self.received


class _Upstream:
    def __init__(self, chunks: Iterator[bytes], headers: dict[str, str] | None = None) -> None:
        self.raw = _Raw(chunks)
        self.headers = headers or {}
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


class _Hub:
    """gevent.get_hub() as stream_events sees it: a loop whose clock the test moves."""

    def __init__(self) -> None:
        self.clock = 0.0
        self.loop = self

    def now(self) -> float:
        return self.clock


def _cooperation(turns: list[int], hub: _Hub, count: object) -> object:
    def pause() -> None:
        turns.append(count())  # type: ignore[operator]
        hub.clock += 1  # the hub ran

    return lambda: (pause, lambda: hub)


def test_a_stream_that_keeps_coming_gives_other_greenlets_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    turns: list[int] = []
    upstream = _Upstream(iter([b"data: %d\n\n" % i for i in range(50)]))
    monkeypatch.setattr(streams, "_cooperative_yield", _cooperation(turns, _Hub(), lambda: upstream.raw.reads))
    monkeypatch.setattr(streams, "YIELD_EVERY", 0.0)  # a turn before every read
    out = list(stream_events(upstream, _limits(), lambda outcome: None))
    assert len(out) == 50
    assert turns == list(range(51))  # before each of the 50 reads with data and the one that finds the end


def test_turns_are_rationed_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    turns: list[int] = []
    upstream = _Upstream(iter([b"data: %d\n\n" % i for i in range(1000)]))
    monkeypatch.setattr(streams, "_cooperative_yield", _cooperation(turns, _Hub(), lambda: 1))
    monkeypatch.setattr(streams, "YIELD_EVERY", 3600.0)
    assert len(list(stream_events(upstream, _limits(), lambda outcome: None))) == 1000
    assert turns == []  # a fast reader does not pay for a switch per event


def test_a_stream_that_waits_on_its_upstream_takes_no_extra_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    # A paced stream: every read waits on the socket, so the hub runs (its clock moves)
    # between events; a forced switch per event on top of that would be wasted.
    turns: list[int] = []
    hub = _Hub()

    def paced() -> Iterator[bytes]:
        for i in range(50):
            hub.clock += 0.015  # the read waited: the hub ran its loop
            yield b"data: %d\n\n" % i

    upstream = _Upstream(paced())
    monkeypatch.setattr(streams, "_cooperative_yield", _cooperation(turns, hub, lambda: upstream.raw.reads))
    monkeypatch.setattr(streams, "YIELD_EVERY", 0.0)  # the turn is due before every read
    assert len(list(stream_events(upstream, _limits(), lambda outcome: None))) == 50
    assert turns == [0]  # only before the first read, when the hub had not run since the stream began


def test_events_that_arrive_together_go_out_as_one_item_uncopied() -> None:
    together = b'data: {"usage":null,"n":1}\n\ndata: {"usage":null,"n":2}\n\n'
    upstream = _Upstream(iter([together, b"data: [DONE]\n\n"]))
    tap = StreamUsageTap(strip_usage_chunk=True)
    out = list(stream_events(upstream, _limits(), lambda outcome: None, tap))
    assert out == [together, b"data: [DONE]\n\n"]
    assert out[0] is together  # neither the framer nor the tap copied the bytes


@pytest.mark.parametrize(
    ("headers", "decoded"),
    [({}, False), ({"Content-Encoding": "identity"}, False), ({"Content-Encoding": "gzip"}, True)],
)
def test_only_a_content_coded_stream_is_read_through_the_decoder(headers: dict[str, str], decoded: bool) -> None:
    # urllib3's decoding step buffers and copies every read: skipped when there is nothing to undo.
    upstream = _Upstream(iter([b"data: 1\n\n"]), headers)
    assert list(stream_events(upstream, _limits(), lambda outcome: None)) == [b"data: 1\n\n"]
    assert upstream.raw.decoded == {decoded}


class _ChunkedRaw(_Raw):
    """A chunked body, as urllib3 presents one: read_chunked yields one HTTP chunk at a time."""

    chunked = True

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__(chunks)
        self.generator_closed = False
        self.sizes: set[int | None] = set()

    def supports_chunked_reads(self) -> bool:
        return True

    def read_chunked(self, amt: int | None = None, decode_content: bool | None = None) -> Iterator[bytes]:
        self.sizes.add(amt)
        self.decoded.add(bool(decode_content))
        try:
            yield from self.chunks
        finally:
            self.generator_closed = True

    def read1(self, size: int, decode_content: bool = True) -> bytes:
        raise AssertionError("a chunked stream is read with read_chunked")


@pytest.mark.parametrize("cut", [False, True], ids=["to-its-end", "client-went-away"])
def test_a_chunked_stream_is_read_from_one_read_chunked_generator(cut: bool) -> None:
    # read1 sets up urllib3's error handling (a context manager) and http.client's chunk
    # parsing for every read; read_chunked does it once per stream.
    upstream = _Upstream(iter([b"data: 1\n\n", b"data: 2\n\n"]))
    raw = upstream.raw = _ChunkedRaw(iter([b"data: 1\n\n", b"data: 2\n\n"]))
    outcomes: list[str] = []
    events = stream_events(upstream, _limits(), outcomes.append)
    if cut:
        assert next(events) == b"data: 1\n\n"
        events.close()
    else:
        assert list(events) == [b"data: 1\n\n", b"data: 2\n\n"]
    assert raw.generator_closed and upstream.closed == 1
    assert raw.sizes == {READ_SIZE} and raw.decoded == {False}  # each read bounded, nothing to decode
    assert outcomes == ["client_disconnected" if cut else "completed"]


def test_an_empty_chunked_stream_is_still_an_error() -> None:
    upstream = _Upstream(iter([]))
    upstream.raw = _ChunkedRaw(iter([]))
    out = list(stream_events(upstream, _limits(), lambda outcome: None))
    assert len(out) == 1 and b"upstream_stream_error" in out[0]
