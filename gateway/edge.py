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
  flask-talisman works its headers out once per endpoint and scheme (:class:`_Talisman`).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request
from flask_cors import CORS
from flask_talisman import Talisman
from werkzeug.datastructures import Headers
from werkzeug.middleware.proxy_fix import ProxyFix

from gateway import response_headers
from gateway.errors import GatewayError
from gateway.quotas.headers import EXPOSED_HEADERS
from gateway.routes.meta import health, ready

ALLOWED_REQUEST_HEADERS = ("Authorization", "Content-Type", "X-API-Key", "X-Request-ID")
EXPOSED_RESPONSE_HEADERS = (*EXPOSED_HEADERS, "X-Request-ID", "Server-Timing")


class HttpsRequired(GatewayError):
    code = 403
    error_type = "invalid_request_error"
    error_code = "https_required"
    description = "This gateway only accepts HTTPS requests."


class _Talisman(Talisman):
    """flask-talisman, with the same headers worked out once per endpoint and scheme.

    Talisman rebuilds every header from its options on each response (about 3 % of a
    relayed request); here they only vary with the endpoint's own options and with
    whether HSTS applies (HTTPS, or ``X-Forwarded-Proto: https``), so its answer for
    each pair is remembered. No CSP nonce is configured: that would vary per request,
    so this class refuses one. Its two request hooks do nothing unless ``FORCE_HTTPS``
    is on (views can only opt out of it here), so they are skipped then.
    """

    def __init__(self, app: Flask, **options: Any) -> None:
        if options.get("content_security_policy_nonce_in"):
            raise ValueError("a CSP nonce changes per request: headers cannot be remembered")
        self._remembered: dict[tuple[str | None, bool], list[tuple[str, str]]] = {}
        super().__init__(app, **options)

    def _force_https(self) -> Any:
        if self.force_https:
            return super()._force_https()
        return None

    def _make_nonce(self) -> None:
        return None

    def _set_response_headers(self, response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup
        secure = req.is_secure or req.headers.get("X-Forwarded-Proto", "http") == "https"
        key = (req.endpoint, secure)
        headers = self._remembered.get(key)
        if headers is None:
            scratch = Response()
            scratch.headers = Headers()
            super()._set_response_headers(scratch)
            headers = self._remembered[key] = list(scratch.headers.items())
        response_headers.put(response.headers, headers)
        return response


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
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    if settings.allowed_origins:
        _allow_origins(app, settings.allowed_origins)
    if settings.force_https:
        app.before_request(_refuse_plain_http_writes)
    talisman = _Talisman(
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
