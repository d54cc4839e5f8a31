"""Request bodies: strict JSON objects, and the one rule for text the gateway keeps. Pure code, no Flask.

Python's ``json`` accepts things an API must not: ``NaN``/``Infinity``, duplicate
keys (a parser differential with the upstream), lone UTF-16 surrogates (``"\\ud800"``
is valid JSON but not Unicode text: it cannot be encoded as UTF-8, so hashing,
storing or logging it fails), and it turns deep nesting into a ``RecursionError``.
:func:`parse_object` refuses all of them with a :class:`PayloadError` whose message
is safe to show the client.

**Text the gateway stores or uses as a key** (a request's ``model``, a managed key's
name, metadata, model patterns and limits, usage report filters) must also be free of
NUL: PostgreSQL refuses NUL in text, and one such value used to fail a whole batch
of usage rows. Such fields are checked with :func:`is_storable_text` where they are
read, and refused with a 400 naming the field. Text the gateway did not get from the
client (the upstream's answer) is made storable with :func:`storable_text` instead:
the client did nothing wrong. Prompt text is neither stored nor keyed on, so a NUL
in it is the upstream's business.
"""

from __future__ import annotations

import json
import re
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


# A JSON escape of a UTF-16 surrogate (\uD800-\uDFFF). Only such an escape can put a
# surrogate in a parsed string (UTF-8 cannot encode one), so only a body that holds one
# has its strings searched. Telling pairs from lone escapes in the text instead would
# have to get escaped backslashes right ("\\ud800\udc00" ends in a lone one): not worth it.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_HINT = "must not contain NUL characters or lone UTF-16 surrogates"


def is_storable_text(value: str) -> bool:
    """Whether ``value`` is Unicode text that any database can store: no NUL, no lone surrogate."""
    return _UNSTORABLE.search(value) is None


def storable_text(value: str) -> str:
    """``value`` with each NUL and lone surrogate replaced by U+FFFD (for text not from the client)."""
    return _UNSTORABLE.sub("\ufffd", value) if _UNSTORABLE.search(value) else value


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)  # the keys
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_object(raw: bytes) -> dict[str, Any]:
    """Parse ``raw`` as one JSON object.

    :raises PayloadError: empty, not UTF-8, not JSON, not an object, nested deeper
        than :data:`MAX_DEPTH`, or holding a lone UTF-16 surrogate anywhere.
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
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise PayloadError(
            "Invalid JSON: a string holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape "
            "without its pair); send valid Unicode text."
        )
    return value


class InvalidField(PayloadError):
    """One field of a body is unacceptable: ``param`` names it, ``code`` is the error code."""

    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def check_ai_fields(document: dict[str, Any]) -> None:
    """Check the fields of an AI request that the gateway itself reads (the rest is the upstream's).

    - ``model`` is stored in usage rows and matched against a key's models: a string
      must be storable text (:func:`is_storable_text`).
    - ``messages`` is walked for the prompt-size estimate: when present, an array.

    :raises InvalidField: naming the field.
    """
    model = document.get("model")
    if isinstance(model, str) and not is_storable_text(model):
        raise InvalidField("model", f"'model' {UNSTORABLE_HINT}.")
    messages = document.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise InvalidField("messages", "'messages' must be an array of message objects.", "invalid_type")


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
