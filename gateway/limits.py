"""Quotas through flask-limiter.

- ``RATE_LIMIT_GENERAL``: one application-wide bucket per caller, every endpoint but
  the probes and scrapes given to :func:`exempt` (``/health``, ``/health/ready``,
  ``/metrics``) and CORS preflights.
- ``RATE_LIMIT_AI``: one more bucket per caller shared by every AI endpoint.
- ``RATE_LIMIT_AUTH_FAILURES``: failed ``POST /auth/token`` attempts per client address.
- ``RATE_LIMIT_CONCURRENT``: in-flight AI requests per caller (:mod:`gateway.inflight`).

The key is the caller's identity (a key id; a token's subject is the key that
minted it, so both share a quota), or the client address where nobody is
authenticated. The address is the socket's unless ``TRUSTED_PROXY_COUNT`` is set
(see :mod:`gateway.edge`), so a client-sent ``X-Forwarded-For`` never resets a quota.

Counters live where ``RATE_LIMIT_STORAGE_URI`` says: ``memory://`` (one process) or
Redis (shared by every worker of every instance). When the store fails,
``RATE_LIMIT_ON_STORAGE_ERROR`` decides: ``closed`` answers 503; ``open`` serves,
counting per process until the store is back, and reports it on ``/health/ready``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app
from flask_limiter import Limiter, RequestLimit
from limits.errors import StorageError

from gateway import auth, quotas
from gateway.auth.views import blueprint as auth_blueprint
from gateway.config import Settings
from gateway.inflight import InFlight
from gateway.routes.ai import blueprint as ai_blueprint
from gateway.routes.meta import health, ready

log = logging.getLogger(__name__)

AI_SCOPE = "ai"
AUTH_FAILURE_SCOPE = "auth-failures"
GENERAL_POLICY = "general"
EXPOSED_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After",
                   "RateLimit", "RateLimit-Policy")


def _failed_attempt(response: Response) -> bool:
    return response.status_code == 401


def storage_options(settings: Settings) -> dict[str, Any]:
    """Options for the limits storage: short socket timeouts, no client-side retries.

    An unreachable Redis then costs a request at most ``RATE_LIMIT_STORAGE_TIMEOUT``
    before the outage policy applies, instead of redis-py's default retries.
    """
    if not settings.shared_limit_storage:
        return {}
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeout = settings.rate_limit_storage_timeout
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "wrap_exceptions": True,
    }


class StorageHealth:
    """Tracks whether the quota store answers, logging one line per outage."""

    def __init__(self) -> None:
        self.down_since: float | None = None

    def failed(self) -> None:
        if self.down_since is None:
            self.down_since = time.time()
            log.error("rate limit storage unreachable; outage policy applies until it answers again")

    def recovered(self) -> None:
        if self.down_since is not None:
            log.warning("rate limit storage answers again after %.1f s", time.time() - self.down_since)
            self.down_since = None


def policy_name(limit: RequestLimit) -> str:
    """The quota's name as the headers show it: ``general``, ``ai`` or ``auth-failures``."""
    scope = limit.request_args[-1].rpartition(":")[2]
    return GENERAL_POLICY if scope == "global" else scope


def _tightest(limits: list[RequestLimit]) -> tuple[RequestLimit, int, int] | None:
    """The limit closest to running out (a breached one first), with remaining and reset."""
    best = None
    for limit in limits:
        remaining = 0 if limit.breached else limit.remaining
        key = (not limit.breached, remaining)
        if best is None or key < best[0]:
            best = (key, limit, remaining, int(limit.reset_at))
    return best[1:] if best else None


