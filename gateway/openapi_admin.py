"""OpenAPI schemas of the admin answers about backends, prices and the audit log
(:mod:`gateway.openapi` adds them to :func:`gateway.openapi_schemas.component_schemas`)."""

from __future__ import annotations

from typing import Any

from gateway.openapi_schemas import _TIME, _object, ref
from gateway.store import audit as store_audit

_PRICE = {"type": "number", "minimum": 0, "description": "USD per million tokens"}


def schemas() -> dict[str, Any]:
    return {
        "AuditEntry": _object(
            {
                "id": {"type": "integer"},
                "object": {"const": "audit.entry"},
                "ts": _TIME,
                "action": {"enum": list(store_audit.ACTIONS)},
                "key_id": {"type": "string"},
                "actor": {"type": "string"},
                "via": {"enum": list(store_audit.VIAS)},
                "address": {"type": "string"},
                "request_id": {"type": ["string", "null"]},
                "before": {"type": ["object", "null"], "description": "The changed fields before (null: create, rotate)."},
                "after": {"type": ["object", "null"], "description": "The changed fields after (null: rotate)."},
            },
            required=["id", "object", "ts", "action", "key_id", "actor", "via", "address", "request_id", "before", "after"],
        ),
        "AuditList": _object(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("AuditEntry")},
                "has_more": {"type": "boolean"},
                "next_after": {"type": ["integer", "null"], "description": "Pass as after for the next page."},
            },
            required=["object", "data", "has_more", "next_after"],
        ),
        "Backends": _object(
            {
                "object": {"const": "list"},
                "worker_pid": {"type": "integer"},
                "source": {"type": "string"},
                "retry_budget": {"type": "object"},
                "data": {
                    "type": "array",
                    "items": _object(
                        {
                            "route": {"type": "string"},
                            "backend": {"type": "string"},
                            "model": {"type": ["string", "null"]},
                            "circuit": {"enum": ["closed", "open", "half_open"]},
                            "in_flight": {"type": "integer"},
                            "error_ratio": {"type": "number"},
                            "latency_s": {"type": ["number", "null"]},
                        },
                        required=["route", "backend", "circuit", "in_flight", "error_ratio"],
                        closed=False,
                    ),
                },
            },
            required=["object", "worker_pid", "data"],
        ),
        "Prices": _object(
            {
                "object": {"const": "list"},
                "source": {"type": ["string", "null"]},
                "currency": {"const": "USD"},
                "per_tokens": {"const": 1_000_000},
                "data": {
                    "type": "array",
                    "items": _object(
                        {
                            "model": {"type": "string", "description": "a public model name, or a glob"},
                            "input": _PRICE,
                            "cached_input": _PRICE,
                            "output": _PRICE,
                            "currency": {"const": "USD"},
                            "per_tokens": {"const": 1_000_000},
                        },
                        required=["model", "input", "cached_input", "output", "currency", "per_tokens"],
                    ),
                },
            },
            required=["object", "currency", "data"],
        ),
    }
