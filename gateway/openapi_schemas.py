"""The JSON Schemas of :mod:`gateway.openapi`: request bodies and parameters from the tables
the validators use, and the shapes of the gateway's answers. Pure data, no Flask.

- admin key bodies: :mod:`gateway.store.key_fields` (its field tuples and limits);
- AI request bodies: open objects (the OpenAI shapes are relayed as they are) but for the
  fields the gateway checks (``stream``, ``max_tokens``, ``max_completion_tokens``);
- query parameters: :mod:`gateway.routes.usage`'s and :mod:`gateway.routes.audit`'s tuples,
  with the store's column lengths;
- answers: ``Error`` is the one envelope of :mod:`gateway.errors`; ``RelayedError`` an
  upstream 4xx passed through; ``KeyRecord`` the fields ``KeyRecord.public`` shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway import operations
from gateway.quotas.policy import MAX_TOKENS_FIELDS
from gateway.routes import audit, usage
from gateway.store import audit as store_audit
from gateway.store import key_fields
from gateway.store.tables import ACTOR_LENGTH, KEY_ID_LENGTH, MODEL_LENGTH
from gateway.store.usage_export import COLUMNS as USAGE_CSV_COLUMNS
from gateway.store.usage_report import GROUPINGS

# One rate limit as the limits library writes it ("50 per 15 minutes", "5/second"), or several
# separated by ";" or ",": a guide for clients and generators; the validator has the last word.
_ONE_LIMIT = r"\s*[0-9]+\s*(/|per)\s*([0-9]+\s*)?(second|minute|hour|day|month|year)s?\s*"
RATE_LIMIT_PATTERN = rf"^{_ONE_LIMIT}([;,]{_ONE_LIMIT})*$"
# Printable characters, at least one of them not a space (names are stripped, then checked).
PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Any], required: Iterable[str] = (), closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    required = list(required)
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    return schema


def _key_field_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one settable key field, from the limits its validator uses.

    :raises KeyError: a field in ``SETTABLE_FIELDS`` that this function does not know.
    """
    kf = key_fields
    if name in kf.LIMIT_FIELDS:
        return _nullable(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": kf.LIMIT_STRING_MAX,
                "pattern": RATE_LIMIT_PATTERN,
                "description": 'A rate limit such as "50 per 15 minutes"; null: the gateway\'s default.',
            }
        )
    if name in kf.TOKEN_FIELDS:
        return _nullable(
            {"type": "integer", "minimum": 1, "maximum": kf.TOKEN_COUNT_MAX, "description": "A token count; null: no limit."}
        )
    known: dict[str, dict[str, Any]] = {
        "budget_usd": _nullable(
            {
                "type": ["number", "string"],
                "description": f'USD per period, e.g. 0.01 or "25.50": positive, at most {kf.BUDGET_USD_MAX:,}, '
                f"at most {kf.BUDGET_USD_DECIMALS} decimal places; null: no budget in USD.",
            }
        ),
        "budget_period": _nullable({"enum": list(kf.BUDGET_PERIODS), "description": "The budget's period; null: month."}),
        "budget_reset": _nullable(
            {
                "enum": list(kf.BUDGET_RESETS),
                "description": "calendar: UTC days, weeks from Monday, months from the 1st; rolling: 1, 7 or 30 days "
                "from the key's creation; null: calendar.",
            }
        ),
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": kf.NAME_MAX,
            "pattern": PRINTABLE_PATTERN,
            "description": "Printable characters; surrounding spaces are removed.",
        },
        "metadata": _nullable({"type": "object", "description": f"At most {kf.METADATA_MAX_BYTES} bytes of JSON."}),
        "expires_at": _nullable(
            {"type": "string", "format": "date-time", "description": "ISO 8601 with a timezone, in the future; null: never."}
        ),
        "allowed_models": _nullable(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": kf.MODELS_MAX,
                "items": {"type": "string", "minLength": 1, "maxLength": kf.MODEL_PATTERN_MAX},
                "description": "Model names or glob patterns; null: every model.",
            }
        ),
    }
    return known[name]


def key_fields_schema(*, creating: bool) -> dict[str, Any]:
    """The body of ``POST /admin/keys`` (``creating``) or ``PATCH /admin/keys/{key_id}``."""
    return _object({name: _key_field_schema(name) for name in key_fields.SETTABLE_FIELDS}, required=["name"] if creating else [])