def _rate_limit_headers(response: Response) -> Response:
    limiter: Limiter = current_app.extensions["gateway.limiter"]
    health: StorageHealth = current_app.extensions["gateway.limits.health"]
    # flask-limiter switches to its in-memory fallback (open policy) by setting this flag.
    if getattr(limiter, "_storage_dead", False):
        health.failed()
    elif health.down_since is not None and response.status_code != 503:
        health.recovered()
    try:
        limits = limiter.current_limits
        tightest = _tightest(limits)
    except StorageError:
        return response
    if tightest is None:
        return response
    limit, remaining, reset_at = tightest
    now = int(time.time())
    window = limit.limit.get_expiry()
    seconds_left = max(0, min(window, reset_at - now))
    headers = response.headers
    headers["X-RateLimit-Limit"] = str(limit.limit.amount)
    headers["X-RateLimit-Remaining"] = str(remaining)
    headers["X-RateLimit-Reset"] = str(reset_at)
    headers["RateLimit-Policy"] = ", ".join(
        f'"{policy_name(each)}";q={each.limit.amount};w={each.limit.get_expiry()}' for each in limits)
    headers["RateLimit"] = f'"{policy_name(limit)}";r={remaining};t={seconds_left}'
    if response.status_code == 429 and "Retry-After" not in headers:
        headers["Retry-After"] = str(max(1, seconds_left))
    return response


def describe(endpoint: str) -> list[str]:
    """The quotas that apply to an endpoint, for ``GET /``."""
    settings = current_app.config["GATEWAY"]
    if endpoint in current_app.extensions["gateway.limits.exempt"]:
        return []
    described = [f"{settings.rate_limit_general} per caller (all endpoints; a key may have its own)"]
    if endpoint.startswith(f"{ai_blueprint.name}."):
        described.append(f"{settings.rate_limit_ai} per caller (all AI endpoints; a key may have its own)")
        if settings.rate_limit_concurrent:
            described.append(f"{settings.rate_limit_concurrent} concurrent requests per caller")
    if endpoint.startswith(f"{auth_blueprint.name}."):
        described.append(f"{settings.rate_limit_auth_failures} failed attempts per client address")
    return described


def storage_ready() -> bool:
    """Whether the quota store answers now (for ``/health/ready``)."""
    limiter: Limiter = current_app.extensions["gateway.limiter"]
    health: StorageHealth = current_app.extensions["gateway.limits.health"]
    try:
        answers = bool(limiter.storage.check())
    except Exception:  # any client error means "not answering"; check() has a short timeout
        answers = False
    if answers:
        health.recovered()
        # flask-limiter re-checks a dead store only every 1-32 s; a store that answers
        # a probe is back, so counting moves back to it now rather than later.
        limiter._storage_dead = False
    else:
        health.failed()
    return answers


def exempt(app: Flask, view: Callable[..., Any], endpoint: str) -> None:
    """No quota at all for ``view`` (served at ``endpoint``): probes and scrapes that
    infrastructure calls often and that never reach the upstream. Who may call it is
    still the auth hook's decision."""
    app.extensions["gateway.limiter"].exempt(view)
    app.extensions["gateway.limits.exempt"].add(endpoint)


def init_app(app: Flask) -> None:
    settings: Settings = app.config["GATEWAY"]
    limiter = Limiter(
        key_func=auth.caller_key,
        application_limits=[quotas.general_limit],  # a key's own limit, else RATE_LIMIT_GENERAL
        storage_uri=settings.rate_limit_storage_uri,
        storage_options=storage_options(settings),
        strategy=settings.rate_limit_strategy,
        headers_enabled=False,  # _rate_limit_headers names the tightest limit instead
        key_prefix=settings.rate_limit_key_prefix,
        in_memory_fallback_enabled=settings.rate_limit_on_storage_error == "open",
        swallow_errors=False,
    )
    limiter.init_app(app)
    limiter.request_filter(auth.is_preflight)
    app.extensions["gateway.limiter"] = limiter
    app.extensions["gateway.limits.exempt"] = set()
    exempt(app, health, "meta.health")
    exempt(app, ready, "meta.ready")
    limiter.shared_limit(quotas.ai_limit, scope=AI_SCOPE, override_defaults=False)(ai_blueprint)
    limiter.limit(
        settings.rate_limit_auth_failures,
        key_func=auth.client_address,
        scope=AUTH_FAILURE_SCOPE,
        deduct_when=_failed_attempt,
        override_defaults=False,
    )(auth_blueprint)
    app.after_request(_rate_limit_headers)
    app.extensions["gateway.limits.health"] = StorageHealth()
    app.extensions["gateway.inflight"] = InFlight.from_settings(settings, limiter.storage)
    app.extensions["gateway.tokens_ledger"] = quotas.TokenLedger.from_settings(settings, limiter.storage)
