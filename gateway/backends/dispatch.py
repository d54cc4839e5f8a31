"""One AI request through its model's deployments: balancing, retries, fallbacks, deadline.

:func:`relay` sends the request to a deployment of its model's route
(:func:`gateway.backends.balance.start_attempt`: the lowest priority tier with one
available, weighted power of two choices inside it). When the attempt fails before
anything has reached the client, another attempt may follow, if all of these hold:

- the failure is one ``routing.retry_on`` names (``connect``: refused or reset;
  ``timeout``: no connection or no answer in time; a status such as ``429`` or ``503``),
  or an answer cut off before anything reached the client (inside its head, its body,
  or a stream before its first event);
- fewer than ``routing.max_attempts`` attempts were made;
- the wait fits the request's deadline (the first backend's ``timeouts.total``): none
  when another deployment is available (the fallback), else the backend's
  ``Retry-After`` (up to ``retry_after_max``) or an exponential backoff with full jitter;
- the retry budget allows one more (:class:`gateway.backends.budget.RetryBudget`).

Otherwise the failure is answered as a single backend's would be (:mod:`gateway.upstream.relay`).
A stream is read up to its first event before its answer starts (when another attempt
could follow); once the client has a byte, there is no retry: a break ends the stream
with the error event, and the record names the backend that broke.

Every attempt is part of the request's record (:meth:`gateway.exchange.Exchange.attempt`)
and ends its deployment's attempt once (success, failure or no outcome), which is what
the circuit breakers learn from. With tracing on, each attempt has its client span, whose
``traceparent`` is sent with it (:meth:`gateway.tracing.spans.RequestTrace.attempt_started`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import NoReturn

from flask import Response

from gateway.backends.backoff import backoff, retry_after_seconds
from gateway.backends.balance import start_attempt
from gateway.backends.router import Router
from gateway.backends.state import Attempt, DeploymentState, FailureKind
from gateway.errors import BackendsRateLimited, BackendsUnavailable, NotFound, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.exchange import Exchange, UpstreamAttempt
from gateway.operations import Operation
from gateway.upstream import relay as answers
from gateway.upstream.accounting import StreamUsageTap
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.streams import OpenedStream, RelayLimits, StreamEndedEarly, ended_stream, open_stream

# How a stream ended -> what its deployment learns (None: no outcome).
_STREAM_ENDS: dict[str, FailureKind | None] = {
    "upstream_broke_off": "broke_off",
    "upstream_idle_timeout": "timeout",
}
_HEALTHY_ENDS = frozenset({"completed", "client_disconnected"})


def _status_kind(status: int) -> FailureKind | None:
    if status == 429:
        return "status_429"
    if status == 408:
        return "status_408"
    if status >= 500:
        return "status_5xx"
    return None


class _Failed(Exception):
    """An attempt failed before anything reached the client: what to answer if no other follows."""

    def __init__(self, kind: FailureKind, retry_on: str, retry_after: float | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retry_on = retry_on  # its name in routing.retry_on
        self.retry_after = retry_after
        self.upstream: UpstreamResponse | None = None  # a failed answer, relayed if no retry follows
        self.error: Exception | None = None  # or the error to raise
        self.stream_outcome: str | None = None  # or a stream that ended before its first event


def relay(
    router: Router,
    op: Operation,
    exchange: Exchange,
    body: bytes | None,
    *,
    stream: bool,
    limits_for: Callable[[float], RelayLimits],
    on_stream_end: Callable[[str], None],
    tap: StreamUsageTap | None = None,
    target: tuple[str, str] | None = None,
) -> Response:
    """The answer to one AI request (see the module).

    :param limits_for: the relay's limits for a deadline (``time.monotonic()``).
    :param on_stream_end: the view's end of a stream (called once, after the deployment's).
    :param target: (method, upstream path) when not the operation's own (a relayed item,
        ``GET /responses/<id>``).
    :raises 404: no route for the request's model (``model_not_found``), or the request names
        no model and the config file has no catch-all route (``no_catch_all_route``).
    :raises 429: every deployment is rate limited beyond the request's deadline.
    :raises 503: no deployment is available (circuits open, or all at their concurrency cap).
    """
    route = router.route_for(exchange.model)
    if route is None and not exchange.model:
        raise NotFound(
            'This request names no model, so it goes to the catch-all model route ("*") of the config file, and it has none.',
            error_code="no_catch_all_route",
        )
    if route is None:
        raise NotFound(
            f"The model {exchange.model or ''!r} is not served here. GET /v1/models lists the models.",
            error_code="model_not_found",
            param="model",
        )
    routing = router.routing
    sent_to = target or (op.method, op.upstream_path)
    states = router.states(route)
    deadline = time.monotonic() + router.total_timeout(route)
    retries = routing.max_attempts > 1
    if retries:
        router.budget.note_request()
    tried: set[str] = set()
    number = 0
    while True:
        admitted = states[0].start() if len(states) == 1 else start_attempt(states, tried, router.rng)
        if admitted is None:
            # Only pauses a backend asked for (Retry-After) are waited out, within the deadline.
            wait = router.throttled_for(route)
            if wait is None or time.monotonic() + wait >= deadline:
                _refuse(route.name, wait)
            time.sleep(wait)
            admitted = start_attempt(states, tried, router.rng)
            if admitted is None:
                _refuse(route.name, router.throttled_for(route))
        state = admitted.state
        tried.add(state.key)
        record = exchange.attempt(UpstreamAttempt(started=time.perf_counter(), backend=state.backend, model=state.model))
        may_retry = retries and number + 1 < routing.max_attempts
        try:
            response = _attempt(
                router, sent_to, body, exchange, admitted, record, stream, limits_for(deadline), on_stream_end, tap, may_retry
            )
        except _Failed as failure:
            record.outcome = failure.kind
            admitted.failed(failure.kind, failure.retry_after)
            _note_circuit(record, state)
            wait = _retry_wait(router, exchange, states, tried, failure, number, deadline) if may_retry else None
            if wait is None:
                return _answer_failure(failure, stream, limits_for(deadline), on_stream_end, tap)
            if failure.upstream is not None:
                failure.upstream.close()
            if wait > 0:
                time.sleep(wait)
            number += 1
            continue
        except BaseException:
            admitted.released()
            _note_circuit(record, state)
            raise
        if routing.expose_backend_header:
            response.headers["X-Gateway-Backend"] = state.backend
        return response


def _attempt(
    router: Router,
    target: tuple[str, str],
    body: bytes | None,
    exchange: Exchange,
    admitted: Attempt,
    record: UpstreamAttempt,
    stream: bool,
    limits: RelayLimits,
    on_stream_end: Callable[[str], None],
    tap: StreamUsageTap | None,
    may_retry: bool,
) -> Response:
    """One attempt: the answer, or :class:`_Failed` before anything reached the client."""
    state = admitted.state
    client = router.client(state.backend)
    upstream_model = state.model if state.model is not None else exchange.model
    trace = exchange.trace  # tracing on: the attempt's client span, its traceparent sent upstream
    trace_headers = trace.attempt_started(exchange, record, client.config) if trace is not None else None
    try:
        method, path = target
        upstream = client.send(
            method, path, _with_model(body, state.model), exchange.request_id, stream, limits.deadline, upstream_model, trace_headers
        )
    except UpstreamUnavailable as error:
        raise _failed("connect", "connect", error=error) from None
    except UpstreamTimeout as error:
        raise _failed("timeout", "timeout", error=error) from None
    except UpstreamError as error:
        if error.error_code != "upstream_incomplete":
            raise
        # The connection closed inside the answer's head (the backend died mid-answer):
        # nothing reached the client, so it is retried like a body cut short below.
        raise _failed("broke_off", "", error=error) from None
    finally:
        record.duration_ms = (time.perf_counter() - record.started) * 1000
    status = upstream.status_code
    kind = _status_kind(status)
    if kind is not None:
        failure = _failed(kind, str(status))
        failure.upstream = upstream
        after = retry_after_seconds(upstream.headers)
        failure.retry_after = min(after, router.routing.retry_after_max) if after is not None else None
        raise failure
    opened: OpenedStream | None = None
    if answers.is_stream(upstream, stream):
        idle = client.config.idle_timeout
        if may_retry or idle is not None:
            try:
                opened = open_stream(upstream, limits, tap)
            except StreamEndedEarly as early:
                upstream.close()
                failure = _failed("timeout" if early.outcome == "upstream_idle_timeout" else "broke_off", "")
                failure.stream_outcome = early.outcome
                raise failure from None
            if idle is not None:
                upstream.set_read_timeout(idle)
        record.outcome = "ok"
        latency = record.duration_ms / 1000 if record.duration_ms is not None else None

        def stream_ended(outcome: str) -> None:
            if outcome in _HEALTHY_ENDS:
                admitted.succeeded(latency)
            elif (failure_kind := _STREAM_ENDS.get(outcome)) is not None:
                record.outcome = failure_kind
                admitted.failed(failure_kind)
            else:
                admitted.released()
            _note_circuit(record, state)
            on_stream_end(outcome)

        return answers.to_response(
            upstream,
            wants_stream=True,
            limits=limits,
            on_stream_end=stream_ended,
            tap=tap,
            opened=opened,
        )
    try:
        response = answers.to_response(upstream, wants_stream=stream, limits=limits, on_stream_end=on_stream_end, tap=tap)
    except UpstreamTimeout as error:
        raise _failed("timeout", "timeout", error=error) from None
    except UpstreamError as error:
        if error.error_code == "upstream_incomplete":
            raise _failed("broke_off", "", error=error) from None
        admitted.failed("status_5xx")  # the backend answered something no client can use
        record.outcome = error.error_code or "upstream_error"
        _note_circuit(record, state)
        raise
    record.outcome = "ok"
    admitted.succeeded(record.duration_ms / 1000 if record.duration_ms is not None else None)
    _note_circuit(record, state)
    return response


def _note_circuit(record: UpstreamAttempt, state: DeploymentState) -> None:
    """The deployment's circuit once the attempt ended, for the metrics (when it has a breaker)."""
    if state.breaker_enabled:
        record.circuit = state.circuit


