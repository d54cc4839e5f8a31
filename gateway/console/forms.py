"""A key's form fields, turned into the document the admin API takes. Pure: no Flask.

The console's forms post text; :func:`key_document` turns it into the JSON-like
document ``POST``/``PATCH /admin/keys`` accept, and :class:`gateway.auth.management.KeyAdmin`
validates it with the same code as the API and ``flask keys``
(:func:`gateway.store.key_fields.parse_changes`): what is refused there is refused here,
with the same message. An empty field means the gateway's default (``null``); when
creating, empty fields are left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gateway.store.key_fields import BUDGET_FIELDS, LIMIT_FIELDS, TOKEN_FIELDS, FieldError

TEXT_FIELDS = ("name", *LIMIT_FIELDS, "budget_usd", "budget_period", "budget_reset")
FORM_FIELDS = ("name", "expires_at", "allowed_models", "metadata", *LIMIT_FIELDS, *TOKEN_FIELDS, *BUDGET_FIELDS)


def _integer(raw: str) -> int | str:
    """Digits become a number; anything else is passed on for the validator to refuse by name."""
    return int(raw) if raw.isascii() and raw.isdigit() else raw


def _expiry(raw: str) -> str:
    """``datetime-local`` inputs have no offset: the form says UTC, so the value is UTC."""
    if len(raw) in (16, 19) and raw[10:11] == "T" and raw[-1:].isdigit():
        return raw + "Z"
    return raw


def _models(raw: str) -> list[str]:
    return [part.strip() for part in raw.replace("\n", ",").split(",") if part.strip()]


def _metadata(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise FieldError("metadata", '\'metadata\' must be a JSON object, e.g. {"team": "web"}.') from None


def key_document(form: Mapping[str, str], *, creating: bool) -> dict[str, Any]:
    """The admin API's document for a key form. :raises FieldError: metadata is not JSON."""
    document: dict[str, Any] = {}
    for name in FORM_FIELDS:
        if name not in form:
            continue
        raw = form[name].strip()
        if not raw:
            if not creating and name != "name":
                document[name] = {} if name == "metadata" else None
            continue
        if name in TOKEN_FIELDS:
            document[name] = _integer(raw)
        elif name == "expires_at":
            document[name] = _expiry(raw)
        elif name == "allowed_models":
            document[name] = _models(raw)
        elif name == "metadata":
            document[name] = _metadata(raw)
        else:
            document[name] = raw
    return document


def form_values(public: Mapping[str, Any]) -> dict[str, str]:
    """A key as :meth:`gateway.store.keys.KeyRecord.public` shows it, as the edit form's values."""
    values: dict[str, str] = {}
    for name in FORM_FIELDS:
        value = public.get(name)
        if value is None:
            values[name] = ""
        elif name == "allowed_models":
            values[name] = ", ".join(value)
        elif name == "metadata":
            values[name] = json.dumps(value) if value else ""
        elif name == "expires_at":
            values[name] = str(value)[:19]  # ISO 8601 in UTC, as datetime-local wants it
        elif name == "budget_usd":
            values[name] = f"{value:f}".rstrip("0").rstrip(".")
        else:
            values[name] = str(value)
    return values
