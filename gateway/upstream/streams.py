"""Relaying a ``text/event-stream`` answer: event by event, as it arrives.

:func:`stream_events` relays whole events (framed by :class:`gateway.upstream.sse.EventFramer`)
and ends with an SSE error event, never a made-up ``[DONE]``, when the upstream breaks off,
stalls, runs past the deadline or sends one event larger than ``MAX_STREAM_EVENT_BYTES``.
:func:`open_stream` reads a stream up to its first event before anything reaches the
client, so that a backend failing before then can be tried again
(:mod:`gateway.backends.dispatch`); after the first byte the client has, there is no retry.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import urllib3.exceptions
from flask import Response

from gateway.upstream.accounting import StreamUsageTap
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.reads import READ_ERRORS, StreamReader, stream_reader
from gateway.upstream.sse import EventFramer, error_event

log = logging.getLogger(__name__)

# How a stream that the upstream ended early is reported: outcome -> the error event's code.
# The other outcomes are "completed" and "client_disconnected".
STREAM_ERROR_CODES = {
    "deadline_exceeded": "upstream_timeout",
    "upstream_idle_timeout": "upstream_timeout",
    "upstream_broke_off": "upstream_stream_error",
    "event_too_large": "upstream_event_too_large",
}
# A stream whose bytes keep arriving never waits on its socket, so under gevent it
# would never let the worker's other greenlets (``/health``, other requests, the
# heartbeat) run: it gives them a turn after this long without one. A paced stream
# waits on its socket for every event, which is a turn already.
YIELD_EVERY = 0.005


@dataclass(frozen=True)
class RelayLimits:
    deadline: float  # time.monotonic() by which the whole answer must be in
    max_bytes: int  # largest non-streamed body accepted from the upstream
    max_event_bytes: int = 1024 * 1024  # largest single streamed event (MAX_STREAM_EVENT_BYTES)
    drain: bool = False  # STREAM_DISCONNECT=drain: a stream whose client went away is read to its end


@functools.cache
def _cooperative_yield() -> tuple[Callable[[], None], Callable[[], Any]] | None:
    """Where gevent runs the worker (it has patched ``socket``): ``gevent.sleep(0)``, and
    ``gevent.get_hub``, whose loop's clock (``loop.now()``, public) moves only when the hub
    has run its loop, so when the worker's other greenlets have had a turn. Else None:
    with threads, the OS already shares the processor between requests."""
    try:
        from gevent import get_hub, monkey, sleep
    except ImportError:  # gevent is not installed
        return None
    if not monkey.is_module_patched("socket"):
        return None
    return functools.partial(sleep, 0), get_hub


class StreamEndedEarly(Exception):
    """A stream ended before its first event (:func:`open_stream`): nothing has reached the
    client yet, so another attempt may still serve it. ``outcome`` names how it ended."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


@dataclass
class OpenedStream:
    """A stream whose first events are in (:func:`open_stream`), not yet sent to the client."""

    framer: EventFramer
    first: bytes
    reader: StreamReader


def open_stream(upstream: UpstreamResponse, limits: RelayLimits, tap: StreamUsageTap | None) -> OpenedStream:
    """Read a stream until its first whole event, before anything is sent to the client.

    :raises StreamEndedEarly: the upstream broke off, stalled or ended before a first event
        (the upstream is left open: the caller closes it).
    """
    framer = EventFramer()
    reader = stream_reader(upstream)
    try:
        while True:
            if time.monotonic() > limits.deadline:
                raise StreamEndedEarly("deadline_exceeded")
            try:
                data = reader.read()
            except urllib3.exceptions.ReadTimeoutError:
                raise StreamEndedEarly("upstream_idle_timeout") from None
            except READ_ERRORS:
                raise StreamEndedEarly("upstream_broke_off") from None
            events = framer.feed(data) if data else framer.flush()
            if events and tap is not None:
                events = tap.feed(events)
            if events:
                return OpenedStream(framer, events, reader)
            if not data:
                raise StreamEndedEarly("upstream_broke_off")
            if framer.pending > limits.max_event_bytes:
                raise StreamEndedEarly("event_too_large")
    except StreamEndedEarly:
        reader.close()
        raise


