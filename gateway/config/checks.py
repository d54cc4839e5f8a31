"""Validation of :class:`~gateway.config.settings.Settings`: the first invalid variable
stops the process with one line naming it (:class:`~gateway.config.settings.ConfigError`),
never its value; and :func:`parse_rate_limit`, the one check for every rate limit.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from limits import RateLimitItem, parse_many

from gateway.config.settings import (
    MIN_SECRET_LENGTH,
    OIDC_SIGNING_ALGORITHMS,
    RATE_LIMIT_MAX_AMOUNT,
    RATE_LIMIT_MAX_WINDOW_SECONDS,
    STORAGE_SCHEMES,
    STRATEGIES,
    TRACES_EXPORTERS,
    ConfigError,
    Settings,
    env_name,
)

# Variables never shown by value, even in debugging output.
SECRET_FIELDS = frozenset({"master_api_key", "jwt_secret", "ai_api_key", "key_hash_pepper", "database_url", "metrics_token"})


def _check_url(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL")
    if parts.username or parts.password:
        raise ConfigError(f"{name} must not carry credentials; use AI_API_KEY")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name} must not have a query or fragment")


RATE_LIMIT_BOUNDS = f"each amount 1 to {RATE_LIMIT_MAX_AMOUNT:,} per window of at most {RATE_LIMIT_MAX_WINDOW_SECONDS // 86400} days"


def parse_rate_limit(text: str) -> tuple[RateLimitItem, ...]:
    """A rate limit in flask-limiter notation (``"100 per 15 minutes; 5 per second"``), within bounds.

    The one check for every rate limit: ``RATE_LIMIT_*`` here, and a key's own
    (``/admin/keys`` and ``flask keys``, through :mod:`gateway.store.key_fields`).
    Each amount is 1 to :data:`RATE_LIMIT_MAX_AMOUNT` per window, and each window at
    most :data:`RATE_LIMIT_MAX_WINDOW_SECONDS` (366 days, so ``1 per year`` fits): a
    window beyond what the store can expire (``5 per 99999999999999 years``) made
    every call of that key fail in Redis, and an amount of 0 cannot be counted.

    :raises ValueError: not the notation, or out of bounds (:data:`RATE_LIMIT_BOUNDS`).
    """
    items = tuple(parse_many(text))  # ValueError when not the notation
    if not items:
        raise ValueError("no rate limit")
    for item in items:
        if not 1 <= item.amount <= RATE_LIMIT_MAX_AMOUNT or not 1 <= item.get_expiry() <= RATE_LIMIT_MAX_WINDOW_SECONDS:
            raise ValueError(f"out of bounds: {RATE_LIMIT_BOUNDS}")
    return items


def _check_limit(name: str, value: str) -> None:
    try:
        parse_rate_limit(value)
    except ValueError:
        raise ConfigError(f"{name} is not a valid rate limit (e.g. '100 per 15 minutes'; {RATE_LIMIT_BOUNDS})") from None


def _check_database(settings: Settings) -> None:
    url = settings.database_url
    if url and not url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")):
        raise ConfigError("DATABASE_URL must be sqlite:///<path> or postgresql://user@host/db")
    if not 0 <= settings.key_cache_seconds <= 300:
        raise ConfigError("KEY_CACHE_SECONDS must be between 0 and 300")
    if not 1 <= settings.usage_queue_size <= 1_000_000:
        raise ConfigError("USAGE_QUEUE_SIZE must be between 1 and 1000000")
    if not 0 < settings.usage_batch_seconds <= 60:
        raise ConfigError("USAGE_BATCH_SECONDS must be more than 0 and at most 60")
    if settings.production and settings.key_hash_pepper and len(settings.key_hash_pepper) < MIN_SECRET_LENGTH:
        raise ConfigError(f"KEY_HASH_PEPPER must be at least {MIN_SECRET_LENGTH} characters in production")


def _check_metrics(settings: Settings) -> None:
    token = settings.metrics_token
    if token and (token != token.strip() or any(c.isspace() for c in token)):
        raise ConfigError("METRICS_TOKEN must not contain spaces (it is sent as Authorization: Bearer <token>)")
    if token and settings.production and len(token) < MIN_SECRET_LENGTH:
        raise ConfigError(f"METRICS_TOKEN must be at least {MIN_SECRET_LENGTH} characters in production")
    directory = settings.prometheus_multiproc_dir
    if directory and os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError("PROMETHEUS_MULTIPROC_DIR must name a directory")


_CLAIM_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,100}")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def check_provider_url(name: str, value: str, production: bool) -> None:
    """An identity provider URL: http(s), no credentials; in production https unless on loopback."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password or parts.fragment:
        raise ConfigError(f"{name} must be an http(s) URL without credentials or fragment")
    if production and parts.scheme != "https" and not is_loopback_url(value):
        raise ConfigError(f"{name} must be an https URL in production (http only on loopback)")


