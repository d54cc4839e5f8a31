"""One request, one record: :class:`Exchange`.

Every request gets one :class:`Exchange`, made by the first ``before_request`` hook
and carried on ``flask.g`` as the single attribute ``g.exchange``. The modules a
request passes through fill it in: auth sets :attr:`~Exchange.caller`, the quotas
the ones they counted and the one that refused, the AI relay view the operation,
model, upstream attempt, token usage and stream flag, the error handler the error code.

It is finished exactly once, by :meth:`Exchange.finish`:

- at the response (the last ``after_request`` hook) for an answer that is not streamed;
- at the stream's end for a relayed stream (completed, cut by the upstream, a
  deadline, the client going away, or a stopping worker), by the relay's end callback.

Finishing hands the record to the app's sinks, in order: the access log
(:mod:`gateway.observability`), the usage rows (:mod:`gateway.usage`) and the
metrics (:mod:`gateway.metrics`). A sink is a callable taking the finished record;
adding one is a module and one :func:`add_sink` line in :func:`gateway.create_app`.
A sink runs after the request context may be gone (a stream's end), so it reads
only the record. A failing sink is logged and does not stop the others.

The record also owns the headers that describe the exchange itself: ``X-Request-ID``,
``Server-Timing`` and ``Cache-Control: no-store`` unless a view set its own.

With tracing on (:mod:`gateway.tracing`), the hook right after the first one starts the
record's server span (:attr:`Exchange.trace`) and, unless the client sent its own
``X-Request-ID``, makes the request id ``<trace id>-<span id>``; its sink ends the spans.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from flask import Flask, Response, g, request

from gateway import response_headers

if TYPE_CHECKING:
    from gateway.auth import Caller
    from gateway.quotas.policy import CallerPolicy
    from gateway.quotas.windows import Counted
    from gateway.tracing.spans import RequestTrace
    from gateway.upstream.accounting import TokenUsage

log = logging.getLogger(__name__)

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Sink = Callable[["Exchange"], None]
"""Takes a finished :class:`Exchange`; must not need the request context."""

_SINKS_KEY = "gateway.sinks"


@dataclass(slots=True, eq=False)
class UpstreamAttempt:
    """One call to a backend: which one, with which model name, when it started
    (``perf_counter``), how long it took until the gateway had its answer (headers, for a
    stream) and how it went: ``ok``, or why another attempt followed or the request failed
    (``connect``, ``timeout``, ``status_503``, ``broke_off``, ...)."""

    started: float
    duration_ms: float | None = None
    backend: str = ""
    model: str | None = None  # the model name the backend was sent
    outcome: str = ""
    circuit: str = ""  # the deployment's circuit once the attempt ended ("closed", "open", "half_open")


@dataclass(slots=True, eq=False)
class Exchange:
    """Everything the gateway learns about one request, finished once (see the module)."""

    request_id: str
    started: float  # time.perf_counter() when the request began
    method: str
    path: str
    endpoint: str | None  # the matched rule's endpoint; None when no rule matched
    sinks: list[Sink]
    caller: Caller | None = None
    policy: CallerPolicy | None = None  # the caller's key policy, looked up once
    operation: str | None = None  # an AI operation: the request gets one usage row
    accounted_at: datetime | None = None  # when the AI request was taken in (the usage row's ts)
    model: str | None = None
    stream: bool = False  # a relayed stream: finished at the stream's end
    quotas_counted: list[Counted] | None = None  # the request quotas it was counted against
    quota_refused: str | None = None  # the request quota that refused it, if one did
    upstream: UpstreamAttempt | None = None  # the last attempt: the one that answered, or failed last
    attempts: list[UpstreamAttempt] | None = None  # every attempt, in order (retries and fallbacks)
    retry_budget_exhausted: bool = False  # a retry was due but the retry budget had none left
    usage: TokenUsage | None = None
    error_code: str | None = None  # the code of an error response the gateway made itself
    status: int = 0
    response_ms: float | None = None  # from the start until the response was made
    ended: float | None = None  # perf_counter() at finish
    duration_ms: float | None = None  # from the start until finish (a stream's end for a stream)
    outcome: str = "response"  # for a stream: how it ended ("completed", "client_disconnected", ...)
    finished: bool = False
    trace: RequestTrace | None = None  # its spans, when tracing is on (gateway.tracing)

    def attempt(self, attempt: UpstreamAttempt) -> UpstreamAttempt:
        """Add an attempt: it is now the record's :attr:`upstream`."""
        if self.attempts is None:
            self.attempts = [attempt]
        else:
            self.attempts.append(attempt)
        self.upstream = attempt
        return attempt

    @property
    def upstream_ms(self) -> float | None:
        """How long the upstream took to answer (to its headers, for a stream)."""
        return self.upstream.duration_ms if self.upstream is not None else None

    def respond(self, status: int) -> None:
        """The response is made: note its status and how long it took."""
        self.status = status
        self.response_ms = (time.perf_counter() - self.started) * 1000

    def finish(self, outcome: str | None = None, usage: TokenUsage | None = None) -> None:
        """Close the record and hand it to every sink; a second call does nothing.

        :param outcome: how a stream ended.
        :param usage: a stream's token usage, known only at its end.
        """
        if self.finished:
            return
        self.finished = True
        self.ended = time.perf_counter()
        self.duration_ms = (self.ended - self.started) * 1000
        if outcome is not None:
            self.outcome = outcome
        if usage is not None:
            self.usage = usage
        for sink in self.sinks:
            try:
                sink(self)
            except Exception:  # one sink's failure must not cost the others their record
                log.exception(
                    "request sink %s failed", getattr(sink, "__qualname__", sink), extra={"fields": {"request_id": self.request_id}}
                )


