"""Managed keys and usage under real gunicorn (gevent workers) on the real PostgreSQL.

- A database behind the code stops gunicorn at start with one line.
- A revoked key fails on every worker within KEY_CACHE_SECONDS.
- A graceful stop (SIGTERM) writes every queued usage record: requests sent == rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, func, select

from gateway.config import Settings
from gateway.store import database_url, schema
from gateway.store.tables import usage
from tests.conftest import CANARY_MASTER_KEY, postgres_schema
from tests.e2e.conftest import HOST, request

MASTER = {"X-API-Key": CANARY_MASTER_KEY}


def _call(port: int, method: str, path: str, body: dict | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    status, _, content = request(f"http://{HOST}:{port}", method, path, body, headers=headers)
    return status, content


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.mark.timeout(120)
def test_keys_and_usage_under_gunicorn(pg_url: str, gateway_server) -> None:
    env = {
        "DATABASE_URL": pg_url,
        "RATE_LIMIT_GENERAL": "1000 per minute",
        "RATE_LIMIT_AI": "1000 per minute",
        "KEY_CACHE_SECONDS": "1",
        # Batches gather for 30 s: only the flush at the graceful stop can have written the rows.
        "USAGE_BATCH_SECONDS": "30",
    }

    refused = gateway_server(wait=False, **env)
    assert refused.proc.wait(timeout=30) != 0
    errors = [line for line in refused.log().splitlines() if "database error" in line]
    assert errors == [f"database error: the database has no schema yet (needs {schema.head()}): run `flask --app wsgi db upgrade`"], (
        refused.log()
    )
    assert "Traceback" not in refused.log()
    refused.stop()

    engine = create_engine(database_url(Settings(database_url=pg_url)))
    schema.upgrade(engine)
    # Two instances on one database: what one revokes, the other refuses within KEY_CACHE_SECONDS.
    servers = [gateway_server(**env) for _ in ("a", "b")]
    try:
        first, second = servers
        created = {}
        for name in ("revoked", "load"):
            status, body = _call(first.port, "POST", "/admin/keys", {"name": name}, MASTER)
            assert status == 201, body
            created[name] = json.loads(body)

        doomed = {"X-API-Key": created["revoked"]["secret"]}
        assert {_call(server.port, "GET", "/v1/models", headers=doomed)[0] for server in servers} == {200}
        assert _call(first.port, "DELETE", f"/admin/keys/{created['revoked']['id']}", headers=MASTER)[0] == 200
        assert _call(first.port, "GET", "/v1/models", headers=doomed)[0] == 401  # at once where it was revoked
        time.sleep(1.2)  # KEY_CACHE_SECONDS=1
        assert _call(second.port, "GET", "/v1/models", headers=doomed)[0] == 401

        key = {"X-API-Key": created["load"]["secret"]}

        def relay(i: int) -> int:
            port = servers[i % 2].port
            if i % 3 == 0:
                return _call(port, "POST", "/v1/chat/completions", {"model": "m", "stream": True, "messages": []}, key)[0]
            return _call(port, "POST", "/v1/completions", {"model": "m", "prompt": "hi"}, key)[0]

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(relay, range(40)))
        assert statuses == [200] * 40
    finally:
        # SIGTERM right after the last requests: their usage rows are still queued.
        returncodes = [server.stop() for server in servers]
    assert returncodes == [0, 0], servers[0].log() + servers[1].log()

    with engine.connect() as connection:
        rows = connection.execute(select(usage.c.key_id, func.count()).group_by(usage.c.key_id)).all()
    engine.dispose()
    assert dict(rows) == {created["revoked"]["id"]: 2, created["load"]["id"]: 40}, servers[0].log()
    for server in servers:
        for key in created.values():
            assert key["secret"] not in server.log()