def _check_oidc(settings: Settings) -> None:
    if not settings.oidc_issuer:
        if settings.oidc_jwks_url or settings.oidc_audience:
            raise ConfigError("OIDC_ISSUER is required when OIDC_JWKS_URL or OIDC_AUDIENCE is set")
        return
    check_provider_url("OIDC_ISSUER", settings.oidc_issuer, settings.production)
    if urlsplit(settings.oidc_issuer).query:
        raise ConfigError("OIDC_ISSUER must not have a query")
    if settings.oidc_jwks_url:
        check_provider_url("OIDC_JWKS_URL", settings.oidc_jwks_url, settings.production)
    if not settings.oidc_audience.strip() or settings.oidc_audience != settings.oidc_audience.strip():
        raise ConfigError("OIDC_AUDIENCE is required with OIDC_ISSUER, without surrounding spaces")
    if settings.oidc_issuer == settings.jwt_issuer:
        raise ConfigError("OIDC_ISSUER must differ from JWT_ISSUER (it tells the provider's tokens from the gateway's)")
    algorithms = settings.oidc_algorithms
    if not algorithms or any(alg not in OIDC_SIGNING_ALGORITHMS for alg in algorithms):
        raise ConfigError(f"OIDC_ALGORITHMS must list some of {', '.join(OIDC_SIGNING_ALGORITHMS)} (never an HMAC algorithm or none)")
    for name in ("oidc_caller_claim", "oidc_groups_claim"):
        if not _CLAIM_NAME.fullmatch(getattr(settings, name)):
            raise ConfigError(f"{env_name(name)} must be a claim name: 1 to 100 letters, digits, '_', '.', ':', '/' or '-'")
    if not 0 < settings.oidc_jwks_timeout <= 30:
        raise ConfigError("OIDC_JWKS_TIMEOUT must be more than 0 and at most 30 seconds")


_CONSOLE_PREFIX = re.compile(r"(/[A-Za-z0-9_-]+)+")
CONSOLE_SESSION_BOUNDS = (5, 7 * 24 * 3600)
# The API's own paths: the console's pages may not shadow them (nor sit above /admin's).
_API_PATHS = (
    "/admin/keys",
    "/admin/usage",
    "/admin/audit",
    "/admin/backends",
    "/admin/prices",
    "/v1",
    "/api",
    "/auth",
    "/health",
    "/metrics",
)


def _check_console(settings: Settings) -> None:
    if not _CONSOLE_PREFIX.fullmatch(settings.admin_ui_prefix):
        raise ConfigError("ADMIN_UI_PREFIX must be a path such as /admin/ui (letters, digits, '-', '_'; no trailing '/')")
    prefix = settings.admin_ui_prefix
    if prefix == "/admin" or any(prefix == path or prefix.startswith(path + "/") for path in _API_PATHS):
        raise ConfigError("ADMIN_UI_PREFIX must not be /admin or one of the API's paths (such as /v1 or /admin/keys)")
    low, high = CONSOLE_SESSION_BOUNDS
    if not low <= settings.admin_ui_session_seconds <= high:
        raise ConfigError(f"ADMIN_UI_SESSION_SECONDS must be between {low} and {high}")


_INLINE_COMMENT = re.compile(r"\s#")


def _check_no_inline_comment(settings: Settings) -> None:
    """systemd's ``EnvironmentFile=`` and ``docker run --env-file`` keep ``KEY=abc  # note``
    whole: the comment becomes part of the secret (and makes a short one look long
    enough). python-dotenv strips it, so the same file would mean two different keys."""
    for name in sorted(SECRET_FIELDS):
        if _INLINE_COMMENT.search(getattr(settings, name)):
            raise ConfigError(
                f"{env_name(name)} contains ' #': an inline comment is kept as part of the value "
                "by systemd and Docker; put comments on their own line"
            )