def ended_stream(outcome: str, on_end: Callable[[str], None]) -> Response:
    """The client's stream for one that ended before its first event and was not tried
    again: the error event of ``outcome`` alone, as :func:`stream_events` would end it."""

    def events() -> Generator[bytes, None, None]:
        try:
            yield error_event(_EARLY_END_MESSAGES[outcome], code=STREAM_ERROR_CODES[outcome])
        finally:
            on_end(outcome)

    return _event_stream(StreamBody(None, events(), on_end))


_EARLY_END_MESSAGES = {
    "deadline_exceeded": "The stream exceeded the gateway's maximum duration.",
    "upstream_idle_timeout": "The AI backend stopped sending.",
    "upstream_broke_off": "The AI backend ended the stream early.",
    "event_too_large": "The AI backend sent an event larger than the gateway accepts.",
}


class StreamBody:
    """The response body of a stream. Closing it before its first event (the server
    gave up on the response, or a hook failed after the view) still closes the
    upstream and runs the stream-end callback, which a generator that never started
    would not do; so no concurrency slot, gauge or usage row is left open."""

    def __init__(
        self,
        upstream: UpstreamResponse | None,
        events: Generator[bytes, None, None],
        on_end: Callable[[str], None],
        drain: bool = False,
    ) -> None:
        self._upstream = upstream
        self._events = events
        self._on_end = on_end
        self._closed = False
        self._drain = drain

    def __iter__(self) -> Generator[bytes, None, None]:
        # The generator itself: the server's loop resumes it directly, with no frame of
        # this class per event. Whether it started is asked of it in close().
        return self._events

    def __next__(self) -> bytes:
        return next(self._events)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if inspect.getgeneratorstate(self._events) != inspect.GEN_CREATED:
            self._events.close()
            return
        if self._drain and self._upstream is not None:
            try:  # start it, so that closing it drains the upstream (STREAM_DISCONNECT=drain)
                next(self._events)
            except StopIteration:
                return
            self._events.close()
            return
        self._events.close()  # never started: runs nothing of it
        if self._upstream is not None:
            self._upstream.close()
        self._on_end("client_disconnected")


def stream_response(
    upstream: UpstreamResponse,
    limits: RelayLimits,
    on_end: Callable[[str], None],
    tap: StreamUsageTap | None,
    opened: OpenedStream | None,
) -> Response:
    if opened is not None:
        events = stream_events(upstream, limits, on_end, tap, framer=opened.framer, first=opened.first, reader=opened.reader)
    else:
        events = stream_events(upstream, limits, on_end, tap)
    return _event_stream(StreamBody(upstream, events, on_end, drain=limits.drain and tap is not None))


def _event_stream(body: StreamBody) -> Response:
    response = Response(body, status=200, mimetype="text/event-stream", direct_passthrough=True)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _drain(read: Callable[[], bytes], limits: RelayLimits, framer: EventFramer, tap: StreamUsageTap) -> None:
    """Read the rest of a stream whose client went away, for its usage only (nothing is
    kept but the tap's figures), until its end, a read error or the deadline."""
    try:
        while time.monotonic() < limits.deadline:
            data = read()
            if not data:
                rest = framer.flush()
                if rest:
                    tap.relayed(tap.feed(rest))  # produced by the upstream: billed as if relayed
                return
            events = framer.feed(data)
            if events:
                tap.relayed(tap.feed(events))
            if framer.pending > limits.max_event_bytes:
                return
    except READ_ERRORS:
        return


