"""StreamBody: closing a stream's body before its first event still ends the stream."""

from __future__ import annotations

from gateway.upstream.streams import StreamBody


class _Upstream:
    closed = 0

    def close(self) -> None:
        self.closed += 1


def _events(ended: list[str]):
    try:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"
    finally:
        ended.append("generator finally")


def test_closed_before_the_first_event_ends_the_stream() -> None:
    upstream, ended = _Upstream(), []
    body = StreamBody(upstream, _events(ended), ended.append)
    body.close()
    assert upstream.closed == 1 and ended == ["client_disconnected"]
    # A bare generator closed before it started runs nothing at all: why StreamBody exists.
    bare: list[str] = []
    _events(bare).close()
    assert bare == []


def test_closed_mid_stream_lets_the_generator_clean_up() -> None:
    upstream, ended = _Upstream(), []
    body = StreamBody(upstream, _events(ended), ended.append)
    assert next(iter(body)) == b"data: 1\n\n"
    body.close()
    assert ended == ["generator finally"] and upstream.closed == 0  # the generator's own finally closes it


def test_iterates_like_the_generator() -> None:
    body = StreamBody(_Upstream(), _events([]), lambda outcome: None)
    assert list(body) == [b"data: 1\n\n", b"data: 2\n\n"]


def test_the_server_iterates_the_generator_itself() -> None:
    # No frame of StreamBody's own per event: iter() hands the server the generator.
    events = _events([])
    body = StreamBody(_Upstream(), events, lambda outcome: None)
    assert iter(body) is events


def test_closed_after_the_server_began_iterating_runs_the_generators_cleanup() -> None:
    upstream, ended = _Upstream(), []
    body = StreamBody(upstream, _events(ended), ended.append)
    assert next(iter(body)) == b"data: 1\n\n"
    body.close()
    body.close()  # a second close does nothing more
    assert ended == ["generator finally"] and upstream.closed == 0
