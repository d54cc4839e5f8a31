"""Turn an upstream answer into the gateway's response.

- 2xx JSON and 4xx JSON pass through byte for byte with the upstream's status;
  an upstream 429 keeps its ``Retry-After`` and always carries an ``error.code``
  other than the gateway's own ``gateway_rate_limited``.
- Upstream 401/403 (a bad ``AI_API_KEY``), 3xx, 5xx, non-JSON answers and a 2xx
  other than 204 with an empty body become a 502 in the gateway's envelope: never
  the client's fault, never the upstream's internals, never a bodiless 200.
- Valid JSON that does not follow OpenAI's schema (``{"choices": 5}``, no ``usage``)
  is relayed as the upstream sent it, and its usage is recorded as an estimate
  (:func:`gateway.upstream.accounting.usage_of_answer` reads only what has the right
  shape). The gateway is a relay: checking every answer against the schema would cost
  every request and turn a backend's harmless extension into an outage, while the
  client, who reads the answer, is the one that can judge it.
- ``text/event-stream`` answers are relayed event by event as they arrive
  (:func:`stream_events`); an upstream that breaks off, or sends one event larger
  than ``MAX_STREAM_EVENT_BYTES``, ends with an error event, never with a made-up
  ``[DONE]``.

Only the headers named in :data:`PASSED_HEADERS` come back from the upstream.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import urllib3.exceptions
from flask import Response

from gateway.errors import UpstreamError, UpstreamTimeout, envelope
from gateway.upstream.accounting import StreamUsageTap
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.sse import EventFramer, error_event

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
PASSED_HEADERS = ("Retry-After",)
# The attribute of a relayed JSON response that holds the upstream's parsed answer (a dict or None).
UPSTREAM_ANSWER = "upstream_answer"
_READ_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)
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
# heartbeat) run: it gives them a turn after this long without one.
YIELD_EVERY = 0.005


@dataclass(frozen=True)
class RelayLimits:
    deadline: float  # time.monotonic() by which the whole answer must be in
    max_bytes: int  # largest non-streamed body accepted from the upstream
    max_event_bytes: int = 1024 * 1024  # largest single streamed event (MAX_STREAM_EVENT_BYTES)


@functools.cache
def _cooperative_yield() -> Callable[[], None] | None:
    """``gevent.sleep(0)`` where gevent runs the worker (it has patched ``socket``), else None:
    with threads, the OS already shares the processor between requests."""
    try:
        from gevent import monkey, sleep
    except ImportError:  # gevent is not installed
        return None
    return functools.partial(sleep, 0) if monkey.is_module_patched("socket") else None


def _read_chunk(upstream: UpstreamResponse) -> bytes:
    # read1 returns what has arrived (one recv), so a trickling upstream cannot
    # hold us past the deadline, and a connection-delimited stream is not buffered.
    return upstream.raw.read1(READ_SIZE, decode_content=True)


def read_body(upstream: UpstreamResponse, limits: RelayLimits) -> bytes:
    """Read a whole non-streamed answer within the deadline and size cap.

    :raises UpstreamTimeout: the deadline passed, or a read timed out.
    :raises UpstreamError: the answer was too large or cut off.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            if time.monotonic() > limits.deadline:
                raise UpstreamTimeout("The AI backend did not finish its answer in time.")
            data = _read_chunk(upstream)
            if not data:
                return b"".join(chunks)
            size += len(data)
            if size > limits.max_bytes:
                raise UpstreamError("The AI backend's answer is too large.", error_code="upstream_response_too_large")
            chunks.append(data)
            if upstream.raw.length_remaining == 0:  # all its Content-Length is in: no read for the end
                return b"".join(chunks)
    except urllib3.exceptions.ReadTimeoutError:
        raise UpstreamTimeout("The AI backend stopped answering.") from None
    except _READ_ERRORS:
        raise UpstreamError("The AI backend's answer was cut off.", error_code="upstream_incomplete") from None


def _passed_headers(upstream: UpstreamResponse) -> dict[str, str]:
    return {name: upstream.headers[name] for name in PASSED_HEADERS if name in upstream.headers}


def _json_response(body: bytes, status: int, headers: dict[str, str]) -> Response:
    response = Response(body, status=status, mimetype="application/json")
    response.headers.update(headers)
    return response


def _client_error(upstream: UpstreamResponse, body: bytes) -> Response:
    status = upstream.status_code
    headers = _passed_headers(upstream)
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not (isinstance(document, dict) and isinstance(document.get("error"), dict)):
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        code = "upstream_rate_limited" if status == 429 else "upstream_rejected"
        document = envelope(f"The AI backend rejected the request (HTTP {status}).", kind, code)
        return _json_response(json.dumps(document).encode(), status, headers)
    if status == 429 and document["error"].get("code") in (None, "", "gateway_rate_limited"):
        document["error"]["code"] = "upstream_rate_limited"
        return _json_response(json.dumps(document).encode(), status, headers)
    return _json_response(body, status, headers)


def _check_status(status: int) -> None:
    if 300 <= status < 400:
        raise UpstreamError(
            "The AI backend answered with a redirect, which the gateway does not follow.", error_code="upstream_redirect"
        )
    if status in (401, 403):
        raise UpstreamError(
            "The AI backend rejected the gateway's own credentials; the operator should check AI_API_KEY.",
            error_code="upstream_auth_failed",
        )
    if status >= 500 or status < 200:
        raise UpstreamError(f"The AI backend failed (HTTP {status}).", error_code="upstream_error")


