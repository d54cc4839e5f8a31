"""Quotas through flask-limiter.

- ``RATE_LIMIT_GENERAL``: one application-wide bucket per caller, every endpoint but
  ``/health`` and CORS preflights.
- ``RATE_LIMIT_AI``: one more bucket per caller shared by every AI endpoint.
- ``RATE_LIMIT_AUTH_FAILURES``: failed ``POST /auth/token`` attempts per client address.

The key is the caller's identity (a key id; a token's subject is the key that
minted it, so both share a quota), or the client address where nobody is
authenticated. The address is the socket's unless ``TRUSTED_PROXY_COUNT`` is set
(see :mod:`gateway.edge`), so a client-sent ``X-Forwarded-For`` never resets a quota.
"""

from __future__ import annotations

import time

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RequestLimit

from gateway import auth
from gateway.auth.views import blueprint as auth_blueprint
from gateway.routes.ai import blueprint as ai_blueprint
from gateway.routes.meta import health

AI_SCOPE = "ai"
AUTH_FAILURE_SCOPE = "auth-failures"
EXPOSED_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")


def client_address() -> str:
    return f"addr:{request.remote_addr or 'unknown'}"


def caller_key() -> str:
    caller = auth.current_caller()
    return f"key:{caller.id}" if caller else client_address()


def _failed_attempt(response: Response) -> bool:
    return response.status_code == 401


def _tightest(limits: list[RequestLimit]) -> tuple[RequestLimit, int, int] | None:
    """The limit closest to running out, with its remaining count and reset time."""
    best = None
    for limit in limits:
        remaining = 0 if limit.breached else limit.remaining
        if best is None or remaining < best[1] or (limit.breached and not best[0].breached):
            best = (limit, remaining, int(limit.reset_at))
    return best


def _rate_limit_headers(response: Response) -> Response:
    limiter: Limiter = current_app.extensions["gateway.limiter"]
    tightest = _tightest(limiter.current_limits)
    if tightest is None:
        return response
    limit, remaining, reset_at = tightest
    response.headers["X-RateLimit-Limit"] = str(limit.limit.amount)
    response.headers["X-RateLimit-Remaining"] = str(remaining)
    response.headers["X-RateLimit-Reset"] = str(reset_at)
    if response.status_code == 429 and "Retry-After" not in response.headers:
        window = limit.limit.get_expiry()
        response.headers["Retry-After"] = str(max(1, min(window, reset_at - int(time.time()))))
    return response


def describe(endpoint: str) -> list[str]:
    """The quotas that apply to an endpoint, for ``GET /``."""
    settings = current_app.config["GATEWAY"]
    if endpoint == "meta.health":
        return []
    quotas = [f"{settings.rate_limit_general} per caller (all endpoints)"]
    if endpoint.startswith(f"{ai_blueprint.name}."):
        quotas.append(f"{settings.rate_limit_ai} per caller (all AI endpoints)")
    if endpoint.startswith(f"{auth_blueprint.name}."):
        quotas.append(f"{settings.rate_limit_auth_failures} failed attempts per client address")
    return quotas


def init_app(app: Flask) -> None:
    settings = app.config["GATEWAY"]
    limiter = Limiter(
        key_func=caller_key,
        application_limits=[settings.rate_limit_general],
        storage_uri=settings.rate_limit_storage_uri,
        strategy="fixed-window",
        headers_enabled=False,  # _rate_limit_headers names the tightest limit instead
        key_prefix="aiproxy",
    )
    limiter.init_app(app)
    limiter.request_filter(auth.is_preflight)
    limiter.exempt(health)
    limiter.shared_limit(settings.rate_limit_ai, scope=AI_SCOPE, override_defaults=False)(ai_blueprint)
    limiter.limit(
        settings.rate_limit_auth_failures,
        key_func=client_address,
        scope=AUTH_FAILURE_SCOPE,
        deduct_when=_failed_attempt,
        override_defaults=False,
    )(auth_blueprint)
    app.after_request(_rate_limit_headers)
    app.extensions["gateway.limiter"] = limiter