def validate(settings: Settings) -> None:
    """:raises ConfigError: naming the first invalid variable."""
    if settings.production:
        _check_no_inline_comment(settings)  # first: it explains the length and space checks below
    _check_url("AI_API_URL", settings.ai_api_url)
    if settings.ai_api_base_url:
        _check_url("AI_API_BASE_URL", settings.ai_api_base_url)
    for name in ("rate_limit_general", "rate_limit_ai", "rate_limit_auth_failures"):
        _check_limit(env_name(name), getattr(settings, name))
    if settings.rate_limit_storage_uri.partition("://")[0] not in STORAGE_SCHEMES or "://" not in settings.rate_limit_storage_uri:
        raise ConfigError("RATE_LIMIT_STORAGE_URI must be memory:// or a Redis URI such as redis://host:6379/0")
    if settings.rate_limit_strategy not in STRATEGIES:
        raise ConfigError(f"RATE_LIMIT_STRATEGY must be one of {', '.join(STRATEGIES)}")
    if settings.stream_disconnect not in ("abort", "drain"):
        raise ConfigError("STREAM_DISCONNECT must be abort or drain")
    if settings.rate_limit_on_storage_error not in ("open", "closed"):
        raise ConfigError("RATE_LIMIT_ON_STORAGE_ERROR must be open or closed")
    if not 0 < settings.rate_limit_storage_timeout <= 30:
        raise ConfigError("RATE_LIMIT_STORAGE_TIMEOUT must be between 0 and 30 seconds")
    if settings.rate_limit_concurrent < 0:
        raise ConfigError("RATE_LIMIT_CONCURRENT must not be negative")
    if not settings.rate_limit_key_prefix.replace("-", "").replace("_", "").isalnum():
        raise ConfigError("RATE_LIMIT_KEY_PREFIX may only contain letters, digits, '-' and '_'")
    if not 1 <= settings.ai_proxy_port <= 65535:
        raise ConfigError("AI_PROXY_PORT must be between 1 and 65535")
    positive = (
        "jwt_expires_in",
        "max_request_bytes",
        "max_response_bytes",
        "upstream_connect_timeout",
        "upstream_read_timeout",
        "upstream_total_timeout",
        "gateway_threads",
        "gateway_worker_connections",
        "gateway_timeout",
    )
    for name in positive:
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{env_name(name)} must be positive")
    for name in (
        "trusted_proxy_count",
        "upstream_pool_size",
        "jwt_leeway",
        "gateway_graceful_timeout",
        "gateway_workers",
        "gateway_max_requests",
        "gateway_max_requests_jitter",
    ):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{env_name(name)} must not be negative")
    if settings.max_stream_event_bytes <= 0:
        raise ConfigError("MAX_STREAM_EVENT_BYTES must be positive")
    if not 0 < settings.request_body_timeout <= 3600:
        raise ConfigError("REQUEST_BODY_TIMEOUT must be more than 0 and at most 3600 seconds")
    if settings.max_connections_per_address < 0:
        raise ConfigError("MAX_CONNECTIONS_PER_ADDRESS must not be negative")
    if settings.gateway_worker_class not in ("gevent", "gthread"):
        raise ConfigError("GATEWAY_WORKER_CLASS must be gevent or gthread (sync workers cannot hold streams)")
    if settings.worker_processes > 1 and not settings.shared_limit_storage:
        raise ConfigError(
            "GATEWAY_WORKERS must be 1 while RATE_LIMIT_STORAGE_URI is memory:// "
            "(in-memory quotas are per process); use a shared store such as redis:// for more workers"
        )
    for origin in settings.allowed_origins:
        if origin == "*":
            if settings.production:
                raise ConfigError("ALLOWED_ORIGINS must list exact origins, not '*', in production")
        elif urlsplit(origin).scheme not in ("http", "https") or not urlsplit(origin).hostname:
            raise ConfigError("ALLOWED_ORIGINS must be a comma-separated list of origins like https://app.example")
    _check_database(settings)
    _check_metrics(settings)
    _check_oidc(settings)
    _check_console(settings)
    if settings.otel_traces_exporter not in TRACES_EXPORTERS:
        raise ConfigError(f"OTEL_TRACES_EXPORTER must be one of {', '.join(TRACES_EXPORTERS)} (otlp: OTLP over HTTP)")
    if settings.production:
        for name in ("master_api_key", "jwt_secret"):
            value = getattr(settings, name)
            if not value:
                raise ConfigError(f"{env_name(name)} is required in production")
            if len(value) < MIN_SECRET_LENGTH:
                raise ConfigError(f"{env_name(name)} must be at least {MIN_SECRET_LENGTH} characters in production")
        if settings.master_api_key == settings.jwt_secret:
            raise ConfigError("JWT_SECRET must differ from MASTER_API_KEY")
