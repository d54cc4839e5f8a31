"""Settings: defaults <- .env file <- process environment <- overrides.

This is the only module that reads the environment. Everything else receives a
:class:`Settings` (the app keeps it in ``app.config["GATEWAY"]``).

A bad value stops the process with one line naming the variable, never its value
(:class:`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from limits import RateLimitItem, parse_many

log = logging.getLogger(__name__)

MIN_SECRET_LENGTH = 32
STRATEGIES = ("moving-window", "sliding-window-counter", "fixed-window")
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster",
                   "valkey", "valkeys", "valkey+unix", "valkey+sentinel", "valkey+cluster")
DEFAULT_AI_API_URL = "http://localhost:11434/v1/completions"
# Bounds of every rate limit (RATE_LIMIT_* and a key's own): see parse_rate_limit.
RATE_LIMIT_MAX_AMOUNT = 1_000_000_000
RATE_LIMIT_MAX_WINDOW_SECONDS = 366 * 24 * 3600
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(RuntimeError):
    """Invalid configuration. The message names the variable, never its value."""


def _env_name(field_name: str) -> str:
    return field_name.upper()


@dataclass(frozen=True)
class Settings:
    # --- the original contract -------------------------------------------------
    ai_proxy_host: str = "0.0.0.0"
    ai_proxy_port: int = 8767
    master_api_key: str = ""
    jwt_secret: str = ""
    ai_api_url: str = DEFAULT_AI_API_URL
    ai_api_key: str = ""
    allowed_origins: tuple[str, ...] = ()
    node_env: str = "development"

    # --- quotas ------------------------------------------------------------------
    rate_limit_general: str = "100 per 15 minutes"
    rate_limit_ai: str = "20 per 15 minutes"
    rate_limit_auth_failures: str = "10 per 15 minutes"
    rate_limit_storage_uri: str = "memory://"
    rate_limit_strategy: str = "moving-window"
    rate_limit_concurrent: int = 0  # in-flight AI requests per caller; 0 = no limit
    rate_limit_on_storage_error: str = "open"
    rate_limit_storage_timeout: float = 0.5
    rate_limit_key_prefix: str = "aiproxy"

    # --- tokens ------------------------------------------------------------------
    jwt_expires_in: int = 3600
    jwt_issuer: str = "ai-proxy-gateway"
    jwt_audience: str = "ai-proxy-gateway"
    jwt_leeway: int = 30

    # --- upstream ----------------------------------------------------------------
    ai_api_base_url: str = ""  # derived from ai_api_url when empty
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 120.0
    upstream_total_timeout: float = 600.0
    upstream_pool_size: int = 0  # 0: as many as the worker's concurrency
    upstream_trust_env: bool = False
    upstream_stream_usage: bool = True  # ask streams for usage (stream_options.include_usage)
    max_request_bytes: int = 8 * 1024 * 1024
    max_response_bytes: int = 64 * 1024 * 1024
    max_stream_event_bytes: int = 1024 * 1024  # one SSE event from the upstream; a larger one ends the stream

    # --- HTTP edge ---------------------------------------------------------------
    trusted_proxy_count: int = 0
    force_https: bool = False
    request_body_timeout: float = 30.0  # seconds a request body may take to arrive (gevent worker)
    max_connections_per_address: int = 64  # unauthenticated, per client address and worker; 0 = no cap (gevent worker)
    log_level: str = "INFO"

    # --- gunicorn (read by gunicorn.conf.py) -------------------------------------
    gateway_worker_class: str = "gevent"
    gateway_workers: int = 0  # 0: one on memory://, one per core with a shared store
    gateway_threads: int = 32
    gateway_worker_connections: int = 1000
    gateway_timeout: int = 30
    gateway_graceful_timeout: int = 30
    gateway_max_requests: int = 0
    gateway_max_requests_jitter: int = 0

    # --- where generated development secrets live ----------------------------------
    instance_path: str = str(PROJECT_ROOT / "instance")

    # --- managed keys and usage storage (gateway.store, gateway.auth.keys) ------------
    database_url: str = ""  # empty: the SQLite file <instance_path>/gateway.db
    database_auto_upgrade: bool = False  # also upgrade a configured DATABASE_URL at start (one instance only)
    key_cache_seconds: float = 5.0  # how long a key lookup is trusted; revocation delay
    key_hash_pepper: str = ""  # empty: derived from JWT_SECRET
    usage_queue_size: int = 10_000  # usage records a worker holds while the database is slow or down
    usage_batch_seconds: float = 0.5  # how long the usage writer gathers a batch before inserting it

    # --- metrics (gateway.metrics) --------------------------------------------------
    metrics_token: str = ""  # a scrape credential for GET /metrics only; empty: master key only
    prometheus_multiproc_dir: str = ""  # empty: the gateway creates (and removes) its own directory

    # Names of variables that came from generated development secrets.
    generated: tuple[str, ...] = field(default=(), compare=False)

    @property
    def production(self) -> bool:
        return self.node_env.strip().lower() == "production"

    @property
    def upstream_base_url(self) -> str:
        """The upstream's ``/v1`` base: every AI operation's path is joined to it."""
        if self.ai_api_base_url:
            return self.ai_api_base_url.rstrip("/")
        url = self.ai_api_url.rstrip("/")
        for suffix in ("/chat/completions", "/completions"):
            if url.endswith(suffix):
                return url[: -len(suffix)]
        return url

    @property
    def worker_concurrency(self) -> int:
        if self.gateway_worker_class == "gevent":
            return self.gateway_worker_connections
        if self.gateway_worker_class == "gthread":
            return self.gateway_threads
        return 1

    @property
    def shared_limit_storage(self) -> bool:
        return not self.rate_limit_storage_uri.startswith("memory://")

    @property
    def worker_processes(self) -> int:
        if self.gateway_workers:
            return self.gateway_workers
        return usable_cores() if self.shared_limit_storage else 1


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity, which ``taskset``, systemd's
    ``CPUAffinity=`` and a container's cpuset narrow (Python 3.13's
    ``os.process_cpu_count()``); the machine's count where affinity is unknown. More
    workers than that only take turns on the same cores."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


# Variables whose env name differs from the field name.
_ALIASES: dict[str, tuple[str, ...]] = {
    "node_env": ("NODE_ENV", "APP_ENV"),
}
# Variables never shown by value, even in debugging output.
SECRET_FIELDS = frozenset({"master_api_key", "jwt_secret", "ai_api_key", "key_hash_pepper", "database_url",
                           "metrics_token"})
# Read by load() itself, not a Settings field: which .env file to read.
ENV_FILE_VARIABLE = "AI_PROXY_ENV_FILE"


def variable_names() -> tuple[str, ...]:
    """Every environment variable the gateway reads, in Settings order (the first
    name where a field has aliases). .env.example and the README list them all."""
    names = [_ALIASES.get(f.name, (_env_name(f.name),))[0]
             for f in dataclasses.fields(Settings) if f.name != "generated"]
    return (*names, ENV_FILE_VARIABLE)


def _convert(name: str, raw: str, target: Any) -> Any:
    raw = raw.strip()
    try:
        if target is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if target is int:
            return int(raw)
        if target is float:
            return float(raw)
        if target == tuple[str, ...]:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{_env_name(name)} is not a valid {target.__name__}") from None
    return raw


def load(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env_file: str | None = None,
) -> Settings:
    """Read settings from the environment (and a ``.env`` file), then validate them.

    :param environ: the environment; ``os.environ`` when ``None``.
    :param overrides: field values that win over everything (used by tests).
    :param env_file: path of the ``.env`` file; ``AI_PROXY_ENV_FILE`` or ``./.env``.
    :raises ConfigError: on any invalid value, naming the variable.
    """
    environ = os.environ if environ is None else environ
    env_file = env_file or environ.get(ENV_FILE_VARIABLE) or ".env"
    source: dict[str, str] = {}
    if env_file and os.path.isfile(env_file):
        source.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    source.update(environ)

    values: dict[str, Any] = {}
    hints = {f.name: f.type for f in dataclasses.fields(Settings)}
    types = {"int": int, "float": float, "bool": bool, "str": str, "tuple[str, ...]": tuple[str, ...]}
    for f in dataclasses.fields(Settings):
        if f.name == "generated":
            continue
        for env_name in _ALIASES.get(f.name, (_env_name(f.name),)):
            if env_name in source:
                values[f.name] = _convert(f.name, source[env_name], types[str(hints[f.name])])
                break
    values.update(overrides or {})
    settings = Settings(**values)
    settings = _with_development_secrets(settings)
    validate(settings)
    return settings


def _with_development_secrets(settings: Settings) -> Settings:
    """In development, create strong secrets once and share them with every worker.

    They live in ``<instance_path>/secrets.json`` (git-ignored). The file is written
    to a temporary name and linked into place, so concurrent workers either create it
    or read the complete file another worker created.
    """
    if settings.production:
        return settings
    missing = [name for name in ("master_api_key", "jwt_secret") if not getattr(settings, name)]
    if not missing:
        return settings
    path = Path(settings.instance_path) / "secrets.json"
    stored = _read_or_create_secrets(path)
    return dataclasses.replace(
        settings,
        generated=tuple(missing),
        **{name: stored[name] for name in missing},
    )


def _read_or_create_secrets(path: Path) -> dict[str, str]:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = {name: secrets.token_urlsafe(32) for name in ("master_api_key", "jwt_secret")}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secrets-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(fresh, handle)
            os.chmod(tmp, 0o600)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another worker won the race; read its file below
        finally:
            os.unlink(tmp)
    try:
        stored = json.loads(path.read_text())
        if not all(isinstance(stored.get(k), str) and stored[k] for k in ("master_api_key", "jwt_secret")):
            raise ValueError
    except (OSError, ValueError):
        raise ConfigError(f"{path} is unreadable; delete it to generate new development secrets") from None
    return stored


def describe_upstream(settings: Settings) -> str:
    """The upstream as scheme://host:port/path, safe to log (URLs never carry
    credentials: validate() refuses them; the key is AI_API_KEY, never shown)."""
    parts = urlsplit(settings.upstream_base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}{parts.path or '/'}"


def log_startup(settings: Settings) -> None:
    """Say once, at start, which mode this is and where AI requests go.

    Development is a WARNING on purpose: a deployment that lost ``NODE_ENV=production``
    (an env file that overrides it) runs with generated secrets and without the
    production checks, and this line is the one place that says so.
    """
    if settings.production:
        log.info("PRODUCTION mode (NODE_ENV=production): secrets required, production checks on")
    else:
        where = (f"generated {', '.join(_env_name(name) for name in settings.generated)} kept in "
                 f"{Path(settings.instance_path) / 'secrets.json'}" if settings.generated else "secrets from the environment")
        log.warning("DEVELOPMENT mode (NODE_ENV=%s): %s, production checks off; set NODE_ENV=production for "
                    "any deployment", settings.node_env or "unset", where)
    variable = "AI_API_BASE_URL" if settings.ai_api_base_url else "AI_API_URL"
    log.info("upstream %s (from %s)", describe_upstream(settings), variable)
    if not settings.ai_api_base_url and settings.ai_api_url == DEFAULT_AI_API_URL:
        log.warning("AI_API_URL is the default %s: a local Ollama on this host "
                    "(inside a container, the container itself)", DEFAULT_AI_API_URL)


def _check_url(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL")
    if parts.username or parts.password:
        raise ConfigError(f"{name} must not carry credentials; use AI_API_KEY")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name} must not have a query or fragment")


RATE_LIMIT_BOUNDS = (f"each amount 1 to {RATE_LIMIT_MAX_AMOUNT:,} per window of at most "
                     f"{RATE_LIMIT_MAX_WINDOW_SECONDS // 86400} days")


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


_INLINE_COMMENT = re.compile(r"\s#")


def _check_no_inline_comment(settings: Settings) -> None:
    """systemd's ``EnvironmentFile=`` and ``docker run --env-file`` keep ``KEY=abc  # note``
    whole: the comment becomes part of the secret (and makes a short one look long
    enough). python-dotenv strips it, so the same file would mean two different keys."""
    for name in sorted(SECRET_FIELDS):
        if _INLINE_COMMENT.search(getattr(settings, name)):
            raise ConfigError(f"{_env_name(name)} contains ' #': an inline comment is kept as part of the value "
                              "by systemd and Docker; put comments on their own line")


def validate(settings: Settings) -> None:
    """:raises ConfigError: naming the first invalid variable."""
    if settings.production:
        _check_no_inline_comment(settings)  # first: it explains the length and space checks below
    _check_url("AI_API_URL", settings.ai_api_url)
    if settings.ai_api_base_url:
        _check_url("AI_API_BASE_URL", settings.ai_api_base_url)
    for name in ("rate_limit_general", "rate_limit_ai", "rate_limit_auth_failures"):
        _check_limit(_env_name(name), getattr(settings, name))
    if settings.rate_limit_storage_uri.partition("://")[0] not in STORAGE_SCHEMES or "://" not in settings.rate_limit_storage_uri:
        raise ConfigError("RATE_LIMIT_STORAGE_URI must be memory:// or a Redis URI such as redis://host:6379/0")
    if settings.rate_limit_strategy not in STRATEGIES:
        raise ConfigError(f"RATE_LIMIT_STRATEGY must be one of {', '.join(STRATEGIES)}")
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
    positive = ("jwt_expires_in", "max_request_bytes", "max_response_bytes", "upstream_connect_timeout",
                "upstream_read_timeout", "upstream_total_timeout", "gateway_threads",
                "gateway_worker_connections", "gateway_timeout")
    for name in positive:
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{_env_name(name)} must be positive")
    for name in ("trusted_proxy_count", "upstream_pool_size", "jwt_leeway", "gateway_graceful_timeout", "gateway_workers",
                 "gateway_max_requests", "gateway_max_requests_jitter"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{_env_name(name)} must not be negative")
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
    if settings.production:
        for name in ("master_api_key", "jwt_secret"):
            value = getattr(settings, name)
            if not value:
                raise ConfigError(f"{_env_name(name)} is required in production")
            if len(value) < MIN_SECRET_LENGTH:
                raise ConfigError(f"{_env_name(name)} must be at least {MIN_SECRET_LENGTH} characters in production")
        if settings.master_api_key == settings.jwt_secret:
            raise ConfigError("JWT_SECRET must differ from MASTER_API_KEY")
