"""One generic relay view per AI operation, served at ``/api/ai/<name>`` and ``/v1/...``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from limits.errors import StorageError

from gateway import extensions, metrics
from gateway.auth import caller_key
from gateway.backends import dispatch
from gateway.backends.config import GatewayConfig
from gateway.body import ai_request_body
from gateway.errors import BadRequest, LimitStorageUnavailable, NotFound, UpstreamError
from gateway.exchange import current
from gateway.operations import ITEM_ID_MAX, OPERATIONS, Operation, item_segment
from gateway.quotas.policy import CLAMPED_HEADER, TokenPlan, caller_policy, check_request
from gateway.quotas.slots import Slot
from gateway.quotas.spend import NOTHING_HELD, CallHold, hold_call
from gateway.upstream import accounting, relay
from gateway.upstream.accounting import StreamUsageTap
from gateway.upstream.streams import RelayLimits

blueprint = Blueprint("ai", __name__)


@dataclass
class ClientCall:
    """A validated AI request: what to send upstream, and how to account for it."""

    body: bytes | None = None  # what goes upstream (final once :meth:`hold_tokens` has run)
    document: dict[str, Any] | None = None
    stream: bool = False
    prompt_estimate: int = 0
    plan: TokenPlan | None = None  # what to hold on the key's token counters
    ask_for_usage: bool = False  # add stream_options.include_usage upstream
    tap: StreamUsageTap | None = None
    clamped: int | None = None  # the completion limit the gateway set upstream (CLAMPED_HEADER)

    def hold_tokens(self) -> CallHold:
        """Reserve the call's tokens (and, on a key with a budget in USD, its most cost), then
        settle what goes upstream, re-encoded once if at all: the completion limit the gateway
        sets (what was held beyond the prompt estimate, the key's cap, or what the budget
        allows) and the stream usage option.

        :raises 429: not even the prompt and a minimal answer fit (``insufficient_quota``).
        :raises 400: a key with a budget names a model without a price (``model_not_priced``).
        """
        if self.plan is None or self.document is None:
            return NOTHING_HELD
        reservation = hold_call(self.plan)
        document = self.document
        self.clamped = reservation.upstream_limit
        if self.clamped is not None and self.plan.limit_field is not None:
            document = {**document, self.plan.limit_field: self.clamped}
        if self.ask_for_usage:
            self.body = accounting.ask_for_stream_usage(document)
        elif document is not self.document:
            self.body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return reservation


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
        current().model = model[:200]
    prompt_estimate = accounting.estimate_prompt_tokens(document)
    # Reservations use a bound on the prompt, never below its real size, so what is held
    # (the bound plus the completion limit set upstream) is never passed when settled.
    plan = check_request(document, accounting.prompt_token_bound(document), op.completion_limit)
    call = ClientCall(body=raw, document=document, stream=stream, prompt_estimate=prompt_estimate, plan=plan)
    if stream:
        asked = op.stream_usage == "always" or accounting.client_asked_for_usage(document)
        call.ask_for_usage = not asked and current_app.config["GATEWAY"].upstream_stream_usage
        call.tap = accounting.StreamUsageTap(strip_usage_chunk=not asked)
    return call


def configured_models(config: GatewayConfig) -> Response:
    """``GET /v1/models`` with a config file: its public model names (glob routes are not
    listed), in OpenAI's list shape, as if a backend had answered it."""
    answer = {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": 0, "owned_by": "gateway"} for name in config.public_models()],
    }
    response = jsonify(answer)
    setattr(response, relay.UPSTREAM_ANSWER, answer)
    return response


def models_for_caller(response: Response, item_id: str | None) -> Response:
    """A listing answer cut to the models the caller's key may use, or with ``item_id``
    the one model of that id as an OpenAI model object (``id``, ``object``, ``created``,
    ``owned_by``). A model the key may not use is answered as if it did not exist.

    :raises 404: no model of that id the key may use (``model_not_found``).
    :raises 502: the upstream's answer has no ``data`` list to look the id up in.
    """
    answer: dict[str, Any] | None = getattr(response, relay.UPSTREAM_ANSWER, None)
    entries = answer.get("data") if answer is not None else None
    if answer is None or not isinstance(entries, list):
        if item_id is None:
            return response
        raise UpstreamError("The AI backend's model list has no 'data' array.", error_code="upstream_invalid_response")
    policy = caller_policy()
    usable = [
        entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("id"), str) and policy.allows_model(entry["id"])
    ]
    if item_id is None:
        return response if len(usable) == len(entries) else jsonify({**answer, "data": usable})
    for entry in usable:
        if entry["id"] == item_id:
            created = entry.get("created")
            return jsonify(
                {
                    **entry,
                    "object": "model",
                    "created": created if isinstance(created, int) and not isinstance(created, bool) else 0,
                    "owned_by": entry.get("owned_by") if isinstance(entry.get("owned_by"), str) else "upstream",
                }
            )
    raise NotFound(
        f"No model {item_id[:200]!r} is available to this key. GET /v1/models lists them.", error_code="model_not_found", param="model"
    )