def _is_event_stream(upstream: UpstreamResponse) -> bool:
    return upstream.headers.get("Content-Type", "").split(";", 1)[0].strip().lower() == "text/event-stream"


def to_response(
    upstream: UpstreamResponse,
    *,
    wants_stream: bool,
    limits: RelayLimits,
    on_stream_end: Callable[[str], None],
    tap: StreamUsageTap | None = None,
) -> Response:
    """Build the client's response; takes ownership of ``upstream`` (closes it).

    A JSON answer's parsed document is left on ``response.upstream_answer``; a stream's
    events pass through ``tap`` (which reads, and may remove, the usage chunk).
    """
    handed_over = False
    try:
        _check_status(upstream.status_code)
        if wants_stream and upstream.status_code == 200 and _is_event_stream(upstream):
            handed_over = True
            return _stream_response(upstream, limits, on_stream_end, tap)
        body = read_body(upstream, limits)
        if upstream.status_code >= 400:
            return _client_error(upstream, body)
        if upstream.status_code == 204:
            return Response(status=204)
        if not body:
            log.warning("upstream answered HTTP %d with an empty body", upstream.status_code)
            raise UpstreamError("The AI backend returned an empty answer.", error_code="upstream_empty_response")
        try:
            answer = json.loads(body)
        except ValueError:
            raise UpstreamError("The AI backend returned something other than JSON.", error_code="upstream_invalid_response") from None
        response = _json_response(body, upstream.status_code, _passed_headers(upstream))
        # For usage accounting and the model listing; Flask's Response has no slot for it.
        setattr(response, UPSTREAM_ANSWER, answer if isinstance(answer, dict) else None)
        return response
    finally:
        if not handed_over:
            upstream.close()


class StreamBody:
    """The response body of a stream. Closing it before its first event (the server
    gave up on the response, or a hook failed after the view) still closes the
    upstream and runs the stream-end callback, which a generator that never started
    would not do; so no concurrency slot, gauge or usage row is left open."""

    def __init__(self, upstream: UpstreamResponse, events: Generator[bytes, None, None], on_end: Callable[[str], None]) -> None:
        self._upstream = upstream
        self._events = events
        self._on_end = on_end
        self._started = False

    def __iter__(self) -> StreamBody:
        return self

    def __next__(self) -> bytes:
        self._started = True
        return next(self._events)

    def close(self) -> None:
        if self._started:
            self._events.close()
        else:
            self._started = True
            self._upstream.close()
            self._on_end("client_disconnected")


def _stream_response(
    upstream: UpstreamResponse, limits: RelayLimits, on_end: Callable[[str], None], tap: StreamUsageTap | None
) -> Response:
    body = StreamBody(upstream, stream_events(upstream, limits, on_end, tap), on_end)
    response = Response(body, status=200, mimetype="text/event-stream", direct_passthrough=True)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def stream_events(
    upstream: UpstreamResponse, limits: RelayLimits, on_end: Callable[[str], None], tap: StreamUsageTap | None = None
) -> Generator[bytes, None, None]:
    """Yield whole SSE events as the upstream sends them.

    Ends with an SSE error event (and no ``[DONE]``) when the upstream breaks off or
    sends nothing at all, stalls beyond the read timeout, runs past the deadline, or holds more than
    ``limits.max_event_bytes`` of one event (:data:`STREAM_ERROR_CODES`); the events
    complete before that are relayed first. Closing the generator (the client went
    away) closes the upstream connection at once. ``on_end`` gets the outcome either way.

    Under gevent the loop gives the worker's other greenlets a turn at least every
    :data:`YIELD_EVERY` seconds, however fast the upstream sends.
    """
    framer = EventFramer()
    outcome = "completed"
    pause = _cooperative_yield()
    turn_ends = time.monotonic() + YIELD_EVERY
    try:
        while True:
            now = time.monotonic()
            if pause is not None and now > turn_ends:
                pause()
                turn_ends = time.monotonic() + YIELD_EVERY
            if now > limits.deadline:
                outcome = "deadline_exceeded"
                yield error_event("The stream exceeded the gateway's maximum duration.", code=STREAM_ERROR_CODES[outcome])
                return
            try:
                data = _read_chunk(upstream)
            except urllib3.exceptions.ReadTimeoutError:
                outcome = "upstream_idle_timeout"
                yield error_event("The AI backend stopped sending.", code=STREAM_ERROR_CODES[outcome])
                return
            except _READ_ERRORS:
                outcome = "upstream_broke_off"
                yield error_event("The AI backend ended the stream early.", code=STREAM_ERROR_CODES[outcome])
                return
            if not data:
                if upstream.raw.tell() == 0:  # an event stream with no byte in it
                    outcome = "upstream_broke_off"
                    log.warning("upstream answered a stream with an empty body")
                    yield error_event("The AI backend returned an empty stream.", code=STREAM_ERROR_CODES[outcome])
                    return
                break
            events = framer.feed(data)
            if events and tap is not None:
                events = tap.feed(events)
            if events:
                yield events
            if framer.pending > limits.max_event_bytes:
                outcome = "event_too_large"
                yield error_event("The AI backend sent an event larger than the gateway accepts.", code=STREAM_ERROR_CODES[outcome])
                return
        rest = framer.flush()
        if rest and tap is not None:
            rest = tap.feed(rest)
        if rest:
            yield rest
    except GeneratorExit:
        outcome = "client_disconnected"
        raise
    finally:
        upstream.close()
        if outcome not in ("completed", "client_disconnected"):
            log.warning("stream ended early: %s", outcome)
        on_end(outcome)