# Fields of an AI request the gateway reads (model lists, token estimates, stream usage) but
# leaves to the upstream to judge: any JSON value, so generators try every kind.
RELAYED_FIELDS_READ = ("model", "messages", "prompt", "input", "instructions", "stream_options")
# Fields the gateway itself checks (gateway.quotas.check_request): a positive integer.
TOKEN_REQUEST_FIELDS = MAX_TOKENS_FIELDS


def relay_body_schema(op: operations.Operation) -> dict[str, Any]:
    """An AI request: any JSON object (the upstream judges it) but for the fields the gateway checks."""
    properties: dict[str, Any] = {name: {} for name in RELAYED_FIELDS_READ}
    properties["stream"] = {"type": "boolean"} if op.streams else {"const": False}
    properties.update({name: _nullable({"type": "integer", "minimum": 1}) for name in TOKEN_REQUEST_FIELDS})
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": True,
        "description": f"The OpenAI request body of {op.upstream_path}, relayed as it is.",
    }


TOKEN_REQUEST = _object({"apiKey": {"type": "string", "minLength": 1}}, required=["apiKey"])

_TIME_PARAMETER: dict[str, Any] = {
    "anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}],
    "description": "ISO 8601 date or time (UTC without an offset), e.g. 2026-11-01T08:00:00Z.",
}
QUERY_PARAMETER_SCHEMAS: dict[str, dict[str, Any]] = {
    "key": {"type": "string", "minLength": 1, "maxLength": KEY_ID_LENGTH},
    "model": {"type": "string", "minLength": 1, "maxLength": MODEL_LENGTH},
    "operation": {"type": "string", "enum": list(operations.BY_NAME)},
    "from": {**_TIME_PARAMETER, "description": _TIME_PARAMETER["description"] + " Inclusive."},
    "to": {**_TIME_PARAMETER, "description": _TIME_PARAMETER["description"] + " Exclusive."},
    "group_by": {
        "type": "string",
        "pattern": rf"^({'|'.join(GROUPINGS)})(,({'|'.join(GROUPINGS)}))*$",
        "description": f"One or more of {', '.join(GROUPINGS)}, separated by commas, each once.",
    },
    "format": {
        "type": "string",
        "enum": list(usage.FORMATS),
        "description": "csv: the raw usage rows as streamed CSV (as Accept: text/csv); not with group_by.",
    },
    "action": {"type": "string", "enum": list(store_audit.ACTIONS)},
    "actor": {"type": "string", "minLength": 1, "maxLength": ACTOR_LENGTH, "description": "master, or the OS user of a CLI change."},
    "via": {"type": "string", "enum": list(store_audit.VIAS)},
    "limit": {"type": "integer", "minimum": 1, "maximum": store_audit.MAX_PAGE, "default": audit.DEFAULT_PAGE},
    "after": {
        "type": "integer",
        "minimum": 0,
        "maximum": audit.CURSOR_MAX,
        "description": "A cursor: the last id of the previous page (next_after).",
    },
    "order": {"type": "string", "enum": list(audit.ORDERS), "default": "asc", "description": "By id: asc is oldest first."},
}
# Endpoints that take query parameters, with the tuples their views check against.
QUERY_PARAMETERS: dict[str, tuple[str, ...]] = {
    "usage_api.own_usage": usage.OWN_PARAMS,
    "admin.usage_report": usage.ADMIN_PARAMS,
    "admin.audit_log": audit.AUDIT_PARAMS,
}

