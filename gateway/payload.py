"""Request bodies: strict JSON objects. Pure code, no Flask.

Python's ``json`` accepts things an API must not: ``NaN``/``Infinity``, duplicate
keys (a parser differential with the upstream), and it turns deep nesting into a
``RecursionError``. :func:`parse_object` refuses all of them with a
:class:`PayloadError` whose message is safe to show the client.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


class PayloadError(ValueError):
    """The body is not an acceptable JSON object; the message says why."""


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"Invalid JSON: {name} is not allowed.")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise PayloadError("Invalid JSON: duplicate keys in an object.")
    return obj


_decoder = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values() if isinstance(child, (dict, list)))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return False


def parse_object(raw: bytes) -> dict[str, Any]:
    """Parse ``raw`` as one JSON object.

    :raises PayloadError: empty, not UTF-8, not JSON, not an object, or nested
        deeper than :data:`MAX_DEPTH`.
    """
    if not raw.strip():
        raise PayloadError("The request body is empty; send a JSON object.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("The request body is not valid UTF-8.") from None
    try:
        value = _decoder.decode(text)
    except PayloadError:
        raise
    except RecursionError:
        raise PayloadError(f"Invalid JSON: nested deeper than {MAX_DEPTH} levels.") from None
    except ValueError as error:  # JSONDecodeError, and int() beyond the digit limit
        raise PayloadError(f"Invalid JSON: {error}.") from None
    if not isinstance(value, dict):
        raise PayloadError("The request body must be a JSON object.")
    if _depth_exceeds(value, MAX_DEPTH):
        raise PayloadError(f"Invalid JSON: nested deeper than {MAX_DEPTH} levels.")
    return value


class BodyTooLarge(PayloadError):
    """The body is larger than the configured limit."""


def read_limited(environ: dict[str, Any], data: bytes, limit: int | None) -> bytes:
    """Check that a body read under a size limit was not silently cut short.

    Werkzeug refuses a too-large ``Content-Length`` up front, but a chunked body is
    read through a stream that simply stops at the limit. If the body filled the
    limit and more bytes follow, it was too large.

    :raises BodyTooLarge: more than ``limit`` bytes were sent.
    """
    if limit is not None and len(data) >= limit and environ.get("CONTENT_LENGTH") in (None, ""):
        stream = environ.get("wsgi.input")
        if stream is not None and stream.read(1):
            raise BodyTooLarge("The request body is too large.")
    return data


def is_json_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    mimetype = content_type.split(";", 1)[0].strip().lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))
