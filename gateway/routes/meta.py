"""``GET /`` (self-documentation), ``GET /openapi.json`` (its OpenAPI 3.1 form) and ``GET /health`` (liveness).

Both documents walk the same route table (:func:`gateway.openapi.served_routes`).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from flask import Blueprint, Response, current_app, json, jsonify

from gateway import openapi
from gateway.errors import error_response
from gateway.quotas import describe
from gateway.quotas.windows import storage_ready

blueprint = Blueprint("meta", __name__)

_AUTH_ANY_KEY = "X-API-Key or Authorization: Bearer <api key, JWT, or identity provider token>"
_AUTH_ADMIN = "the master key (X-API-Key or Authorization: Bearer), or a JWT minted from it"
_AUTH_METRICS = _AUTH_ADMIN + ", or Authorization: Bearer <METRICS_TOKEN>"


_AUTH_TEXT = {openapi.PUBLIC: "none", openapi.ANY_KEY: _AUTH_ANY_KEY, openapi.ADMIN: _AUTH_ADMIN, openapi.METRICS: _AUTH_METRICS}


@blueprint.get("/health")
def health() -> Response:
    """Liveness: no credentials, no quota, no upstream call."""
    response = jsonify(status="ok")
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/health/ready")
def ready() -> Response:
    """Readiness: 200 while the quota store answers, 503 (with the error envelope) while it does not.

    :raises 503: the quota store does not answer (the body also has ``status`` and ``checks``).
    """
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


def _summary(route: openapi.Route) -> str:
    op = route.operation
    if op is not None and op.item_summary is not None and route.is_item:
        return op.item_summary
    return plain_summary(current_app.view_functions[route.endpoint].__doc__)


@blueprint.get("/")
def index() -> Response:
    """This document: every endpoint with its method, auth and quotas."""

    endpoints = []
    for route in openapi.served_routes(current_app.url_map):
        entry: dict[str, Any] = {
            "method": route.method,
            "path": route.rule,
            "auth": _AUTH_TEXT[route.access],
            "rate_limits": describe(route.endpoint),
            "description": _summary(route),
        }
        if route.operation is not None:
            entry["streaming"] = route.streams
        endpoints.append(entry)
    return jsonify(
        name="AI Proxy Gateway",
        description="Authenticated, rate-limited gateway to an OpenAI-compatible LLM backend.",
        authentication={
            "api_key": "X-API-Key: <key> or Authorization: Bearer <key>",
            "jwt": 'POST /auth/token with {"apiKey": "<key>"}, then Authorization: Bearer <token>',
            **_identity_provider(),
        },
        endpoints=endpoints,
        openapi="/openapi.json",
    )


@blueprint.get("/openapi.json", endpoint="openapi")
def openapi_document() -> Response:
    """This gateway's OpenAPI 3.1 description, generated from its route tables."""
    body: bytes | None = current_app.extensions.get("gateway.openapi")
    if body is None:  # built once per process: the routes do not change after start-up
        body = current_app.extensions["gateway.openapi"] = json.dumps(openapi.build(current_app)).encode()
    return current_app.response_class(body, mimetype="application/json")


def _identity_provider() -> dict[str, str]:
    """How to sign in with the identity provider's tokens, when one is configured (OIDC_ISSUER)."""
    issuer = current_app.config["GATEWAY"].oidc_issuer
    if not issuer:
        return {}
    return {"identity_provider": f"Authorization: Bearer <access token issued by {issuer}>"}
