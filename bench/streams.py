"""A small asyncio SSE client that times every event.

Each stream is one HTTP/1.1 request on its own connection. For each event it notes
``time.monotonic_ns()`` on arrival; the bench upstream writes its own
``time.monotonic_ns()`` into each event's text (``t=<ns>``), and CLOCK_MONOTONIC is
one clock for every process on the machine, so ``arrival - written`` is the event's
delivery delay: upstream -> (gateway ->) client. Comparing it direct and through a
gateway gives the extra delay the gateway adds per chunk.

Time to first byte (TTFB) is from just before connecting to the arrival of the
first event (not just the status line: a gateway that sent headers but held the
first event back would look fast otherwise).

``concurrent()`` runs N streams side by side. With ``ramp_s`` > 0, stream i connects
``i * ramp_s / N`` seconds after the round starts, so the N connects are spread evenly
over the ramp; streams that last longer than the ramp (the benchmark's slow streams:
~5 s against a 2 s ramp) are then all open together. Each stream's TTFB is still timed
from just before its own connect. With ``ramp_s`` = 0 all N connect in the same instant:
that measures this one-process client's (and the server's) connection storm more than
the server under test (1000 simultaneous connects to the bench upstream alone give a
TTFB p99 of ~250 ms on the 2-core bench machine). ``peak_open()`` reports how many
streams were open at the same time, from each stream's connect to its end.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

_STAMP = re.compile(r"t=(\d+)")


@dataclass
class StreamResult:
    status: int = 0
    ttfb_ms: float | None = None
    total_ms: float = 0.0
    events: int = 0
    done: bool = False
    delays_ms: list[float] = field(default_factory=list)
    error: str | None = None
    # time.monotonic_ns() just before connecting and when the stream ended (either way)
    opened_ns: int = 0
    closed_ns: int = 0

    def ok(self, expected_events: int) -> bool:
        """Complete and intact: every event the upstream wrote arrived, then ``[DONE]``.

        Events are counted by the upstream's time stamps, so a gateway that adds events of
        its own (LiteLLM sends one more, empty, chunk) is not counted as failing.
        """
        return self.error is None and self.status == 200 and self.done and len(self.delays_ms) == expected_events


def _event_text(obj: dict) -> str:
    choices = obj.get("choices") or [{}]
    choice = choices[0] if isinstance(choices, list) and choices else {}
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
        return delta["content"]
    text = choice.get("text") if isinstance(choice, dict) else None
    return text if isinstance(text, str) else ""


class _Decoder:
    """HTTP/1.1 chunked (or connection-delimited) body -> SSE events."""

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self.raw = bytearray()
        self.body = bytearray()
        self.finished = False

    def feed(self, data: bytes) -> list[bytes]:
        if not self.chunked:
            self.body += data
        else:
            self.raw += data
            while True:
                line_end = self.raw.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(bytes(self.raw[:line_end]).split(b";", 1)[0] or b"0", 16)
                if size == 0:
                    self.finished = True
                    self.raw.clear()
                    break
                if len(self.raw) < line_end + 2 + size + 2:
                    break
                self.body += self.raw[line_end + 2 : line_end + 2 + size]
                del self.raw[: line_end + 2 + size + 2]
        events = []
        while True:
            # events end with a blank line; accept \n\n and \r\n\r\n
            cut = self.body.find(b"\n\n")
            cut_crlf = self.body.find(b"\r\n\r\n")
            if cut < 0 and cut_crlf < 0:
                break
            if cut_crlf >= 0 and (cut < 0 or cut_crlf < cut):
                events.append(bytes(self.body[:cut_crlf]))
                del self.body[: cut_crlf + 4]
            else:
                events.append(bytes(self.body[:cut]))
                del self.body[: cut + 2]
        return events


async def one_stream(
    host: str, port: int, path: str, headers: Mapping[str, str], body: bytes, timeout_s: float = 60.0
) -> StreamResult:
    result = StreamResult()
    started = result.opened_ns = time.monotonic_ns()
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            head = [
                f"POST {path} HTTP/1.1",
                f"Host: {host}:{port}",
                "Content-Type: application/json",
                "Accept: text/event-stream",
                f"Content-Length: {len(body)}",
                "Connection: close",
            ]
            head += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            status_line = await reader.readline()
            parts = status_line.split(b" ", 2)
            result.status = int(parts[1]) if len(parts) > 1 else 0
            chunked = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            decoder = _Decoder(chunked)
            while not decoder.finished:
                data = await reader.read(65536)
                if not data:
                    break
                arrived = time.monotonic_ns()
                for event in decoder.feed(data):
                    _account(result, event, arrived, started)
            if result.status != 200 and result.error is None:
                result.error = f"HTTP {result.status}"
    except TimeoutError:
        result.error = "timeout"
    except (OSError, ValueError, asyncio.IncompleteReadError) as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        result.closed_ns = time.monotonic_ns()
        result.total_ms = (result.closed_ns - started) / 1e6
        if writer is not None:
            writer.close()
    return result


_STAMP_BYTES = re.compile(rb'"t=(\d+)')


def _account(result: StreamResult, event: bytes, arrived: int, started: int) -> None:
    # The usual event, a chunk with the upstream's stamp in its text: read by bytes, so
    # that this client (on the load core) stays cheap at thousands of events a second.
    if event.startswith(b"data: {") and b'"error"' not in event:
        match = _STAMP_BYTES.search(event)
        if match:
            if result.ttfb_ms is None:
                result.ttfb_ms = (arrived - started) / 1e6
            result.events += 1
            result.delays_ms.append((arrived - int(match.group(1))) / 1e6)
            return
    kind = None
    data_lines = []
    for line in event.decode("utf-8", "replace").splitlines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data_lines.append(line[5:].strip())
    data = "\n".join(data_lines)
    if kind == "error":
        result.error = f"error event: {data[:200]}"
        return
    if not data:
        return
    if data == "[DONE]":
        result.done = True
        return
    if result.ttfb_ms is None:
        result.ttfb_ms = (arrived - started) / 1e6
    result.events += 1
    try:
        obj = json.loads(data)
    except ValueError:
        return
    if isinstance(obj, dict) and "error" in obj:
        result.error = f"error object: {data[:200]}"
        return
    match = _STAMP.search(_event_text(obj) if isinstance(obj, dict) else "")
    if match:
        result.delays_ms.append((arrived - int(match.group(1))) / 1e6)


async def sequential(host: str, port: int, path: str, headers: Mapping[str, str], body: bytes, count: int) -> list[StreamResult]:
    return [await one_stream(host, port, path, headers, body) for _ in range(count)]


async def concurrent(
    host: str, port: int, path: str, headers: Mapping[str, str], body: bytes, count: int, timeout_s: float, ramp_s: float = 0.0
) -> list[StreamResult]:
    """``count`` streams side by side; stream i connects ``i * ramp_s / count`` s after the start.

    ``ramp_s`` = 0: all connect at once (as before the ramp existed). ``timeout_s`` applies to
    each stream from its own connect, so the wait before it does not count against it.
    """
    if ramp_s <= 0:
        return list(await asyncio.gather(*(one_stream(host, port, path, headers, body, timeout_s) for _ in range(count))))
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def after(offset_s: float) -> StreamResult:
        # relative to one start time, so the time taken to schedule earlier streams does not add up
        await asyncio.sleep(max(0.0, start + offset_s - loop.time()))
        return await one_stream(host, port, path, headers, body, timeout_s)

    return list(await asyncio.gather(*(after(i * ramp_s / count) for i in range(count))))


def peak_open(results: list[StreamResult]) -> int:
    """The most streams open at the same time: each is open from just before its connect to its end.

    Where one stream ends at the very nanosecond another connects, they are not counted as overlapping.
    """
    edges = sorted([(r.opened_ns, 1) for r in results if r.opened_ns] + [(r.closed_ns, -1) for r in results if r.opened_ns])
    peak = open_now = 0
    for _, step in edges:  # at equal times -1 sorts before +1: an end before a connect
        open_now += step
        peak = max(peak, open_now)
    return peak


def percentile(values: list[float], pct: float) -> float | None:
    """The ``pct`` percentile of ``values``, linearly interpolated; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
