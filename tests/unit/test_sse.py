"""SSE framing: whole events only, bytes untouched."""

from __future__ import annotations

import json
import random
import time

import pytest

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
    out = b"".join(framer.feed(text[i : i + 1]) for i in range(len(text))) + framer.flush()
    assert out == text


def test_error_event_is_an_sse_event_with_the_envelope() -> None:
    event = error_event("broke off")
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    body = json.loads(event.split(b"data: ", 1)[1])
    assert body["error"]["message"] == "broke off"
    assert set(body["error"]) == {"message", "type", "code", "param"}


def _reference_frames(chunks: list[bytes]) -> list[bytes]:
    """What a framer must return per chunk: the whole buffer searched every time (the
    obviously right, quadratic way the framer once worked)."""
    out, pending = [], b""
    for chunk in chunks:
        buffer = pending + chunk
        end = max((i + len(b) for b in (b"\n\n", b"\r\n\r\n", b"\r\r") if (i := buffer.rfind(b)) >= 0), default=0)
        out.append(buffer[:end])
        pending = buffer[end:]
    return [*out, pending]


@pytest.mark.parametrize("seed", range(40))
def test_any_split_gives_what_searching_everything_gives(seed: int) -> None:
    # Boundaries of every kind, split at every kind of place (inside "\r\n\r\n" too).
    rng = random.Random(seed)
    pieces = [b"data: a", b"\n", b"\r", b"\r\n", b"\n\n", b"\r\n\r\n", b"\r\r", b"x", b'data: {"k": 1}']
    stream = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 80)))
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 30)))) if len(stream) > 1 else []
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    framer = EventFramer()
    got = [framer.feed(chunk) for chunk in chunks]
    expected = _reference_frames(chunks)
    assert got == expected[:-1]
    assert framer.pending == len(expected[-1])
    assert framer.flush() == expected[-1] and framer.pending == 0


def test_pending_counts_the_incomplete_event() -> None:
    framer = EventFramer()
    assert framer.feed(b"data: 1\n\ndata: ab") == b"data: 1\n\n"
    assert framer.pending == len(b"data: ab")
    assert framer.feed(b"c" * 100) == b""
    assert framer.pending == len(b"data: ab") + 100
    assert framer.feed(b"\n\n") == b"data: ab" + b"c" * 100 + b"\n\n"
    assert framer.pending == 0


def test_an_endless_event_costs_one_pass_not_one_pass_per_read() -> None:
    # 16 MiB without a boundary in 16 KiB reads: searching all pending bytes on every
    # read touches ~8 GiB (many seconds); searching only the new bytes, 16 MiB.
    framer = EventFramer()
    piece = b"x" * 16384
    started = time.perf_counter()
    for _ in range(1024):
        assert framer.feed(piece) == b""
    elapsed = time.perf_counter() - started
    assert framer.pending == 16 * 1024 * 1024
    assert elapsed < 2.0, elapsed
    assert framer.feed(b"\n\n")[-3:] == b"x\n\n" and framer.pending == 0
