"""Authentication: one app-level ``before_request`` hook, deny by default.

Only the endpoints in :data:`gateway.auth.endpoints.PUBLIC_ENDPOINTS` and CORS preflights are served
without credentials; every other route, including ones added later, needs an API
key (``X-API-Key`` or ``Authorization: Bearer <key>``) or a JWT from
``POST /auth/token`` (``Authorization: Bearer <jwt>``).

Every credential presented must be valid: a good key next to a bad token is a 401.
Keys are the master key or managed keys (:mod:`gateway.auth.keys`, stored by
:mod:`gateway.store`); a JWT counts only while the key it names is active.

A bearer JWT from the company's identity provider (``OIDC_ISSUER`` set, the token's ``iss``)
is checked by :mod:`gateway.auth.oidc` instead, which also gives the caller its policy.

``METRICS_TOKEN`` is not an API key: it is accepted only on the endpoints in
:data:`gateway.auth.endpoints.METRICS_TOKEN_ENDPOINTS`, only as ``Authorization: Bearer <token>``, and only
as the request's one credential. Anywhere else it is an unknown key (401).

The console's session cookie (:mod:`gateway.auth.session`) is a credential on the
endpoints of :data:`gateway.auth.endpoints.SESSION_BLUEPRINT` only (the caller is then
the key that signed in, ``via="console"``); without a valid one there, the headers are
checked as everywhere.

A request admitted with a credential (any of the above) is marked in its WSGI
environ: ``environ[AUTHENTICATED_ENVIRON_KEY] is True`` (``"gateway.authenticated"``).
The gevent worker (:mod:`gateway.server`) reads the mark to stop counting the
request's connection against ``MAX_CONNECTIONS_PER_ADDRESS``. Public endpoints and
preflights do not set it; neither does a refused credential.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flask import Flask, request

from gateway import extensions
from gateway.auth import oidc, tokens
from gateway.auth.endpoints import METRICS_TOKEN_ENDPOINTS, PUBLIC_ENDPOINTS, SESSION_BLUEPRINT
from gateway.auth.keys import KeyRing
from gateway.auth.management import KeyAdmin
from gateway.auth.session import SESSION_VIA, signed_in
from gateway.auth.views import blueprint
from gateway.config import MIN_SECRET_LENGTH, Settings
from gateway.errors import TokenExpired, Unauthorized
from gateway.exchange import current, current_or_none
from gateway.store.audit import Actor

if TYPE_CHECKING:
    from gateway.quotas.policy import CallerPolicy

log = logging.getLogger(__name__)

METRICS_SCRAPER_ID = "metrics-scraper"
# WSGI environ key set to True on a request the hook admitted with a credential.
AUTHENTICATED_ENVIRON_KEY = "gateway.authenticated"


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key id (never the secret) and how they proved it."""

    id: str
    via: str  # "api_key", "jwt", "oidc", "metrics_token" or "console"
    policy: CallerPolicy | None = field(default=None, compare=False, repr=False)  # set by auth itself (oidc)


def is_preflight() -> bool:
    req = request._get_current_object()  # type: ignore[attr-defined]
    return req.method == "OPTIONS" and "Access-Control-Request-Method" in req.headers


def is_public() -> bool:
    req = request._get_current_object()  # type: ignore[attr-defined]
    return (req.endpoint, req.method) in PUBLIC_ENDPOINTS or is_preflight()


def current_caller() -> Caller | None:
    """Who is calling the current request (``None``: nobody authenticated, or no request record)."""
    exchange = current_or_none()
    return exchange.caller if exchange is not None else None


def request_actor() -> Actor:
    """Who changes a key in this request, for the audit log: the caller (``master``), how it
    authenticated (``api_key``, ``jwt`` or ``console``), the client address (after ProxyFix)
    and the request id."""
    caller = current_caller()
    exchange = current_or_none()
    return Actor(
        name=caller.id if caller else "unknown",
        via=caller.via if caller else "unknown",
        address=request.remote_addr or "unknown",
        request_id=exchange.request_id if exchange is not None else None,
    )


def client_address() -> str:
    """Quota key for an unauthenticated request: the client's address."""
    return f"addr:{request.remote_addr or 'unknown'}"


def caller_key() -> str:
    """Quota key: the caller's key id, or the client address when nobody is authenticated."""
    caller = current_caller()
    return f"key:{caller.id}" if caller else client_address()


def _keys() -> KeyRing:
    return extensions.keys()


