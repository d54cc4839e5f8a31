"""One generic relay view per AI operation, served at ``/api/ai/<name>`` and ``/v1/...``."""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Blueprint, Response, current_app, g, request

from gateway import observability, payload
from gateway.errors import BadRequest, UnsupportedMediaType
from gateway.operations import OPERATIONS, Operation
from gateway.upstream import relay
from gateway.upstream.client import UpstreamClient
from gateway.usage import account_request, on_stream_end

blueprint = Blueprint("ai", __name__)


def read_request(op: Operation) -> tuple[bytes | None, bool]:
    """Validate the client's body; return the bytes to forward and whether to stream.

    :raises 415: the body is not declared as JSON.
    :raises 413: the body is larger than ``MAX_REQUEST_BYTES``.
    :raises 400: not a JSON object, or ``stream`` is not a boolean.
    """
    if not op.has_body:
        return None, False
    if not payload.is_json_content_type(request.content_type):
        raise UnsupportedMediaType()
    raw = request.get_data(cache=False)
    try:
        document = payload.parse_object(raw)
    except payload.PayloadError as error:
        raise BadRequest(str(error)) from None
    stream = document.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.", param="stream", error_code="invalid_type")
    if stream and not op.streams:
        raise BadRequest(f"The {op.name} operation does not stream.", param="stream")
    model = document.get("model")
    if isinstance(model, str):
        g.model = model[:200]
    return raw, stream


def _view_for(op: Operation) -> Callable[[], Response]:
    def relay_operation() -> Response:
        account_request(op.name)  # a usage row is written for this request, whatever its outcome
        body, stream = read_request(op)
        settings = current_app.config["GATEWAY"]
        client: UpstreamClient = current_app.extensions["gateway.upstream"]
        started = time.perf_counter()
        upstream = client.send(op.method, op.upstream_path, body, g.request_id, stream)
        limits = relay.RelayLimits(
            deadline=time.monotonic() + settings.upstream_total_timeout,
            max_bytes=settings.max_response_bytes,
        )
        try:
            return relay.to_response(upstream, wants_stream=stream, limits=limits,
                                     on_stream_end=on_stream_end(observability.stream_logger(), started))
        finally:
            g.upstream_ms = (time.perf_counter() - started) * 1000

    relay_operation.__name__ = f"relay_{op.name}"
    relay_operation.__qualname__ = f"relay_{op.name}"
    relay_operation.__doc__ = op.summary
    return relay_operation


for _op in OPERATIONS:
    _view = _view_for(_op)
    for _path in _op.gateway_paths:
        blueprint.add_url_rule(_path, endpoint=_op.name, view_func=_view, methods=[_op.method])
