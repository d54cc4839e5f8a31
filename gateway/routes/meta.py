"""``GET /`` (self-documentation) and ``GET /health`` (liveness)."""

from __future__ import annotations

import inspect
import re
from typing import Any

from flask import Blueprint, Response, current_app, json, jsonify
from werkzeug.routing import Rule

from gateway import operations
from gateway.auth.endpoints import METRICS_TOKEN_ENDPOINTS, PUBLIC_ENDPOINTS
from gateway.errors import error_response
from gateway.quotas import describe
from gateway.quotas.windows import storage_ready

blueprint = Blueprint("meta", __name__)

_AUTH_ANY_KEY = "X-API-Key or Authorization: Bearer <api key or JWT>"
_AUTH_ADMIN = "the master key (X-API-Key or Authorization: Bearer), or a JWT minted from it"
_AUTH_METRICS = _AUTH_ADMIN + ", or Authorization: Bearer <METRICS_TOKEN>"


def _auth_of(endpoint: str, method: str) -> str:
    if (endpoint, method) in PUBLIC_ENDPOINTS:
        return "none"
    if (endpoint, method) in METRICS_TOKEN_ENDPOINTS:
        return _AUTH_METRICS
    return _AUTH_ADMIN if endpoint.startswith("admin.") else _AUTH_ANY_KEY


@blueprint.get("/health")
def health() -> Response:
    """Liveness: no credentials, no quota, no upstream call."""
    response = jsonify(status="ok")
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/health/ready")
def ready() -> Response:
    """Readiness: 200 while the quota store answers, 503 (with the error envelope) while it does not."""
    checks = {"rate_limit_storage": "ok" if storage_ready() else "unreachable"}
    if all(value == "ok" for value in checks.values()):
        response = jsonify(status="ready", checks=checks)
    else:
        response = error_response(503, "Not ready: the rate limit storage does not answer.", "api_error", "not_ready")
        response.set_data(json.dumps({**json.loads(response.get_data()), "status": "not_ready", "checks": checks}))
    response.headers["Cache-Control"] = "no-store"
    return response


# Where a docstring's fields (":raises 404: ...", ":param x: ...") begin.
_DOC_FIELD = re.compile(r"(?:^|\s):(?:param|type|raises?|returns?|rtype)\b")


def plain_summary(doc: str | None) -> str:
    """A docstring's first paragraph as plain text: no fields, no reST backquotes, one line."""
    paragraph = inspect.cleandoc(doc or "").split("\n\n", 1)[0]
    field = _DOC_FIELD.search(paragraph)
    if field is not None:
        paragraph = paragraph[: field.start()]
    return " ".join(paragraph.replace("``", "").split())


def _summary(endpoint: str, rule: Rule) -> str:
    if endpoint.startswith("ai."):
        op = operations.BY_NAME.get(endpoint.rpartition(".")[2])
        if op is not None and op.item_summary is not None and "item_id" in rule.arguments:
            return op.item_summary
    return plain_summary(current_app.view_functions[endpoint].__doc__)


@blueprint.get("/")
def index() -> Response:
    """This document: every endpoint with its method, auth and quotas."""

    endpoints = []
    for rule in sorted(current_app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            entry: dict[str, Any] = {
                "method": method,
                "path": rule.rule,
                "auth": _auth_of(rule.endpoint, method),
                "rate_limits": describe(rule.endpoint),
                "description": _summary(rule.endpoint, rule),
            }
            op = operations.BY_NAME.get(rule.endpoint.rpartition(".")[2]) if rule.endpoint.startswith("ai.") else None
            if op is not None:
                entry["streaming"] = op.streams
            endpoints.append(entry)
    return jsonify(
        name="AI Proxy Gateway",
        description="Authenticated, rate-limited gateway to an OpenAI-compatible LLM backend.",
        authentication={
            "api_key": "X-API-Key: <key> or Authorization: Bearer <key>",
            "jwt": 'POST /auth/token with {"apiKey": "<key>"}, then Authorization: Bearer <token>',
        },
        endpoints=endpoints,
    )
