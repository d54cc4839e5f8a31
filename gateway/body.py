"""Reading the request body within ``MAX_REQUEST_BYTES``, and JSON object bodies.

The WSGI server decodes ``Transfer-Encoding: chunked`` while the app reads, so broken
framing (a chunk size such as ``zz``, a missing CRLF, a bad chunk extension or
trailer) or a body that ends early is raised in the middle of the view: gunicorn
raises its ``ParseException`` subclasses or ``NoMoreData`` (an ``OSError``),
Werkzeug's development server an ``OSError``. Anyone can send such a body, even to
``POST /auth/token``, so it is a 400 (:class:`~gateway.errors.MalformedBody`), never
a 500 with a logged traceback.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import RequestEntityTooLarge

from gateway import payload
from gateway.errors import BadRequest, MalformedBody, UnsupportedMediaType

# What reading a broken or cut-short body raises (see the module docstring).
_UNREADABLE = (OSError, ParseException)


def request_body() -> bytes:
    """The request body, within ``MAX_CONTENT_LENGTH``.

    :raises 413: the body is larger, whether it declared a length or came chunked.
    :raises 400: the body's framing is broken or it ended early (``malformed_body``).
    """
    req = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup
    try:
        data = req.get_data(cache=False)
        return payload.read_limited(req.environ, data, current_app.config["MAX_CONTENT_LENGTH"])
    except payload.BodyTooLarge:
        raise RequestEntityTooLarge() from None
    except _UNREADABLE:
        raise MalformedBody() from None


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


def ai_request_body() -> tuple[bytes, dict[str, Any]]:
    """:func:`json_object_body`, for an AI operation: the fields the gateway reads are checked too.

    :raises 400: as :func:`json_object_body`, or a bad ``model`` or ``messages``
        (:func:`gateway.payload.check_ai_fields`; ``param`` names the field).
    """
    raw, document = json_object_body()
    try:
        payload.check_ai_fields(document)
    except payload.InvalidField as error:
        raise BadRequest(str(error), param=error.param, error_code=error.code) from None
    return raw, document