def item_target(op: Operation, item_id: str) -> tuple[str, str]:
    """(method, upstream path) of a relayed item call: ``GET /responses/<id>`` and the like.

    :raises 400: the id is not one path segment (``invalid_item_id``).
    """
    segment = item_segment(item_id)
    if segment is None:
        raise BadRequest(
            f"The id in {op.upstream_path}/<id> must be one path segment: no '/', at most {ITEM_ID_MAX} characters.",
            param="id",
            error_code="invalid_item_id",
        )
    method = "GET" if request.method == "HEAD" else request.method  # the answer's body is dropped on the way out
    return method, f"{op.upstream_path}/{segment}"


def _view_for(op: Operation) -> Callable[..., Response]:
    def relay_operation(item_id: str | None = None) -> Response:
        exchange = current()
        # An AI request: its record gets one usage row, whatever its outcome (see gateway.usage.rows.row_of).
        exchange.operation = op.name
        exchange.accounted_at = datetime.now(UTC)
        app = current_app._get_current_object()  # type: ignore[attr-defined]  # one context lookup, not one per use
        settings = app.config["GATEWAY"]
        router = extensions.router(app)
        request_quotas = extensions.request_windows(app)
        reservation = NOTHING_HELD
        slot = Slot(None, "", "")  # none held yet; releasing it does nothing
        target = None
        try:
            if item_id is not None and op.relays_items:
                target = item_target(op, item_id)  # no body, no model: no tokens to hold
                call = ClientCall()
            else:
                call = read_request(op)
            reservation = call.hold_tokens()
            slot = extensions.slots(app).acquire(caller_key())
            # Going upstream: the general and the AI quota, in one count.
            request_quotas.hold(ai=True)
        except Exception as error:
            slot.release()
            reservation.settle(None)
            if exchange.quotas_counted is None and not isinstance(error, (StorageError, LimitStorageUnavailable)):
                # Refused before the upstream call (malformed, too large, not allowed, over a
                # token quota, ...): the general quota only. A 429 if that one is full.
                request_quotas.hold(ai=False)
            raise

        def stream_ended(outcome: str) -> None:
            slot.release()
            usage = call.tap.result(call.prompt_estimate) if call.tap else None
            if call.tap and call.tap.model and exchange.trace is not None:
                exchange.trace.response_model = call.tap.model  # gen_ai.response.model: the usage chunk's
            reservation.settle(usage)
            exchange.finish(outcome, usage)  # the record of a stream is finished here, at its end

        def limits_for(deadline: float) -> RelayLimits:
            return RelayLimits(
                deadline, settings.max_response_bytes, settings.max_stream_event_bytes, drain=settings.stream_disconnect == "drain"
            )

        streaming = False
        try:
            if op.lists_items and router.config.from_file:
                response = configured_models(router.config)  # the config file's public names; no backend called
            else:
                response = dispatch.relay(
                    router,
                    op,
                    exchange,
                    call.body,
                    stream=call.stream,
                    limits_for=limits_for,
                    on_stream_end=stream_ended,
                    tap=call.tap,
                    target=target,
                )
            streaming = response.is_streamed
            if streaming:
                exchange.stream = True
                exchange.status = response.status_code  # even if the stream is closed before the response hook
                metrics.stream_opened(op.name)
            if op.lists_items and response.status_code == 200 and not streaming:
                response = models_for_caller(response, item_id)
            if not streaming and response.status_code < 300:
                answer = getattr(response, relay.UPSTREAM_ANSWER, None)
                # A stored item's answer (a retrieved response) repeats usage billed when it was made.
                exchange.usage = accounting.NO_TOKENS if target else accounting.usage_of_answer(answer, call.prompt_estimate)
            if call.clamped is not None:
                response.headers[CLAMPED_HEADER] = str(call.clamped)
            return response
        finally:
            if not streaming:
                slot.release()
                reservation.settle(exchange.usage)

    relay_operation.__name__ = f"relay_{op.name}"
    relay_operation.__qualname__ = f"relay_{op.name}"
    relay_operation.__doc__ = op.summary
    return relay_operation


for _op in OPERATIONS:
    _view = _view_for(_op)
    for _path, _method in _op.routes():
        blueprint.add_url_rule(_path, endpoint=_op.name, view_func=_view, methods=[_method])
