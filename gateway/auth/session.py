"""The console's session cookie: a credential on the console's endpoints only.

Contract:

- An operator signs in to the console (:mod:`gateway.console`) with the master key, or a
  JWT minted from it; :func:`sign_in` then keeps, in Flask's signed session cookie, who
  signed in, until when (``ADMIN_UI_SESSION_SECONDS`` from the sign-in, not sliding) and
  a fingerprint of the master key (an HMAC under the session's own secret, so the cookie,
  which is signed but readable, says nothing about the key). Changing ``MASTER_API_KEY``
  ends every session at its next request.
- The cookie is HttpOnly, ``SameSite=Strict``, scoped to the console's path, Secure in
  production (``NODE_ENV=production``) and with ``FORCE_HTTPS``, and expires with the
  session. Its signing key is derived from ``JWT_SECRET`` (an HMAC of a fixed label):
  every worker and instance shares it, and rotating ``JWT_SECRET`` signs everyone out.
- The auth hook (:mod:`gateway.auth`) asks :func:`signed_in` on the endpoints of
  :data:`gateway.auth.endpoints.SESSION_BLUEPRINT` only; the caller is then ``master``,
  ``via="console"``. Anywhere else the cookie is not even read: the session is opened
  only for paths under the console's prefix (:class:`ConsoleSessionInterface`).
- Cross-site requests: the console checks a CSRF token on every state-changing request
  (Flask-WTF, :mod:`gateway.console`); ``SameSite=Strict`` is the second wall.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta
from typing import Any

from flask import Flask, Request, current_app, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from gateway.config import Settings

SESSION_VIA = "console"
COOKIE_NAME = "gateway_console"
_SECRET_LABEL = b"gateway console session v1"


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, opened only under the console's prefix.

    Every other request gets Flask's null session, as when no secret key is set: the
    API's hot path neither reads nor writes the cookie.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        path = request.path
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            return None  # Flask makes a null session
        return super().open_session(app, request)


def session_secret(settings: Settings) -> bytes:
    """The session's signing key: an HMAC of a fixed label under ``JWT_SECRET``."""
    return hmac.new(settings.jwt_secret.encode(), _SECRET_LABEL, hashlib.sha256).digest()


def _fingerprint(key: str) -> str:
    secret = current_app.secret_key
    assert isinstance(secret, bytes)
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:32]


def configure(app: Flask, settings: Settings) -> None:
    """Turn on the console's session for ``app`` (called by :func:`gateway.console.init_app`)."""
    app.secret_key = session_secret(settings)
    app.session_interface = ConsoleSessionInterface(settings.admin_ui_prefix)
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_PATH=settings.admin_ui_prefix,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.production or settings.force_https,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.admin_ui_session_seconds),
        SESSION_REFRESH_EACH_REQUEST=False,  # the expiry is absolute, from the sign-in
    )


def sign_in(key_id: str, how: str) -> None:
    """Start a session for ``key_id`` (the master key), signed in ``how`` (``api_key`` or ``jwt``)."""
    settings: Settings = current_app.config["GATEWAY"]
    session.clear()
    session.permanent = True
    session["sub"] = key_id
    session["how"] = how
    session["exp"] = int(time.time()) + settings.admin_ui_session_seconds
    session["fp"] = _fingerprint(settings.master_api_key)


def sign_out() -> None:
    session.clear()


def signed_in() -> tuple[str, str] | None:
    """``(key id, how it signed in)`` of the current session, or ``None``: no session,
    expired, or signed in with a master key that has changed since."""
    found: Any = session.get("sub")
    expires: Any = session.get("exp")
    if not isinstance(found, str) or not isinstance(expires, int) or expires <= time.time():
        return None
    settings: Settings = current_app.config["GATEWAY"]
    fingerprint: Any = session.get("fp")
    if not isinstance(fingerprint, str) or not hmac.compare_digest(fingerprint, _fingerprint(settings.master_api_key)):
        return None
    how: Any = session.get("how")
    return found, how if isinstance(how, str) else "api_key"
