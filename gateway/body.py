"""Reading the request body within ``MAX_REQUEST_BYTES``, and JSON object bodies."""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from gateway import payload
from gateway.errors import BadRequest, UnsupportedMediaType


def request_body() -> bytes:
    """The request body, within ``MAX_CONTENT_LENGTH``.

    :raises 413: the body is larger, whether it declared a length or came chunked.
    """
    req = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup
    data = req.get_data(cache=False)
    try:
        return payload.read_limited(req.environ, data, current_app.config["MAX_CONTENT_LENGTH"])
    except payload.BodyTooLarge:
        raise RequestEntityTooLarge() from None


def json_object_body() -> tuple[bytes, dict[str, Any]]:
    """The body as sent and parsed, for endpoints that take a JSON object.

    :raises 415: not declared as JSON.
    :raises 413: larger than ``MAX_REQUEST_BYTES``.
    :raises 400: not a strict JSON object (see :func:`gateway.payload.parse_object`).
    """
    if not payload.is_json_content_type(request.content_type):
        raise UnsupportedMediaType()
    raw = request_body()
    try:
        return raw, payload.parse_object(raw)
    except payload.PayloadError as error:
        raise BadRequest(str(error)) from None
