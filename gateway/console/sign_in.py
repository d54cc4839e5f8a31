"""Signing in to the console and out of it.

Sign-in takes the master key, or a JWT minted from it (``POST /auth/token``), and starts
the session of :mod:`gateway.auth.session`. A failed attempt (a wrong key, a managed
key, a bad token) counts against the same per-address limit as ``POST /auth/token``
(``RATE_LIMIT_AUTH_FAILURES``: one counter per client address, shared by both); once it
is full, that address gets ``429`` on both until the window ends, even with the right key.
"""

from __future__ import annotations

import time

from flask import Response, current_app, redirect, request, url_for
from flask_wtf.csrf import generate_csrf
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.strategies import RateLimiter
from werkzeug.wrappers import Response as BaseResponse

from gateway import extensions
from gateway.auth import client_address, session, tokens
from gateway.auth.keys import MASTER_KEY_ID
from gateway.console.blueprint import blueprint, page
from gateway.errors import RateLimited
from gateway.quotas.windows import AUTH_FAILURE_QUOTA

KEY_FIELD = "key"


def _failure_counters() -> tuple[list[RateLimitItem], tuple[str, ...]]:
    """The auth-failure limits and their counters' key parts, as flask-limiter keeps them for
    ``POST /auth/token`` (a shared limit: prefix, client address, scope)."""
    settings = current_app.config["GATEWAY"]
    windows = extensions.request_windows()
    return parse_many(settings.rate_limit_auth_failures), (*windows.prefix, client_address(), AUTH_FAILURE_QUOTA)


def _on(strategy: RateLimiter, hit: bool) -> int | None:
    """Count a failure (``hit``) or look for room; the seconds until a full counter frees one, else ``None``."""
    items, args = _failure_counters()
    for item in items:
        if hit:
            strategy.hit(item, *args)
        elif not strategy.test(item, *args):
            reset, _ = strategy.get_window_stats(item, *args)
            return max(1, int(reset - time.time()) + 1)
    return None


def _count(hit: bool) -> int | None:
    """:func:`_on` on the quota store, or on the per-process fallback while it is down
    (``RATE_LIMIT_ON_STORAGE_ERROR=open``). :raises StorageError: down, and ``closed``."""
    windows = extensions.request_windows()
    try:
        return _on(windows.strategy, hit)
    except StorageError:
        windows.store_failed()
        if not windows.fail_open:
            raise
        return _on(windows.strategy, hit)


def _master_key_of(secret: str) -> str | None:
    """``"api_key"`` or ``"jwt"`` when ``secret`` is the master key or a JWT minted from it."""
    if tokens.looks_like_jwt(secret):
        try:
            subject = tokens.verify(extensions.tokens(), secret)
        except tokens.InvalidToken:
            return None
        return "jwt" if subject == MASTER_KEY_ID and extensions.keys().is_active(subject) else None
    return "api_key" if extensions.keys().identify(secret) == MASTER_KEY_ID else None


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    home = url_for("console.overview")
    prefix = current_app.config["GATEWAY"].admin_ui_prefix
    if not target or not target.startswith(prefix + "/") or target.startswith("//") or "\\" in target:
        return home
    return target.rstrip("?")


@blueprint.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> tuple[str, int] | BaseResponse:
    """Sign in with the master key (or a JWT minted from it)."""
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if session.signed_in() is not None:
            return redirect(target, code=303)
        return page("sign_in.html", next=target)
    retry_after = _count(hit=False)
    if retry_after is not None:
        raise RateLimited("Too many failed sign-ins from this address; retry later.", headers={"Retry-After": str(retry_after)})
    secret = request.form.get(KEY_FIELD, "").strip()
    how = _master_key_of(secret) if secret else None
    if how is None:
        _count(hit=True)
        return page("sign_in.html", 401, next=target, failed=True)
    session.sign_in(MASTER_KEY_ID, how)
    generate_csrf()  # a fresh token for the new session
    return redirect(target, code=303)


@blueprint.post("/sign-out")
def sign_out() -> Response:
    """Sign out: the session ends here and now."""
    session.sign_out()
    return redirect(url_for("console.sign_in"), code=303)  # type: ignore[return-value]
