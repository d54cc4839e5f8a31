"""``/admin``: manage API keys, read everyone's usage, the prices and the audit log. Master key only (or a JWT minted from it).

The app-level auth hook has already refused callers without valid credentials
(401); here any caller other than ``master`` gets a 403. CORS preflights pass
without credentials, as everywhere (flask-cors answers them from ``ALLOWED_ORIGINS``). Secrets appear only in the
answers to create and rotate, once; listings show the key's ``prefix``. Every change is
written with its audit row in one transaction (:mod:`gateway.store.audit`), which no route
edits or deletes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from gateway import extensions
from gateway.auth import current_caller, is_preflight, request_actor
from gateway.auth.keys import MASTER_KEY_ID, utcnow
from gateway.auth.management import KeyAdmin, KeyNotFound, KeyRevoked
from gateway.backends.model import CURRENCY, PER_TOKENS
from gateway.body import json_object_body
from gateway.errors import BadRequest, Conflict, Forbidden, NotFound, ServiceUnavailable
from gateway.routes.audit import audit_listing
from gateway.routes.usage import admin_report
from gateway.store.key_fields import FieldError
from gateway.store.keys import KeyRecord

log = logging.getLogger(__name__)

blueprint = Blueprint("admin", __name__, url_prefix="/admin")


def _admin() -> KeyAdmin:
    admin: KeyAdmin = extensions.key_admin()
    return admin


@blueprint.before_request
def require_master() -> None:
    """:raises 403: the caller is a managed key, not the master key (CORS preflights carry no credentials)."""
    if is_preflight():
        return
    caller = current_caller()
    if caller is None or caller.id != MASTER_KEY_ID:
        raise Forbidden("Only the master key (or a token minted from it) can use /admin.", error_code="admin_only")


@blueprint.errorhandler(SQLAlchemyError)
def _database_unavailable(error: SQLAlchemyError) -> Any:
    log.warning("key management failed: database unavailable (%s)", type(error).__name__)
    return current_app.handle_http_exception(
        ServiceUnavailable("The key database is unavailable; retry shortly.", headers={"Retry-After": "5"})
    )


def _json_body() -> dict[str, Any]:
    """:raises 415: not declared as JSON. :raises 400: not a JSON object."""
    return json_object_body()[1]


def _invalid(error: FieldError) -> BadRequest:
    return BadRequest(str(error), param=error.param, error_code="invalid_field")


def _not_found(key_id: str) -> NotFound:
    return NotFound("No API key has this id.", param="id", error_code="key_not_found")


def _shown(record: KeyRecord, secret: str | None = None) -> dict[str, Any]:
    shown = record.public(utcnow())
    if secret is not None:
        shown["secret"] = secret
    return shown


@blueprint.post("/keys")
def create_key() -> tuple[Response, int]:
    """Create an API key; the answer holds its secret, shown this once.

    :raises 400: a field is missing, unknown or invalid (``param`` names it).
    """
    try:
        record, secret = _admin().create(_json_body(), actor=request_actor())
    except FieldError as error:
        raise _invalid(error) from None
    response = jsonify(_shown(record, secret))
    response.headers["Location"] = f"{blueprint.url_prefix}/keys/{record.id}"
    return response, 201


@blueprint.get("/keys")
def list_keys() -> Response:
    """List API keys (never their secrets; ``prefix`` tells them apart)."""
    return jsonify(object="list", data=[_shown(record) for record in _admin().list()])


@blueprint.get("/keys/<key_id>")
def show_key(key_id: str) -> Response:
    """Show one API key. :raises 404: no such key."""
    try:
        return jsonify(_shown(_admin().get(key_id)))
    except KeyNotFound:
        raise _not_found(key_id) from None


@blueprint.patch("/keys/<key_id>")
def update_key(key_id: str) -> Response:
    """Change an API key's name, metadata, expiry, models or limits (``null`` = default).

    :raises 400: an unknown or invalid field. :raises 404: no such key.
    """
    try:
        return jsonify(_shown(_admin().update(key_id, _json_body(), actor=request_actor())))
    except FieldError as error:
        raise _invalid(error) from None
    except KeyNotFound:
        raise _not_found(key_id) from None


@blueprint.delete("/keys/<key_id>")
def revoke_key(key_id: str) -> Response:
    """Revoke an API key (its row and usage stay). :raises 404: no such key."""
    try:
        return jsonify(_shown(_admin().revoke(key_id, actor=request_actor())))
    except KeyNotFound:
        raise _not_found(key_id) from None


@blueprint.post("/keys/<key_id>/rotate")
def rotate_key(key_id: str) -> Response:
    """Issue a new secret for an API key (same id and settings); the old one stops working.

    :raises 404: no such key. :raises 409: the key is revoked.
    """
    try:
        record, secret = _admin().rotate(key_id, actor=request_actor())
    except KeyNotFound:
        raise _not_found(key_id) from None
    except KeyRevoked:
        raise Conflict("A revoked key cannot be rotated; create a new key.", error_code="key_revoked") from None
    return jsonify(_shown(record, secret))


@blueprint.get("/usage")
def usage_report() -> Response:
    """Usage of every key: totals, or grouped by day, key, model or operation; filters: key, model, operation, from, to.

    With ``format=csv`` (or ``Accept: text/csv``): the raw usage rows as streamed CSV, one line per request.

    :raises 400: a bad or unknown parameter (``param`` names it).
    """
    return admin_report(request.args)


@blueprint.get("/audit")
def audit_log() -> Response:
    """The audit log: every change to a managed key (who, from where, when, before and after); read-only.

    Filters: key, action, actor, via, from, to; paging: limit, after (a cursor), order.

    :raises 400: a bad or unknown parameter (``param`` names it).
    """
    return audit_listing(request.args)


@blueprint.get("/backends")
def backends() -> Response:
    """Each deployment's live state in the worker process that answers (each worker keeps
    its own): circuit, requests in flight, recent error ratio and latency, and the retry budget."""
    router = extensions.router()
    return jsonify(
        {
            "object": "list",
            "worker_pid": os.getpid(),
            "source": router.config.source or "environment",
            "retry_budget": router.budget.snapshot(),
            "data": router.snapshot(),
        }
    )


@blueprint.get("/prices")
def prices() -> Response:
    """The price table in force: USD per million tokens, per public model name or glob (config file ``prices:``).

    As the worker process that answers has it. ``data`` is in file order; an exact model name
    wins over globs, then the first glob that matches. Empty when the file has no ``prices:``
    (every cost is then null).
    """
    config = extensions.backends_config()
    settings = current_app.config["GATEWAY"]
    return jsonify(
        {
            "object": "list",
            "source": (settings.gateway_config or None) if config.prices else None,
            "currency": CURRENCY,
            "per_tokens": PER_TOKENS,
            "data": [price.as_dict() for price in config.prices],
        }
    )
