"""Shared fixtures: canary secrets, the fake upstream, the app and its test client."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway import create_app
from tests.fakes.upstream import FakeUpstream

# Unique per run, so any leak into logs or responses can be grepped for.
CANARY_MASTER_KEY = "mk-canary-" + secrets.token_hex(20)
CANARY_JWT_SECRET = "jwt-canary-" + secrets.token_hex(20)
CANARY_AI_API_KEY = "sk-canary-" + secrets.token_hex(20)
CANARIES = (CANARY_MASTER_KEY, CANARY_JWT_SECRET, CANARY_AI_API_KEY)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No developer .env or exported variable leaks into a test."""
    monkeypatch.setenv("AI_PROXY_ENV_FILE", str(tmp_path_factory.getbasetemp() / "no.env"))
    for name in ("MASTER_API_KEY", "JWT_SECRET", "AI_API_URL", "AI_API_BASE_URL", "AI_API_KEY", "ALLOWED_ORIGINS",
                 "NODE_ENV", "APP_ENV", "RATE_LIMIT_GENERAL", "RATE_LIMIT_AI", "RATE_LIMIT_STORAGE_URI",
                 "TRUSTED_PROXY_COUNT", "FORCE_HTTPS", "GATEWAY_WORKERS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.reset()
    return fake_upstream


def settings_for(upstream: FakeUpstream | None, tmp_path: Any, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "master_api_key": CANARY_MASTER_KEY,
        "jwt_secret": CANARY_JWT_SECRET,
        "ai_api_key": CANARY_AI_API_KEY,
        "ai_api_url": (upstream.base_url if upstream else "http://127.0.0.1:9/v1") + "/completions",
        "instance_path": str(tmp_path / "instance"),
        "upstream_connect_timeout": 1.0,
        "upstream_read_timeout": 2.0,
        "upstream_total_timeout": 5.0,
    }
    base.update(overrides)
    return base


@pytest.fixture
def make_app(upstream: FakeUpstream, tmp_path: Any):
    """Build an app against the fake upstream with extra setting overrides."""

    def build(**overrides: Any) -> Flask:
        app = create_app(settings_for(upstream, tmp_path, **overrides))
        app.testing = True
        return app

    return build


@pytest.fixture
def app(make_app) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


KEY_HEADERS = {"X-API-Key": CANARY_MASTER_KEY}


REDIS_URL = "redis://127.0.0.1:6379/13"  # the tests' own database on the machine's Redis


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix owned by one test; its keys are deleted afterwards."""
    import redis

    prefix = "aiproxy-test-" + secrets.token_hex(6)
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"LIMITS:LIMITER/{prefix}/*", f"{prefix}:*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()