def _failed(kind: FailureKind, retry_on: str, error: Exception | None = None) -> _Failed:
    failure = _Failed(kind, retry_on)
    failure.error = error
    return failure


def _with_model(body: bytes | None, model: str | None) -> bytes | None:
    """The request body with the deployment's model name, when it has its own."""
    if body is None or model is None:
        return body
    document = json.loads(body)
    if document.get("model") == model:
        return body
    document["model"] = model
    return json.dumps(document, ensure_ascii=False).encode()


def _retry_wait(
    router: Router, exchange: Exchange, states: list[DeploymentState], tried: set[str], failure: _Failed, number: int, deadline: float
) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` when none follows (see the module)."""
    routing = router.routing
    if failure.kind != "broke_off" and failure.retry_on not in routing.retry_on:
        return None
    now = time.monotonic()
    if any(state.key not in tried and state.available(now) for state in states):
        wait = 0.0  # the fallback: another deployment, at once
    elif failure.retry_after is not None:
        wait = failure.retry_after  # the same one, when it said it would take requests again
    else:
        wait = backoff(number, routing.backoff_base, routing.backoff_max, router.rng)
    if now + wait >= deadline:
        return None
    if not router.budget.try_retry():
        exchange.retry_budget_exhausted = True
        return None
    return wait


def _answer_failure(
    failure: _Failed, stream: bool, limits: RelayLimits, on_stream_end: Callable[[str], None], tap: StreamUsageTap | None
) -> Response:
    """The client's answer to the last failed attempt, as a single backend's would be."""
    if failure.upstream is not None:
        return answers.to_response(failure.upstream, wants_stream=stream, limits=limits, on_stream_end=on_stream_end, tap=tap)
    if failure.stream_outcome is not None:
        return ended_stream(failure.stream_outcome, on_stream_end)
    assert failure.error is not None
    raise failure.error


def _refuse(model: str, wait: float | None) -> NoReturn:
    """No deployment of ``model`` can take the request within its deadline."""
    headers = {"Retry-After": str(max(1, math.ceil(wait if wait is not None else 1.0)))}
    if wait is not None:
        raise BackendsRateLimited(
            f"Every backend of model {model!r} is rate limited beyond this request's deadline; retry later.", headers=headers
        )
    raise BackendsUnavailable(f"No backend of model {model!r} is available now; retry later.", headers=headers)
