"""Validation of a managed key's settable fields. Pure code: no Flask, no database.

The admin API (``POST``/``PATCH /admin/keys``) and the ``flask keys`` commands both
pass what they were given through :func:`parse_changes`, so both accept and refuse
exactly the same things. Messages are safe to show the caller.

Every string stored (name, metadata keys and values, model patterns, limits) must be
storable text (:func:`gateway.payload.is_storable_text`: no NUL, no lone surrogate;
a command-line argument that is not valid UTF-8 arrives with lone surrogates), and
rate limits are held to :func:`gateway.config.parse_rate_limit`'s bounds.

``budget_usd`` is a budget in US dollars per period: a positive decimal (a JSON number
or a string such as ``"0.01"``) of at most :data:`BUDGET_USD_MAX` with at most
:data:`BUDGET_USD_DECIMALS` decimal places, so it is exact in every database (SQLite keeps
a double: 15 significant digits) and in the nano-dollar counters
(:mod:`gateway.quotas.spend`). ``budget_period`` (``day``, ``week``, ``month``; null:
``month``) and ``budget_reset`` (``calendar``, ``rolling``; null: ``calendar``) say
when it starts again.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.config import RATE_LIMIT_BOUNDS, parse_rate_limit
from gateway.payload import UNSTORABLE_HINT, is_storable_text

NAME_MAX = 200
METADATA_MAX_BYTES = 4096
MODELS_MAX = 100
MODEL_PATTERN_MAX = 200
LIMIT_STRING_MAX = 100
TOKEN_COUNT_MAX = 10**15
BUDGET_USD_MAX = Decimal(10**9)
BUDGET_USD_DECIMALS = 6
BUDGET_PERIODS = ("day", "week", "month")
BUDGET_RESETS = ("calendar", "rolling")

LIMIT_FIELDS = ("rate_limit_general", "rate_limit_ai")
TOKEN_FIELDS = ("tokens_per_minute", "tokens_per_day", "budget_tokens_day", "budget_tokens_month", "max_tokens_cap")
BUDGET_FIELDS = ("budget_usd", "budget_period", "budget_reset")
SETTABLE_FIELDS = ("name", "metadata", "expires_at", "allowed_models", *LIMIT_FIELDS, *TOKEN_FIELDS, *BUDGET_FIELDS)


class FieldError(ValueError):
    """One invalid field: ``param`` names it, the message says what is accepted."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _storable(param: str, value: str) -> str:
    if not is_storable_text(value):
        raise FieldError(param, f"'{param}' {UNSTORABLE_HINT}.")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FieldError("name", "'name' must be a non-empty string.")
    name = _storable("name", value.strip())
    if len(name) > NAME_MAX or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise FieldError("name", f"'name' must be at most {NAME_MAX} printable characters.")
    return name


