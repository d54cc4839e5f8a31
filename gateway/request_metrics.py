"""The metrics sink: each finished request record counted in :mod:`gateway.metrics`' instruments.

Per record: its response (route, method, status), the time until the response (a
stream's first byte), the upstream's time and the gateway's overhead, an error the
gateway made itself (the refusing quota read from the record), tokens used and, for a
stream, how it ended and the end of its in-flight count (:func:`gateway.metrics.stream_opened`).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from gateway import extensions
from gateway.exchange import Exchange
from gateway.metrics import METHODS, OTHER, QUOTA_CODES, UNMATCHED, Instruments
from gateway.upstream.streams import STREAM_ERROR_CODES
from gateway.usage.cost import Pricer


def _count_refusal(instruments: Instruments, code: str, quota: str | None) -> None:
    """An error response the gateway made itself (:attr:`Exchange.error_code`)."""
    if code.startswith("upstream_"):
        instruments.child(instruments.upstream_errors, code).inc()
    elif code == "gateway_rate_limited":
        instruments.child(instruments.quota_rejections, quota or OTHER).inc()
    elif code in QUOTA_CODES:
        instruments.child(instruments.quota_rejections, QUOTA_CODES[code]).inc()


CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


def _count_attempts(instruments: Instruments, exchange: Exchange) -> None:
    """Each attempt at a backend: its outcome and time, its deployment's circuit; the retries."""
    attempts = exchange.attempts or []
    for number, attempt in enumerate(attempts):
        backend = attempt.backend or OTHER
        instruments.child(instruments.backend_attempts, backend, attempt.outcome or "unknown").inc()
        if attempt.duration_ms is not None:
            instruments.child(instruments.backend_duration, backend).observe(attempt.duration_ms / 1000)
        if attempt.circuit:
            instruments.child(instruments.circuit_state, backend, attempt.model or "*").set(CIRCUIT_STATES.get(attempt.circuit, 0))
        if number:
            instruments.child(instruments.retries, attempts[number - 1].outcome or "unknown").inc()
    if exchange.retry_budget_exhausted:
        instruments.retry_budget_exhausted.inc()


def request_metrics(app: Flask) -> Callable[[Exchange], None]:
    """Sink: count a finished record: its response (route, method, status, time until the
    response, upstream time, an error the gateway made) and, for a stream, how it ended."""
    instruments = extensions.instruments(app)
    pricer = Pricer(extensions.backends_config(app), warn=False)  # the usage rows' sink warns of unpriced models

    def count_request(exchange: Exchange) -> None:
        status = exchange.status
        route = exchange.endpoint or UNMATCHED
        method = exchange.method if exchange.method in METHODS else OTHER
        instruments.child(instruments.requests, route, method, str(status)).inc()
        upstream_ms = exchange.upstream_ms
        if exchange.response_ms is not None:
            elapsed = exchange.response_ms / 1000
            instruments.child(instruments.duration, route).observe(elapsed)
            if upstream_ms is not None:
                operation = route.rpartition(".")[2]
                upstream = upstream_ms / 1000
                instruments.child(instruments.upstream, operation).observe(upstream)
                instruments.child(instruments.overhead, operation).observe(max(0.0, elapsed - upstream))
        code = exchange.error_code
        if code is not None:
            _count_refusal(instruments, code, exchange.quota_refused)
        elif status == 429 and upstream_ms is not None:
            # The upstream's own 429, passed through (its body may carry any code).
            instruments.child(instruments.upstream_errors, "upstream_rate_limited").inc()
        if exchange.stream:
            operation = route.rpartition(".")[2]
            instruments.child(instruments.streams_in_flight, operation).dec()
            instruments.child(instruments.streams, operation, exchange.outcome).inc()
            stream_code = STREAM_ERROR_CODES.get(exchange.outcome)
            if stream_code is not None:
                instruments.child(instruments.upstream_errors, stream_code).inc()
        if exchange.attempts:
            _count_attempts(instruments, exchange)
        usage = exchange.usage
        if usage is not None:
            caller = exchange.caller
            key_id = caller.id if caller else "unknown"
            instruments.count_tokens(key_id, exchange.model, usage)
            cost = pricer.cost(exchange.model, usage)
            if cost is not None:
                instruments.count_spend(key_id, exchange.model, float(cost))

    return count_request
