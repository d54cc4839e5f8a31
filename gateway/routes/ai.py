"""One generic relay view per AI operation, served at ``/api/ai/<name>`` and ``/v1/...``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, g

from gateway import metrics, observability, quotas
from gateway.auth import caller_key
from gateway.body import ai_request_body
from gateway.errors import BadRequest
from gateway.operations import OPERATIONS, Operation
from gateway.upstream import accounting, relay
from gateway.upstream.accounting import StreamUsageTap
from gateway.upstream.client import UpstreamClient
from gateway.usage import account_request, on_stream_end

blueprint = Blueprint("ai", __name__)


@dataclass
class ClientCall:
    """A validated AI request: what to send upstream, and how to account for it."""

    body: bytes | None = None
    stream: bool = False
    prompt_estimate: int = 0
    reserve: int = 0  # tokens to hold against the key's token quotas
    reserve_is_guess: bool = True  # no max_tokens: may hold less when less is left
    tap: StreamUsageTap | None = None


def read_request(op: Operation) -> ClientCall:
    """Validate the client's body and decide what goes upstream.

    A stream whose client did not ask for usage gets ``stream_options.include_usage``
    upstream (``UPSTREAM_STREAM_USAGE``), and the usage chunk is removed on the way back.

    :raises 415: the body is not declared as JSON.
    :raises 413: the body is larger than ``MAX_REQUEST_BYTES``.
    :raises 400: not a JSON object, ``stream`` is not a boolean, or a bad ``model`` or ``messages``.
    """
    if not op.has_body:
        return ClientCall()
    raw, document = ai_request_body()
    stream = document.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.", param="stream", error_code="invalid_type")
    if stream and not op.streams:
        raise BadRequest(f"The {op.name} operation does not stream.", param="stream")
    model = document.get("model")
    if isinstance(model, str):
        g.model = model[:200]
    prompt_estimate = accounting.estimate_prompt_tokens(document)
    reserve, guess = quotas.check_request(document, prompt_estimate)
    call = ClientCall(body=raw, stream=stream, prompt_estimate=prompt_estimate, reserve=reserve,
                      reserve_is_guess=guess)
    if stream:
        asked = accounting.client_asked_for_usage(document)
        if not asked and current_app.config["GATEWAY"].upstream_stream_usage:
            call.body = accounting.ask_for_stream_usage(document)
        call.tap = accounting.StreamUsageTap(strip_usage_chunk=not asked)
    return call


def _view_for(op: Operation) -> Callable[[], Response]:
    def relay_operation() -> Response:
        account_request(op.name)  # a usage row is written for this request, whatever its outcome
        call = read_request(op)
        app = current_app._get_current_object()  # type: ignore[attr-defined]  # one context lookup, not one per use
        ctx = g._get_current_object()
        settings = app.config["GATEWAY"]
        client: UpstreamClient = app.extensions["gateway.upstream"]
        reservation = quotas.reserve_tokens(call.reserve, call.reserve_is_guess) if call.reserve else quotas.NO_RESERVATION
        try:
            slot = app.extensions["gateway.inflight"].acquire(caller_key())
        except Exception:
            reservation.settle(0)
            raise
        started = time.perf_counter()
        # Only a stream outlives the request: its log line, usage row and metrics are made when it ends.
        log_and_record = (metrics.on_stream_end(on_stream_end(observability.stream_logger(), started))
                          if call.stream else None)

        def stream_ended(outcome: str) -> None:
            slot.release()
            usage = call.tap.result(call.prompt_estimate) if call.tap else None
            reservation.settle(usage.total_tokens if usage else 0)
            if log_and_record is not None:
                log_and_record(outcome, usage)

        streaming = False
        try:
            upstream = client.send(op.method, op.upstream_path, call.body, ctx.request_id, call.stream)
            limits = relay.RelayLimits(
                deadline=time.monotonic() + settings.upstream_total_timeout,
                max_bytes=settings.max_response_bytes,
            )
            response = relay.to_response(upstream, wants_stream=call.stream, limits=limits,
                                         on_stream_end=stream_ended, tap=call.tap)
            streaming = response.is_streamed
            if not streaming and response.status_code < 300:
                ctx.usage = accounting.usage_of_answer(getattr(response, "upstream_answer", None), call.prompt_estimate)
            return response
        finally:
            ctx.upstream_ms = (time.perf_counter() - started) * 1000
            if not streaming:
                slot.release()
                usage = ctx.get("usage")
                reservation.settle(usage.total_tokens if usage else 0)

    relay_operation.__name__ = f"relay_{op.name}"
    relay_operation.__qualname__ = f"relay_{op.name}"
    relay_operation.__doc__ = op.summary
    return relay_operation


for _op in OPERATIONS:
    _view = _view_for(_op)
    for _path in _op.gateway_paths:
        blueprint.add_url_rule(_path, endpoint=_op.name, view_func=_view, methods=[_op.method])
