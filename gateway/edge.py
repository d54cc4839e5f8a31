"""The HTTP edge: trusted proxy hops, CORS and security headers.

- ``TRUSTED_PROXY_COUNT`` > 0 wraps the app in Werkzeug's ProxyFix for that many
  hops of ``X-Forwarded-For/-Proto/-Host``; at 0 (the default) they are ignored.
- CORS (flask-cors): exact origins from ``ALLOWED_ORIGINS``; unset means no
  cross-origin access (flask-cors is then not registered at all: it would add
  nothing, at a cost on every response). Preflights need no credentials; error
  responses carry the CORS headers too.
- Security headers (flask-talisman) for a JSON API. HTTPS redirects are opt-in
  (``FORCE_HTTPS``), never for ``/health``, and never for a write: a plain-HTTP
  POST gets a 403 rather than a redirect that would turn it into a GET.
  flask-talisman works its headers out once per endpoint and scheme
  (:class:`gateway.compat.RememberingTalisman`).
"""

from __future__ import annotations

from flask import Flask, request
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from gateway import compat
from gateway.errors import GatewayError
from gateway.quotas.headers import EXPOSED_HEADERS
from gateway.quotas.policy import CLAMPED_HEADER
from gateway.routes.meta import health, ready

ALLOWED_REQUEST_HEADERS = ("Authorization", "Content-Type", "X-API-Key", "X-Request-ID")
EXPOSED_RESPONSE_HEADERS = (*EXPOSED_HEADERS, "X-Request-ID", "Server-Timing", CLAMPED_HEADER)


class HttpsRequired(GatewayError):
    code = 403
    error_type = "invalid_request_error"
    error_code = "https_required"
    description = "This gateway only accepts HTTPS requests."


def _refuse_plain_http_writes() -> None:
    secure = request.is_secure
    if not secure and request.method not in ("GET", "HEAD", "OPTIONS"):
        raise HttpsRequired()


def _allow_origins(app: Flask, origins: tuple[str, ...]) -> None:
    CORS(
        app,
        origins=list(origins),
        allow_headers=list(ALLOWED_REQUEST_HEADERS),
        expose_headers=list(EXPOSED_RESPONSE_HEADERS),
        methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],  # PATCH, DELETE: /admin/keys/<id>
        supports_credentials=False,
        max_age=600,
        allow_private_network=False,
    )


def init_app(app: Flask) -> None:
    settings = app.config["GATEWAY"]
    if settings.trusted_proxy_count:
        hops = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]  # Flask's documented way to wrap its WSGI app
    if settings.allowed_origins:
        _allow_origins(app, settings.allowed_origins)
    if settings.force_https:
        app.before_request(_refuse_plain_http_writes)
    talisman = compat.RememberingTalisman(
        app,
        force_https=settings.force_https,
        force_https_permanent=True,
        strict_transport_security=settings.production,
        strict_transport_security_max_age=31536000,
        content_security_policy={"default-src": "'none'", "frame-ancestors": "'none'"},
        frame_options="DENY",
        referrer_policy="no-referrer",
        session_cookie_secure=True,
        x_content_type_options=True,
    )
    for probe in (health, ready):  # probes over plain HTTP always get their answer
        talisman(force_https=False)(probe)
    app.extensions["gateway.talisman"] = talisman
