"""The console's key pages: list (search, paging), create, edit, rotate, revoke.

Every change goes through :class:`gateway.auth.management.KeyAdmin`, the code behind
``/admin/keys`` and ``flask keys``: the same validation, the same audit row (``via``:
``console``), the same log line. A new secret (create, rotate) is shown once, in the
answer to the POST that made it, which no cache keeps (``Cache-Control: no-store``, as
every console page); no other page holds a secret. Rotating and revoking ask for a
confirmation first (a page with one button), so neither happens on a stray click.
"""

from __future__ import annotations

import math
from typing import Any

from flask import flash, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from gateway import extensions
from gateway.auth import request_actor
from gateway.auth.keys import utcnow
from gateway.auth.management import KeyAdmin, KeyNotFound, KeyRevoked
from gateway.console.blueprint import blueprint, page, report
from gateway.console.forms import form_values, key_document
from gateway.errors import Conflict, NotFound
from gateway.store.key_fields import BUDGET_PERIODS, BUDGET_RESETS, FieldError

PER_PAGE = 50
SEARCH_MAX = 200

Page = tuple[str, int]


def _admin() -> KeyAdmin:
    return extensions.key_admin()


def _record(key_id: str) -> dict[str, Any]:
    try:
        return _admin().get(key_id).public(utcnow())
    except KeyNotFound:
        raise NotFound("No API key has this id.", error_code="key_not_found") from None


def _form_page(template: str, status: int, values: dict[str, str], error: FieldError | None = None, **context: Any) -> Page:
    return page(
        template,
        status,
        values=values,
        error=str(error) if error else None,
        error_param=error.param if error else None,
        periods=BUDGET_PERIODS,
        resets=BUDGET_RESETS,
        **context,
    )


@blueprint.get("/keys")
def keys() -> Page:
    """Managed keys, newest first; ``q`` searches names, ids and prefixes; ``page`` pages."""
    search = request.args.get("q", "").strip()[:SEARCH_MAX]
    number = request.args.get("page", "1")
    current = int(number) if number.isascii() and number.isdigit() and int(number) > 0 else 1
    found = report().keys(search, offset=(current - 1) * PER_PAGE, limit=PER_PAGE)
    pages = max(1, math.ceil(found.total / PER_PAGE))
    now = utcnow()
    shown = [record.public(now) for record in found.records]
    return page("keys.html", keys=shown, total=found.total, q=search, page=current, pages=pages)


@blueprint.get("/keys/new")
def new_key() -> Page:
    """The form for a new key."""
    return _form_page("key_new.html", 200, {})


@blueprint.post("/keys")
def create_key() -> Page:
    """Create a key (through KeyAdmin); the answer shows its secret, this once."""
    values = {name: request.form.get(name, "") for name in request.form}
    try:
        record, secret = _admin().create(key_document(request.form, creating=True), actor=request_actor())
    except FieldError as error:
        return _form_page("key_new.html", 400, values, error)
    return page("key_secret.html", 201, key=record.public(utcnow()), secret=secret, created=True)


@blueprint.get("/keys/<key_id>")
def key(key_id: str) -> Page:
    """One key: its settings, as an edit form."""
    shown = _record(key_id)
    return _form_page("key.html", 200, form_values(shown), key=shown)


@blueprint.post("/keys/<key_id>")
def update_key(key_id: str) -> Page | BaseResponse:
    """Change a key's settings (through KeyAdmin); an empty field resets it to the default."""
    shown = _record(key_id)
    try:
        _admin().update(key_id, key_document(request.form, creating=False), actor=request_actor())
    except FieldError as error:
        values = {name: request.form.get(name, "") for name in request.form}
        return _form_page("key.html", 400, values, error, key=shown)
    except KeyNotFound:
        raise NotFound("No API key has this id.", error_code="key_not_found") from None
    flash("Saved.")
    return redirect(url_for("console.key", key_id=key_id), code=303)


@blueprint.get("/keys/<key_id>/rotate")
def confirm_rotate(key_id: str) -> Page:
    """Ask before rotating: the old secret stops working."""
    return page("confirm.html", key=_record(key_id), action="rotate")


@blueprint.post("/keys/<key_id>/rotate")
def rotate_key(key_id: str) -> Page:
    """Give the key a new secret (through KeyAdmin), shown this once."""
    try:
        record, secret = _admin().rotate(key_id, actor=request_actor())
    except KeyNotFound:
        raise NotFound("No API key has this id.", error_code="key_not_found") from None
    except KeyRevoked:
        raise Conflict("A revoked key cannot be rotated; create a new key.", error_code="key_revoked") from None
    return page("key_secret.html", 200, key=record.public(utcnow()), secret=secret, created=False)


@blueprint.get("/keys/<key_id>/revoke")
def confirm_revoke(key_id: str) -> Page:
    """Ask before revoking: the key stops working for good."""
    return page("confirm.html", key=_record(key_id), action="revoke")


@blueprint.post("/keys/<key_id>/revoke")
def revoke_key(key_id: str) -> BaseResponse:
    """Revoke the key (through KeyAdmin); its row and usage stay."""
    try:
        _admin().revoke(key_id, actor=request_actor())
    except KeyNotFound:
        raise NotFound("No API key has this id.", error_code="key_not_found") from None
    flash("Revoked. Every worker refuses the key within KEY_CACHE_SECONDS.")
    return redirect(url_for("console.key", key_id=key_id), code=303)