_TIME = {"type": "string", "format": "date-time"}
_COUNT = {"type": "integer", "minimum": 0}
_TOTALS = _object(
    {
        **{name: _COUNT for name in ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")},
        **{name: _COUNT for name in ("reasoning_tokens", "cached_tokens", "estimated_requests", "unpriced_requests")},
        "cost_usd": {"type": ["number", "null"], "description": "USD; null when no row has a cost"},
    },
    required=["requests", "total_tokens", "cost_usd"],
    closed=False,
)


def _key_record() -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "prefix": {"type": "string"},
        "status": {"enum": ["active", "expired", "revoked"]},
        "metadata": {"type": "object"},
        "created_at": _TIME,
        "expires_at": _nullable(_TIME),
        "revoked_at": _nullable(_TIME),
        "allowed_models": _nullable({"type": "array", "items": {"type": "string"}}),
    }
    properties.update({name: _nullable({"type": "string"}) for name in key_fields.LIMIT_FIELDS})
    properties.update({name: _nullable({"type": "integer"}) for name in key_fields.TOKEN_FIELDS})
    properties["budget_usd"] = _nullable({"type": "number", "exclusiveMinimum": 0})
    properties["budget_period"] = _nullable({"enum": list(key_fields.BUDGET_PERIODS)})
    properties["budget_reset"] = _nullable({"enum": list(key_fields.BUDGET_RESETS)})
    return _object(properties, required=list(properties))


def component_schemas() -> dict[str, Any]:
    record = _key_record()
    error_fields = {
        "message": {"type": "string", "minLength": 1},
        "type": {"type": "string", "minLength": 1},
        "code": {"type": ["string", "null"]},
        "param": {"type": ["string", "null"]},
    }
    error = _object({"error": _object(error_fields, required=list(error_fields))}, required=["error"])
    return {
        "Error": error,
        "RelayedError": {
            "description": "The upstream's 4xx answer, passed through unchanged (or the gateway's own Error).",
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "object"}},
        },
        "NotReady": {
            **error,
            "required": ["error", "status", "checks"],
            "properties": {
                **error["properties"],
                "status": {"const": "not_ready"},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "KeyRecord": record,
        "NewKey": {
            **record,
            "required": [*record["required"], "secret"],
            "properties": {**record["properties"], "secret": {"type": "string", "minLength": 1}},
        },
        "KeyList": _object(
            {"object": {"const": "list"}, "data": {"type": "array", "items": ref("KeyRecord")}}, required=["object", "data"]
        ),
        "Token": _object(
            {"token": {"type": "string"}, "token_type": {"const": "Bearer"}, "expires_in": {"type": "integer"}},
            required=["token", "token_type", "expires_in"],
        ),
        "Index": _object(
            {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "authentication": {"type": "object"},
                "openapi": {"type": "string"},
                "endpoints": {
                    "type": "array",
                    "items": {"type": "object", "required": ["method", "path", "auth", "rate_limits", "description"]},
                },
            },
            required=["name", "description", "authentication", "endpoints"],
        ),
        "Health": _object({"status": {"const": "ok"}}, required=["status"]),
        "Ready": _object(
            {"status": {"const": "ready"}, "checks": {"type": "object", "additionalProperties": {"type": "string"}}},
            required=["status", "checks"],
        ),
        "Usage": _object(
            {
                "object": {"const": "usage"},
                "key": {"type": "string"},
                "filters": {"type": "object"},
                "totals": _TOTALS,
                "by_day": {"type": "array"},
                "truncated": {"type": "boolean"},
                "today": _TOTALS,
                "this_month": _TOTALS,
                "limits": {"type": "object"},
                "remaining": {"type": "object"},
            },
            required=["object", "key", "totals", "by_day", "limits"],
        ),
        "UsageReport": _object(
            {
                "object": {"const": "usage.report"},
                "filters": {"type": "object"},
                "group_by": {"type": "array", "items": {"enum": list(GROUPINGS)}},
                "totals": _TOTALS,
                "groups": {"type": ["array", "null"]},
                "truncated": {"type": "boolean"},
                "max_groups": {"type": "integer"},
            },
            required=["object", "totals", "groups"],
        ),
        "UsageCsv": {
            "type": "string",
            "description": "RFC 4180 CSV, UTF-8, streamed: a header line, then one line per usage row matching the "
            "filters, by time. Columns: " + ", ".join(USAGE_CSV_COLUMNS) + ". A text cell starting with = + - @ "
            "(or a tab or carriage return) is prefixed with ' so a spreadsheet never runs it as a formula.",
        },
        "OpenAPI": {"type": "object", "required": ["openapi", "info", "paths"]},
        "RelayedAnswer": {"description": "The upstream's JSON answer, passed through unchanged."},
        "RelayedEvent": {
            "description": "One server-sent event of the upstream's stream (a JSON chunk, or [DONE]); the gateway's "
            "own error event carries the Error shape in its data.",
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "string"}},
        },
    }