def current() -> Exchange:
    """The current request's record (inside a request only)."""
    exchange: Exchange = g.exchange
    return exchange


def current_or_none() -> Exchange | None:
    """The current request's record, or ``None`` before it was made."""
    exchange: Exchange | None = g.get("exchange")
    return exchange


def _begin(sinks: list[Sink]) -> Callable[[], None]:
    def begin() -> None:
        req = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup, not one per use
        presented = req.headers.get("X-Request-ID", "")
        g.exchange = Exchange(
            request_id=presented if _SAFE_REQUEST_ID.match(presented) else os.urandom(16).hex(),
            started=time.perf_counter(),
            method=req.method,
            path=req.path,
            endpoint=req.endpoint,
            sinks=sinks,
        )

    return begin


def _respond(response: Response) -> Response:
    exchange: Exchange | None = g.get("exchange")
    if exchange is None:  # the first hook did not run (an error before it): nothing to record
        return response
    exchange.respond(response.status_code)
    timing = f"gateway;dur={round(exchange.response_ms or 0.0, 2)}"
    upstream_ms = exchange.upstream_ms
    if upstream_ms is not None:
        timing += f", upstream;dur={round(upstream_ms, 2)}"
    headers = response.headers
    added = [("Server-Timing", timing), ("X-Request-ID", exchange.request_id)]
    if "Cache-Control" not in headers:
        added.append(("Cache-Control", "no-store"))
    response_headers.put(headers, added)
    if not (exchange.stream and response.is_streamed):
        exchange.finish()  # a relayed stream is finished by the relay, at its end
    return response


def add_sink(app: Flask, sink: Sink) -> None:
    """Hand every finished record of ``app`` to ``sink`` too (after the ones added before)."""
    app.extensions[_SINKS_KEY].append(sink)


def init_app(app: Flask) -> None:
    """Register the first ``before_request`` hook (the record is made) and the last
    ``after_request`` hook (Flask runs them in reverse order: the response is final)."""
    sinks: list[Sink] = []
    app.extensions[_SINKS_KEY] = sinks
    app.before_request(_begin(sinks))
    app.after_request(_respond)
