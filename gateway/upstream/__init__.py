"""The seam to the AI backends: :mod:`.client` owns the HTTP sessions (one per backend),
:mod:`.relay` turns upstream answers into gateway responses, :mod:`.streams` relays
event streams, :mod:`.sse` is pure framing code."""

from __future__ import annotations

from flask import Flask

from gateway import extensions
from gateway.backends.config import Backend, GatewayConfig
from gateway.backends.router import Router
from gateway.config import Settings
from gateway.upstream.client import UpstreamClient, UpstreamConfig


def client_config(backend: Backend, settings: Settings, config: GatewayConfig) -> UpstreamConfig:
    """One backend's client settings: its file entry, or the UPSTREAM_* variables without a file."""
    timeouts = backend.timeouts
    return UpstreamConfig(
        base_url=backend.url.rstrip("/"),
        api_key=backend.api_key,
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.first_byte,
        pool_size=settings.upstream_pool_size or max(10, settings.worker_concurrency),
        trust_env=settings.upstream_trust_env,
        total_timeout=timeouts.total,
        name=backend.name,
        dialect=backend.dialect,
        api_version=backend.api_version,
        headers=backend.headers,
        idle_timeout=timeouts.idle if timeouts.idle != timeouts.first_byte else None,
        where=f"backend {backend.name!r} in {config.source}" if config.source else "AI_API_URL (or AI_API_BASE_URL)",
    )


def init_app(app: Flask) -> None:
    settings: Settings = app.config["GATEWAY"]
    config = extensions.backends_config(app)
    clients = {
        backend.name: UpstreamClient(client_config(backend, settings, config), explain_unreachable=not settings.production)
        for backend in config.backends
    }
    app.extensions[extensions.ROUTER] = Router(config, clients)
