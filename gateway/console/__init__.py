"""The operator's console: keys, usage and spend, backends and the audit log, in a browser.

Server-rendered (Jinja templates), with its CSS, JavaScript and favicon shipped in
``static/``: nothing is built and nothing is loaded from elsewhere at run time. Served
under ``ADMIN_UI_PREFIX`` (``/admin/ui``) unless ``ADMIN_UI=false``, when its routes do
not exist at all.

- Who: the master key, or a JWT minted from it, signs in (:mod:`gateway.console.sign_in`);
  the session is a signed cookie (:mod:`gateway.auth.session`), a credential on these
  pages only. Failed sign-ins count against ``RATE_LIMIT_AUTH_FAILURES`` per address, with
  ``POST /auth/token``'s.
- CSRF: every POST carries Flask-WTF's token (``generate_csrf`` in each form,
  ``validate_csrf`` in the blueprint's hook; the session keeps the raw token): a maintained
  library's signed, timed token, not a scheme of ours. Only the console's requests pay for
  it (no app-wide hook), and ``SameSite=Strict`` is a second wall.
- Headers: a CSP that allows scripts, styles and images from the gateway itself only
  (no inline script or style), ``frame-ancestors 'none'``, and ``Cache-Control: no-store``
  on every page; the rest as everywhere (:mod:`gateway.edge`).
- Changes to keys go through :class:`gateway.auth.management.KeyAdmin` (:mod:`gateway.console.keys`),
  so they are validated and audited as through ``/admin/keys``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from gateway.auth import session
from gateway.console import keys, pages, sign_in  # noqa: F401  (their views register on the blueprint)
from gateway.console.blueprint import blueprint

CONTENT_SECURITY_POLICY = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
}


def _secure_headers(app: Flask) -> None:
    """The console's own CSP on each of its views (flask-talisman's per-view options)."""
    talisman: Any = app.extensions["gateway.talisman"]
    for endpoint, view in app.view_functions.items():
        if endpoint.startswith(f"{blueprint.name}.") and endpoint != f"{blueprint.name}.static":
            talisman(content_security_policy=CONTENT_SECURITY_POLICY)(view)


def init_app(app: Flask) -> None:
    settings = app.config["GATEWAY"]
    if not settings.admin_ui:
        return
    session.configure(app, settings)
    app.config["WTF_CSRF_TIME_LIMIT"] = settings.admin_ui_session_seconds
    app.register_blueprint(blueprint, url_prefix=settings.admin_ui_prefix)
    _secure_headers(app)
