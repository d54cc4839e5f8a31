"""The gateway's OpenAPI 3.1 description, served at ``GET /openapi.json``.

It is built from the tables that build the routes, so it cannot drift from what is served:

=================  ==========================================================================
What               Where it comes from
=================  ==========================================================================
paths, methods     ``app.url_map``: every rule but ``static`` and the console's pages (for a
                   browser, not API: :data:`~gateway.auth.endpoints.SESSION_BLUEPRINT`);
                   HEAD and OPTIONS are implied.
                   ``<name>`` and ``<conv:name>`` placeholders become ``{name}`` parameters.
summaries          the first line of each view's docstring (as ``GET /`` shows them)
who may call       :data:`gateway.auth.endpoints.PUBLIC_ENDPOINTS`, :data:`~gateway.auth.endpoints.METRICS_TOKEN_ENDPOINTS`,
                   the ``admin`` blueprint (master key only); everything else takes any key
AI request bodies  :data:`gateway.operations.OPERATIONS`: open objects (the OpenAI shapes are
                   relayed as they are); the gateway checks ``stream`` (``true`` only where the
                   operation streams) and ``max_tokens`` / ``max_completion_tokens``
admin key bodies   :mod:`gateway.store.key_fields`, the tables its validators use
query parameters   :data:`gateway.routes.usage.OWN_PARAMS` / ``ADMIN_PARAMS``, :data:`gateway.routes.audit.AUDIT_PARAMS`
                   (unknown ones are a 400)
statuses           generic rules (credentials -> 401, a body -> 400/413/415, a quota -> 429,
                   a path parameter -> 404, any request line -> 414, ...) plus each view's
                   ``:raises NNN:`` lines;
                   every error status has the one envelope of :mod:`gateway.errors`
=================  ==========================================================================

AI operations relay the upstream's ``2xx`` and ``4xx`` answers unchanged, so their ``4XX``
bodies are described loosely (an object with an ``error`` object); the statuses only the
gateway makes there (401 and the 5xx) have the strict envelope.

The JSON Schemas themselves are built in :mod:`gateway.openapi_schemas`.

Pure: :func:`build` reads the app's tables; no request context, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask
from werkzeug.routing import Map

from gateway import openapi_admin, operations
from gateway.auth import endpoints
from gateway.openapi_schemas import (
    QUERY_PARAMETER_SCHEMAS,
    QUERY_PARAMETERS,
    TOKEN_REQUEST,
    component_schemas,
    key_fields_schema,
    ref,
    relay_body_schema,
)

OPENAPI_VERSION = "3.1.0"
IMPLIED_METHODS = frozenset({"HEAD", "OPTIONS"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PLACEHOLDER = re.compile(
    r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<args>[^)]*)\))?:)?"
    r"(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>"
)
_RAISES = re.compile(r":raises (\d{3}):")
# Who may call an endpoint (see gateway.auth); "public" needs no credentials.
PUBLIC, ANY_KEY, ADMIN, METRICS = "public", "key", "admin", "metrics"


# --- the routes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """One served (rule, method) pair: what ``GET /`` lists and the description describes."""

    rule: str  # Flask's rule, e.g. /admin/keys/<key_id>
    method: str
    endpoint: str

    @property
    def path(self) -> str:
        """The rule as an OpenAPI path template: ``/admin/keys/{key_id}``."""
        return _PLACEHOLDER.sub(lambda m: "{" + m["name"] + "}", self.rule)

    @property
    def access(self) -> str:
        return access_of(self.endpoint, self.method)

    @property
    def operation(self) -> operations.Operation | None:
        """The AI operation this route relays, if it is one."""
        blueprint, _, name = self.endpoint.partition(".")
        return operations.BY_NAME.get(name) if blueprint == "ai" else None

    @property
    def is_item(self) -> bool:
        """One item of an AI operation (``/v1/models/<item_id>``, ``/v1/responses/<item_id>``)."""
        op = self.operation
        return op is not None and self.rule in op.item_paths

    @property
    def streams(self) -> bool:
        """An AI route that may answer with server-sent events."""
        op = self.operation
        return op is not None and op.streams and not self.is_item


def served_routes(url_map: Map) -> list[Route]:
    """Every (rule, method) the app serves, by rule then method; not ``static``, the console's pages, HEAD or OPTIONS."""
    found = []
    for rule in sorted(url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static" or rule.endpoint.startswith(f"{endpoints.SESSION_BLUEPRINT}."):
            continue
        for method in sorted((rule.methods or set()) - IMPLIED_METHODS):
            found.append(Route(rule.rule, method, rule.endpoint))
    return found


def access_of(endpoint: str, method: str) -> str:
    """``public``, ``metrics`` (master key or METRICS_TOKEN), ``admin`` (master key) or ``key``."""
    if (endpoint, method) in endpoints.PUBLIC_ENDPOINTS:
        return PUBLIC
    if (endpoint, method) in endpoints.METRICS_TOKEN_ENDPOINTS:
        return METRICS
    return ADMIN if endpoint.startswith("admin.") else ANY_KEY


def _path_parameters(rule: str) -> Iterator[dict[str, Any]]:
    for match in _PLACEHOLDER.finditer(rule):
        converter = match["converter"] or "default"
        if converter == "int":
            schema: dict[str, Any] = {"type": "integer", "minimum": 0}
        elif converter == "float":
            schema = {"type": "number", "minimum": 0}
        elif converter == "uuid":
            schema = {"type": "string", "format": "uuid"}
        elif converter == "path":
            schema = {"type": "string", "minLength": 1}
        else:  # Werkzeug's default (and "string", "any"): one non-empty segment, no slash
            schema = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
        yield {"name": match["name"], "in": "path", "required": True, "schema": schema}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


# The success answer of each endpoint: (status, content). An endpoint not listed here (a
# route added later) is still described, as a 200 with a JSON body of any shape.
SUCCESS: dict[str, tuple[str, dict[str, Any]]] = {
    "meta.index": ("200", _json(ref("Index"))),
    "meta.health": ("200", _json(ref("Health"))),
    "meta.ready": ("200", _json(ref("Ready"))),
    "meta.openapi": ("200", _json(ref("OpenAPI"))),
    "auth.issue_token": ("200", _json(ref("Token"))),
    "admin.create_key": ("201", _json(ref("NewKey"))),
    "admin.list_keys": ("200", _json(ref("KeyList"))),
    "admin.show_key": ("200", _json(ref("KeyRecord"))),
    "admin.update_key": ("200", _json(ref("KeyRecord"))),
    "admin.revoke_key": ("200", _json(ref("KeyRecord"))),
    "admin.rotate_key": ("200", _json(ref("NewKey"))),
    "admin.usage_report": (
        "200",
        {
            **_json(ref("UsageReport")),
            "text/csv": {"schema": ref("UsageCsv")},  # format=csv, or Accept: text/csv
        },
    ),
    "admin.audit_log": ("200", _json(ref("AuditList"))),
    "admin.backends": ("200", _json(ref("Backends"))),
    "admin.prices": ("200", _json(ref("Prices"))),
    "usage_api.own_usage": ("200", _json(ref("Usage"))),
    "metrics.scrape": (
        "200",
        {"text/plain": {"schema": {"type": "string"}}, "application/openmetrics-text": {"schema": {"type": "string"}}},
    ),
}
# Error bodies that carry more than the envelope.
ERROR_SCHEMAS: dict[tuple[str, str], str] = {("meta.ready", "503"): "NotReady"}

STATUS_TEXT: dict[str, str] = {
    "400": "Invalid request: a body, field or parameter (`param` names it).",
    "401": "Missing or invalid credentials (`WWW-Authenticate: Bearer`).",
    "403": "These credentials may not do this (or HTTPS is required).",
    "404": "No such resource.",
    "409": "The request conflicts with the resource's state.",
    "413": "The body is larger than MAX_REQUEST_BYTES.",
    "414": "The request line (path and query) is longer than the server accepts.",
    "415": "The body is not declared as JSON (Content-Type: application/json).",
    "429": "A quota ran out (`Retry-After` says when to retry).",
    "500": "A gateway bug (logged with the request id).",
    "502": "The AI backend failed or answered something invalid.",
    "503": "A store the gateway needs does not answer; retry shortly.",
    "504": "The AI backend did not answer in time.",
    "4XX": "Refused by the gateway, or the AI backend's own 4xx answer passed through.",
}


# --- operations ---------------------------------------------------------------------------
def _doc(app: Flask, endpoint: str) -> str:
    return (app.view_functions[endpoint].__doc__ or "").strip()


def _error_statuses(app: Flask, route: Route, exempt: frozenset[str]) -> set[str]:
    settings = app.config["GATEWAY"]
    statuses = {"414", "500", *_RAISES.findall(_doc(app, route.endpoint))}  # 414: gunicorn's request-line limit
    if route.endpoint in QUERY_PARAMETERS:
        statuses.add("400")
    if _body_schema(route) is not None:
        statuses |= {"400", "413", "415"}
    if "<" in route.rule:
        statuses.add("404")
    if route.access != PUBLIC:
        statuses |= {"401", "503"}  # 503: the key database does not answer
    if route.access in (ADMIN, METRICS):
        statuses.add("403")
    if route.endpoint not in exempt:
        statuses |= {"429", "503"}  # 503: the quota store does not answer (policy "closed")
    if settings.force_https and route.method in WRITE_METHODS:
        statuses.add("403")
    if route.operation is not None:  # key policies, token quotas, the upstream
        statuses |= {"400", "403", "429", "502", "503", "504"}
    return statuses


def _body_schema(route: Route) -> dict[str, Any] | None:
    op = route.operation
    if op is not None:
        return relay_body_schema(op) if op.has_body and not route.is_item else None
    if route.endpoint == "auth.issue_token":
        return TOKEN_REQUEST
    if route.endpoint == "admin.create_key":
        return key_fields_schema(creating=True)
    if route.endpoint == "admin.update_key":
        return key_fields_schema(creating=False)
    return None


def _security(app: Flask, route: Route) -> list[dict[str, list[str]]]:
    if route.access == PUBLIC:
        return []
    if route.access == ANY_KEY:
        return [{"ApiKey": []}, {"Bearer": []}]
    found: list[dict[str, list[str]]] = [{"MasterKey": []}, {"MasterBearer": []}]
    if route.access == METRICS and app.config["GATEWAY"].metrics_token:
        found.append({"MetricsToken": []})
    return found


def _responses(app: Flask, route: Route, exempt: frozenset[str]) -> dict[str, Any]:
    op = route.operation
    responses: dict[str, Any] = {}
    if op is not None:
        content = _json(ref("RelayedAnswer"))
        if route.streams:
            content["text/event-stream"] = {"schema": ref("RelayedEvent")}
        responses["2XX"] = {"description": "The AI backend's answer, relayed.", "content": content}
    else:
        status, content = SUCCESS.get(route.endpoint, ("200", _json({})))
        responses[status] = {"description": "Success.", "content": content}
    for status in sorted(_error_statuses(app, route, exempt)):
        if op is not None and status.startswith("4") and status not in ("401", "414"):
            status = "4XX"  # the upstream's own 4xx answers pass through
        schema = ERROR_SCHEMAS.get((route.endpoint, status), "RelayedError" if status == "4XX" else "Error")
        responses[status] = {"description": STATUS_TEXT[status], "content": _json(ref(schema))}
    return responses


def _operation_object(app: Flask, route: Route, exempt: frozenset[str]) -> dict[str, Any]:
    doc = _doc(app, route.endpoint)
    summary = doc.splitlines()[0] if doc else ""
    if route.is_item and route.operation is not None and route.operation.item_summary is not None:
        doc = summary = route.operation.item_summary
    operation: dict[str, Any] = {
        "operationId": route.method.lower() + re.sub(r"[^a-zA-Z0-9]+", "_", route.path).rstrip("_"),
        "tags": [route.endpoint.partition(".")[0]],
        "summary": summary,
        "security": _security(app, route),
    }
    if doc != summary:
        operation["description"] = doc
    parameters = list(_path_parameters(route.rule))
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": QUERY_PARAMETER_SCHEMAS[name]}
        for name in QUERY_PARAMETERS.get(route.endpoint, ())
    ]
    if parameters:
        operation["parameters"] = parameters
    body = _body_schema(route)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    if route.operation is not None:
        operation["x-streaming"] = route.streams
    operation["responses"] = _responses(app, route, exempt)
    return operation