def _strings_of(value: Any) -> list[str]:
    """Every string in a JSON value: object keys included."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError("metadata", "'metadata' must be a JSON object.")
    if len(json.dumps(value, separators=(",", ":")).encode()) > METADATA_MAX_BYTES:
        raise FieldError("metadata", f"'metadata' must be at most {METADATA_MAX_BYTES} bytes of JSON.")
    for text in _strings_of(value):
        _storable("metadata", text)
    return value


def parse_timestamp(value: str) -> datetime:
    """An ISO 8601 timestamp with a timezone, as aware UTC.

    :raises ValueError: not ISO 8601, without a timezone, or outside the years 1 to 9999
        in UTC (``9999-12-31T23:59:59-14:00``, ``0001-01-01T00:00:00+01:00``).
    """
    parsed = datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        raise ValueError("no timezone")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("outside the years 1 to 9999 in UTC") from None


def _expires_at(value: Any, now: datetime) -> datetime | None:
    if value is None:
        return None
    message = "'expires_at' must be null or an ISO 8601 time with a timezone, e.g. 2030-01-31T00:00:00Z."
    if not isinstance(value, str):
        raise FieldError("expires_at", message)
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        raise FieldError("expires_at", message) from None
    if parsed <= now:
        raise FieldError("expires_at", "'expires_at' must be in the future (revoke a key to stop it now).")
    return parsed


def _allowed_models(value: Any) -> list[str] | None:
    if value is None:
        return None
    message = (
        f"'allowed_models' must be null (every model) or a list of 1 to {MODELS_MAX} model names or "
        f'glob patterns such as "gpt-4o*", each at most {MODEL_PATTERN_MAX} characters.'
    )
    if not isinstance(value, list) or not 1 <= len(value) <= MODELS_MAX:
        raise FieldError("allowed_models", message)
    patterns = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > MODEL_PATTERN_MAX:
            raise FieldError("allowed_models", message)
        patterns.append(_storable("allowed_models", item.strip()))
    return list(dict.fromkeys(patterns))


def _rate_limit(param: str, value: Any) -> str | None:
    if value is None:
        return None
    message = f"'{param}' must be null (the gateway's default) or a rate limit such as \"50 per 15 minutes\" ({RATE_LIMIT_BOUNDS})."
    if not isinstance(value, str) or len(value) > LIMIT_STRING_MAX or not is_storable_text(value):
        raise FieldError(param, message)
    try:
        parse_rate_limit(value)
    except ValueError:
        raise FieldError(param, message) from None
    return value.strip()


def _token_count(param: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= TOKEN_COUNT_MAX:
        raise FieldError(param, f"'{param}' must be null (the gateway's default) or a positive integer.")
    return value


def _budget_usd(value: Any) -> Decimal | None:
    if value is None:
        return None
    message = (
        f"'budget_usd' must be null (no budget) or a positive amount in USD of at most {BUDGET_USD_MAX:,} "
        f'with at most {BUDGET_USD_DECIMALS} decimal places, e.g. 0.01 or "25.50".'
    )
    if isinstance(value, bool) or not isinstance(value, int | float | str) or (isinstance(value, str) and len(value) > 40):
        raise FieldError("budget_usd", message)
    try:
        # A float by its shortest repr (0.01, not 0.01000000000000000020816...).
        amount = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise FieldError("budget_usd", message) from None
    if not amount.is_finite() or not 0 < amount <= BUDGET_USD_MAX:
        raise FieldError("budget_usd", message)
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -BUDGET_USD_DECIMALS:
        raise FieldError("budget_usd", message)
    return amount


def _choice(param: str, value: Any, choices: tuple[str, ...], default: str) -> str | None:
    if value is None:
        return None
    if value not in choices:
        raise FieldError(param, f"'{param}' must be null ({default}) or one of: {', '.join(choices)}.")
    return str(value)


def parse_changes(document: dict[str, Any], *, creating: bool, now: datetime) -> dict[str, Any]:
    """Validate the settable fields in ``document``; return them normalised.

    ``null`` resets a field to the gateway's default (``metadata`` to ``{}``);
    ``name`` is required when creating and cannot be null. Unknown fields are
    refused rather than ignored, so a typo never silently leaves a limit unset.

    :raises FieldError: for the first invalid or unknown field.
    """
    for param in document:
        if param not in SETTABLE_FIELDS:
            raise FieldError(param, f"Unknown field '{param}'. Settable fields: {', '.join(SETTABLE_FIELDS)}.")
    if creating and "name" not in document:
        raise FieldError("name", "'name' is required.")
    changes: dict[str, Any] = {}
    for param, value in document.items():
        if param == "name":
            changes[param] = _name(value)
        elif param == "metadata":
            changes[param] = _metadata(value)
        elif param == "expires_at":
            changes[param] = _expires_at(value, now)
        elif param == "allowed_models":
            changes[param] = _allowed_models(value)
        elif param in LIMIT_FIELDS:
            changes[param] = _rate_limit(param, value)
        elif param == "budget_usd":
            changes[param] = _budget_usd(value)
        elif param == "budget_period":
            changes[param] = _choice(param, value, BUDGET_PERIODS, "month")
        elif param == "budget_reset":
            changes[param] = _choice(param, value, BUDGET_RESETS, "calendar")
        else:
            changes[param] = _token_count(param, value)
    if creating:
        changes.setdefault("metadata", {})
    return changes
