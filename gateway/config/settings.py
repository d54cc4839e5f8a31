"""The :class:`Settings` record: every variable the gateway reads, typed, with its default.

Frozen: built once at start (:func:`gateway.config.load`) and handed to whoever needs it
(the app keeps it in ``app.config["GATEWAY"]``). A field's environment variable is its
name in upper case, unless :mod:`gateway.config.loading` lists aliases for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MIN_SECRET_LENGTH = 32
STRATEGIES = ("moving-window", "sliding-window-counter", "fixed-window")
STORAGE_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "redis+unix",
    "redis+sentinel",
    "redis+cluster",
    "valkey",
    "valkeys",
    "valkey+unix",
    "valkey+sentinel",
    "valkey+cluster",
)
DEFAULT_AI_API_URL = "http://localhost:11434/v1/completions"
TRACES_EXPORTERS = ("none", "otlp", "console")
# Bounds of every rate limit (RATE_LIMIT_* and a key's own): see gateway.config.checks.parse_rate_limit.
RATE_LIMIT_MAX_AMOUNT = 1_000_000_000
RATE_LIMIT_MAX_WINDOW_SECONDS = 366 * 24 * 3600
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
# Signature algorithms OIDC_ALGORITHMS may name: asymmetric only (never HMAC, never none).
OIDC_SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class ConfigError(RuntimeError):
    """Invalid configuration. The message names the variable, never its value."""


def env_name(field_name: str) -> str:
    """The environment variable of a :class:`Settings` field (without aliases)."""
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
    stream_disconnect: str = "abort"  # a client gone mid-stream: "abort" the upstream, or "drain" it for its usage

    # --- several backends (gateway.backends) ----------------------------------------
    gateway_config: str = ""  # path of the backends YAML file; empty: one upstream from AI_API_URL

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

    # --- tokens from the company's identity provider (gateway.auth.oidc) -----------------
    oidc_issuer: str = ""  # empty: no identity provider; its tokens' iss, and where discovery starts
    oidc_jwks_url: str = ""  # empty: the jwks_uri of the issuer's discovery document
    oidc_audience: str = ""  # required with OIDC_ISSUER: the tokens' aud must name it
    oidc_algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    oidc_caller_claim: str = "sub"  # the claim that names the caller
    oidc_groups_claim: str = "groups"  # the claim listing the caller's groups (identity.groups)
    oidc_jwks_timeout: float = 2.0  # seconds a request may wait for the provider's keys
    # --- the operator's console in the browser (gateway.console) ----------------------
    admin_ui: bool = True  # serve the console; false: its routes do not exist
    admin_ui_prefix: str = "/admin/ui"  # where its pages live
    admin_ui_session_seconds: int = 3600  # a console sign-in lasts this long, then the operator signs in again
    # --- tracing (gateway.tracing): the standard OpenTelemetry variables -------------
    otel_traces_exporter: str = "none"  # "otlp" (OTLP/HTTP) or "console"; "none": off, no tracing code imported
    otel_sdk_disabled: bool = False  # the SDK's own off switch: wins over OTEL_TRACES_EXPORTER

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
