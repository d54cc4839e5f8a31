"""Shared fixtures: canary secrets, the fake upstream, databases, the app and its test client."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway import create_app
from gateway import store as gateway_store
from gateway.config import Settings
from gateway.store import Store, schema
from tests.fakes.idp import FakeIdentityProvider
from tests.fakes.upstream import FakeUpstream

# The machine's PostgreSQL; each test gets its own schema in it, dropped afterwards.
POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# Unique per run, so any leak into logs or responses can be grepped for.
CANARY_MASTER_KEY = "mk-canary-" + secrets.token_hex(20)
CANARY_JWT_SECRET = "jwt-canary-" + secrets.token_hex(20)
CANARY_AI_API_KEY = "sk-canary-" + secrets.token_hex(20)
CANARIES = (CANARY_MASTER_KEY, CANARY_JWT_SECRET, CANARY_AI_API_KEY)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No developer .env or exported variable leaks into a test."""
    monkeypatch.setenv("AI_PROXY_ENV_FILE", str(tmp_path_factory.getbasetemp() / "no.env"))
    for name in (
        "MASTER_API_KEY",
        "JWT_SECRET",
        "AI_API_URL",
        "AI_API_BASE_URL",
        "AI_API_KEY",
        "ALLOWED_ORIGINS",
        "NODE_ENV",
        "APP_ENV",
        "RATE_LIMIT_GENERAL",
        "RATE_LIMIT_AI",
        "RATE_LIMIT_STORAGE_URI",
        "TRUSTED_PROXY_COUNT",
        "FORCE_HTTPS",
        "GATEWAY_WORKERS",
        "GATEWAY_CONFIG",
        "GATEWAY_CONFIG_ACCEPTED",
    ):
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


@pytest.fixture
def idp() -> Iterator[FakeIdentityProvider]:
    """An OIDC identity provider on loopback (tests/fakes/idp.py), up again before it stops."""
    server = FakeIdentityProvider().start()
    yield server
    server.down = False
    server.stop()


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


def _upgrade(url: Any) -> None:
    store = Store(url, auto_upgrade=False)
    try:
        schema.upgrade(store.engine)
    finally:
        store.dispose()


@pytest.fixture(scope="session")
def _migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "gateway.db"
    _upgrade(gateway_store.database_url(Settings(database_url=f"sqlite:///{path}")))
    return path


_template: list[Path] = []


@pytest.fixture(autouse=True)
def _remember_template(_migrated_sqlite_template: Path) -> None:
    _template[:] = [_migrated_sqlite_template]


def migrated(settings: dict[str, Any]) -> dict[str, Any]:
    """Bring the database these settings name to the current schema, as `db upgrade` would.

    A new SQLite file is a copy of one migrated once per session (much faster than
    migrating each test's database; the migrations themselves are tested in test_store).
    """
    url = gateway_store.database_url(Settings(**settings))
    target = Path(url.database or "") if url.get_backend_name() == "sqlite" else None
    if target is not None and _template and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template[0], target)
    else:
        _upgrade(url)
    return settings


def close_app(app: Flask) -> None:
    """Stop the app's usage writer and close its database connections."""
    app.extensions["gateway.usage"].stop(timeout=5)
    app.extensions["gateway.store"].dispose()


@pytest.fixture
def make_app(upstream: FakeUpstream, tmp_path: Any) -> Iterator[Any]:
    """Build apps against the fake upstream with extra setting overrides (database migrated)."""
    built: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        app = create_app(migrated(settings_for(upstream, tmp_path, **overrides)))
        app.testing = True
        built.append(app)
        return app

    yield build
    for app in built:
        close_app(app)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema; yields a DATABASE_URL whose search_path is it."""
    name = "gw_test_" + secrets.token_hex(6)
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(
            f"PostgreSQL at {POSTGRES_URL} does not answer ({error}); start it, set "
            "GATEWAY_TEST_POSTGRES_URL, or skip these tests: -m 'not postgres'",
            pytrace=False,
        )
    with admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
        try:
            yield f"{POSTGRES_URL}?options=-csearch_path%3D{name}"
        finally:
            admin.execute("SET lock_timeout = '10s'")
            admin.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A DATABASE_URL for an empty database: a SQLite file, then a PostgreSQL schema.

    Request it before ``make_app`` (``def test(database_url, make_app)``), so the apps,
    and their usage writers, are closed before the schema is dropped.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/db/gateway.db"
    else:
        with postgres_schema() as url:
            yield url


@pytest.fixture
def db_app(database_url: str, make_app) -> Flask:
    """An app on each database, with no key cache (revocations apply at once)."""
    return make_app(database_url=database_url, key_cache_seconds=0)


@pytest.fixture
def db_client(db_app: Flask) -> FlaskClient:
    return db_app.test_client()


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
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        client.close()
        pytest.fail(
            f"Redis at {REDIS_URL} does not answer ({type(error).__name__}); start it, or skip these tests: -m 'not redis'",
            pytrace=False,
        )
    yield prefix
    for pattern in (f"LIMITS:LIMITER/{prefix}/*", f"{prefix}:*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


# Markers (pytest.ini) for the servers a test needs, so a quick local run can skip them:
# `pytest -m "not postgres and not redis and not e2e"` (make test-fast).
_SERVER_MARKERS = {"postgres": ("postgres_schema(",), "redis": ("REDIS_URL", "redis://127.0.0.1")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    import inspect

    sources: dict[Any, str] = {}
    for item in items:
        if "/tests/e2e/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_url") == "postgresql":
            item.add_marker(pytest.mark.postgres)
        if "redis_prefix" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)
        function = getattr(item, "function", None)
        if function is None:
            continue
        if function not in sources:
            try:
                sources[function] = inspect.getsource(function)
            except (OSError, TypeError):
                sources[function] = ""
        for marker, needles in _SERVER_MARKERS.items():
            if any(needle in sources[function] for needle in needles):
                item.add_marker(getattr(pytest.mark, marker))