def stream_events(
    upstream: UpstreamResponse,
    limits: RelayLimits,
    on_end: Callable[[str], None],
    tap: StreamUsageTap | None = None,
    *,
    framer: EventFramer | None = None,
    first: bytes = b"",
    reader: StreamReader | None = None,
) -> Generator[bytes, None, None]:
    """Yield whole SSE events as the upstream sends them.

    Ends with an SSE error event (and no ``[DONE]``) when the upstream breaks off or
    sends nothing at all, stalls beyond the read timeout, runs past the deadline, or holds more than
    ``limits.max_event_bytes`` of one event (:data:`STREAM_ERROR_CODES`); the events
    complete before that are relayed first. Closing the generator (the client went
    away) closes the upstream connection at once, or with ``limits.drain`` reads it to its
    end first (within the deadline, keeping only its usage). ``on_end`` gets the outcome either way.

    Under gevent the worker's other greenlets get a turn within about :data:`YIELD_EVERY`
    seconds (at most twice that), however fast the upstream sends: a stream that waited
    on its upstream in that time gave them one then, and pays for no extra switch.

    ``framer``, ``first`` and ``reader``: a stream :func:`open_stream` has begun (its first
    events are sent first).
    """
    framer = framer if framer is not None else EventFramer()
    outcome = "completed"
    cooperative = _cooperative_yield()
    pause: Callable[[], None] | None = None
    hub_clock: Callable[[], float] = time.monotonic
    if cooperative is not None:
        pause, hub_clock = cooperative[0], cooperative[1]().loop.now
    hub_seen = hub_clock()
    turn_ends = time.monotonic() + YIELD_EVERY
    reader = reader if reader is not None else stream_reader(upstream)
    read = reader.read
    received = bool(first)
    deadline = limits.deadline
    max_event_bytes = limits.max_event_bytes
    feed = framer.feed
    try:
        if first:
            yield first
            if tap is not None:
                tap.relayed(first)
        while True:
            now = time.monotonic()
            if now > turn_ends and pause is not None:
                # A stream that waited on its upstream since the last turn let the hub run
                # then (its clock moved): only one whose bytes kept coming pays for a switch.
                if hub_clock() == hub_seen:
                    pause()
                hub_seen = hub_clock()
                turn_ends = time.monotonic() + YIELD_EVERY
            if now > deadline:
                outcome = "deadline_exceeded"
                yield error_event("The stream exceeded the gateway's maximum duration.", code=STREAM_ERROR_CODES[outcome])
                return
            try:
                data = read()
            except urllib3.exceptions.ReadTimeoutError:
                outcome = "upstream_idle_timeout"
                yield error_event("The AI backend stopped sending.", code=STREAM_ERROR_CODES[outcome])
                return
            except READ_ERRORS:
                outcome = "upstream_broke_off"
                yield error_event("The AI backend ended the stream early.", code=STREAM_ERROR_CODES[outcome])
                return
            if not data:
                if not received:  # an event stream with no byte in it
                    outcome = "upstream_broke_off"
                    log.warning("upstream answered a stream with an empty body")
                    yield error_event("The AI backend returned an empty stream.", code=STREAM_ERROR_CODES[outcome])
                    return
                break
            received = True
            # All the events this read brought go out in one write: one item, one chunk.
            events = feed(data)
            if events:
                if tap is not None:
                    events = tap.feed(events)
                    if events:
                        yield events
                        tap.relayed(events)  # the write succeeded: these events were relayed
                else:
                    yield events
            if framer.pending > max_event_bytes:
                outcome = "event_too_large"
                yield error_event("The AI backend sent an event larger than the gateway accepts.", code=STREAM_ERROR_CODES[outcome])
                return
        rest = framer.flush()
        if rest and tap is not None:
            rest = tap.feed(rest)
        if rest:
            yield rest
            if tap is not None:
                tap.relayed(rest)
    except GeneratorExit:
        outcome = "client_disconnected"
        if limits.drain and tap is not None:
            _drain(read, limits, framer, tap)
        raise
    finally:
        reader.close()
        upstream.close()
        if outcome not in ("completed", "client_disconnected"):
            log.warning("stream ended early: %s", outcome)
        on_end(outcome)