def _token_config() -> tokens.TokenConfig:
    return extensions.tokens()


def _from_api_key(secret: str) -> Caller:
    key_id = _keys().identify(secret)
    if key_id is None:
        raise Unauthorized()
    return Caller(key_id, "api_key")


def _from_authorization(header: str) -> Caller:
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise Unauthorized()
    if not tokens.looks_like_jwt(value):
        return _from_api_key(value)
    provider = oidc.provider()
    if provider is not None and provider.issued(value):
        caller_id, policy = oidc.authenticate(provider, value)
        return Caller(caller_id, oidc.VIA, policy)
    try:
        subject = tokens.verify(_token_config(), value)
    except tokens.InvalidToken as error:
        if error.expired_at is not None:
            when = datetime.fromtimestamp(error.expired_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise TokenExpired(f"The token expired at {when} (UTC). Get a new one from POST /auth/token.") from None
        raise Unauthorized() from None
    if not _keys().is_active(subject):
        raise Unauthorized()
    return Caller(subject, "jwt")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _from_metrics_token() -> Caller | None:
    """The scraper, when ``Bearer <METRICS_TOKEN>`` is the only credential on a metrics endpoint."""
    expected = extensions.metrics_token()
    if expected is None or (request.endpoint, request.method) not in METRICS_TOKEN_ENDPOINTS:
        return None
    if "X-API-Key" in request.headers:
        return None  # two credentials: each must be a valid key, as everywhere else
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    # Digests of equal length: the comparison time says nothing about the token, not even its length.
    if hmac.compare_digest(_digest(value.strip()), expected):
        return Caller(METRICS_SCRAPER_ID, "metrics_token")
    return None


def _from_console_session() -> Caller | None:
    """The console's signed-in operator, on the console's endpoints only (see the module)."""
    if request.blueprint != SESSION_BLUEPRINT:
        return None
    found = signed_in()
    return Caller(found[0], SESSION_VIA) if found is not None else None


def authenticate() -> Caller:
    """Resolve the caller from the request's credentials.

    :raises Unauthorized: when none is presented or any presented one is invalid.
    """
    headers = request.headers
    api_key = headers.get("X-API-Key")
    authorization = headers.get("Authorization")
    if api_key is None and authorization is None:
        raise Unauthorized(
            "No credentials. Send X-API-Key: <key> or Authorization: Bearer <token>.",
            error_code="missing_credentials",
        )
    callers = []
    if api_key is not None:
        callers.append(_from_api_key(api_key))
    if authorization is not None:
        callers.append(_from_authorization(authorization))
    if len({caller.id for caller in callers}) != 1:
        raise Unauthorized()
    return callers[-1]


def require_credentials() -> None:
    if is_public():
        return
    exchange = current()
    caller = exchange.caller = _from_metrics_token() or _from_console_session() or authenticate()
    if caller.policy is not None:
        exchange.policy = caller.policy
    request.environ[AUTHENTICATED_ENVIRON_KEY] = True


def _explain_development_secrets(settings: Settings) -> None:
    if settings.generated:
        names = ", ".join(name.upper() for name in settings.generated)
        log.warning("development mode: %s not set; using generated values kept in %s/secrets.json", names, settings.instance_path)
        if "master_api_key" in settings.generated:
            log.warning(
                'authenticate with: X-API-Key: $(python3 -c "import json; '
                "print(json.load(open('%s/secrets.json'))['master_api_key'])\")",
                settings.instance_path,
            )
    if not settings.production and len(settings.master_api_key) < MIN_SECRET_LENGTH:
        log.warning("development mode: MASTER_API_KEY is shorter than %d characters; production would refuse it", MIN_SECRET_LENGTH)


def init_app(app: Flask) -> None:
    settings = app.config["GATEWAY"]
    _explain_development_secrets(settings)
    key_store = extensions.store(app).keys
    key_ring = app.extensions[extensions.KEYS] = KeyRing.from_settings(settings, key_store)
    app.extensions[extensions.KEY_ADMIN] = KeyAdmin(key_ring, key_store)
    app.extensions[extensions.TOKENS] = tokens.TokenConfig(
        secret=settings.jwt_secret,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        expires_in=settings.jwt_expires_in,
        leeway=settings.jwt_leeway,
    )
    app.extensions[extensions.METRICS_TOKEN] = _digest(settings.metrics_token) if settings.metrics_token else None
    oidc.init_app(app)
    app.before_request(require_credentials)
    app.register_blueprint(blueprint)
