"""Reading the request body within ``MAX_REQUEST_BYTES``."""

from __future__ import annotations

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from gateway import payload


def request_body() -> bytes:
    """The request body, within ``MAX_CONTENT_LENGTH``.

    :raises 413: the body is larger, whether it declared a length or came chunked.
    """
    data = request.get_data(cache=False)
    try:
        return payload.read_limited(request.environ, data, current_app.config["MAX_CONTENT_LENGTH"])
    except payload.BodyTooLarge:
        raise RequestEntityTooLarge() from None