def _security_schemes(app: Flask) -> dict[str, Any]:
    schemes: dict[str, Any] = {
        "ApiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "An API key: the master key or a managed key.",
        },
        "Bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key, a JWT from POST /auth/token, or the identity provider's access token (OIDC_ISSUER).",
        },
        "MasterKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The master key."},
        "MasterBearer": {"type": "http", "scheme": "bearer", "description": "The master key, or a JWT minted from it."},
    }
    if app.config["GATEWAY"].metrics_token:
        schemes["MetricsToken"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "METRICS_TOKEN: on GET /metrics only, as the one credential.",
        }
    return schemes


def build(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app`` (a built gateway app), as a JSON-ready dict."""
    exempt = endpoints.QUOTA_EXEMPT_ENDPOINTS
    paths: dict[str, dict[str, Any]] = {}
    for route in served_routes(app.url_map):
        paths.setdefault(route.path, {})[route.method.lower()] = _operation_object(app, route, exempt)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "AI Proxy Gateway",
            "version": "1",
            "description": "Authenticated, rate-limited gateway to an OpenAI-compatible LLM backend. "
            "Every error the gateway makes itself has the Error shape.",
        },
        "paths": paths,
        "components": {"schemas": {**component_schemas(), **openapi_admin.schemas()}, "securitySchemes": _security_schemes(app)},
    }
