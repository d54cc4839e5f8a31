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
  (:func:`gateway.upstream.streams.stream_events`); an upstream that breaks off, or sends one event larger
  than ``MAX_STREAM_EVENT_BYTES``, ends with an error event, never with a made-up
  ``[DONE]``.

Only the headers named in :data:`PASSED_HEADERS` come back from the upstream.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import urllib3.exceptions
from flask import Response

from gateway.errors import UpstreamError, UpstreamTimeout, envelope
from gateway.upstream.accounting import StreamUsageTap
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.reads import READ_ERRORS, read_chunk
from gateway.upstream.streams import OpenedStream, RelayLimits, stream_response

log = logging.getLogger(__name__)

PASSED_HEADERS = ("Retry-After",)
# The attribute of a relayed JSON response that holds the upstream's parsed answer (a dict or None).
UPSTREAM_ANSWER = "upstream_answer"


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
            data = read_chunk(upstream)
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
    except READ_ERRORS:
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


def is_stream(upstream: UpstreamResponse, wants_stream: bool) -> bool:
    """Whether the answer is relayed as a stream: asked for, a 200, and an event stream."""
    return wants_stream and upstream.status_code == 200 and _is_event_stream(upstream)


def to_response(
    upstream: UpstreamResponse,
    *,
    wants_stream: bool,
    limits: RelayLimits,
    on_stream_end: Callable[[str], None],
    tap: StreamUsageTap | None = None,
    opened: OpenedStream | None = None,
) -> Response:
    """Build the client's response; takes ownership of ``upstream`` (closes it).

    A JSON answer's parsed document is left on ``response.upstream_answer``; a stream's
    events pass through ``tap`` (which reads, and may remove, the usage chunk).
    ``opened``: the stream's first events, already read by :func:`open_stream`.
    """
    handed_over = False
    try:
        _check_status(upstream.status_code)
        if opened is not None or is_stream(upstream, wants_stream):
            handed_over = True
            return stream_response(upstream, limits, on_stream_end, tap, opened)
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
