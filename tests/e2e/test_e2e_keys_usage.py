"""Managed keys and usage under real gunicorn (gevent workers) on the real PostgreSQL.

- A database behind the code stops gunicorn at start with one line.
- A revoked key fails on every worker within KEY_CACHE_SECONDS.
- A graceful stop (SIGTERM) writes every queued usage record: requests sent == rows.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from gateway.config import Settings
from gateway.store import database_url, schema
from gateway.store.tables import usage
from tests.conftest import CANARY_JWT_SECRET, CANARY_MASTER_KEY, postgres_schema
from tests.fakes.upstream import FakeUpstream

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
MASTER = {"X-API-Key": CANARY_MASTER_KEY}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _call(port: int, method: str, path: str, body: dict | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        all_headers = {"Connection": "close", **({"Content-Type": "application/json"} if payload else {}),
                       **(headers or {})}
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Gunicorn:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.log_path = workdir / "gunicorn.log"
        variables = {name: value for name, value in os.environ.items()
                     if name.upper() not in {f.upper() for f in Settings.__dataclass_fields__}}
        variables.update({"AI_PROXY_HOST": HOST, "AI_PROXY_PORT": str(self.port), "PYTHONUNBUFFERED": "1",
                          "AI_PROXY_ENV_FILE": str(workdir / "none.env"), "INSTANCE_PATH": str(workdir / "instance"),
                          "MASTER_API_KEY": CANARY_MASTER_KEY, "JWT_SECRET": CANARY_JWT_SECRET, **env})
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                                     cwd=REPO_ROOT, env=variables, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited early:\n{self.log()}")
            try:
                if _call(self.port, "GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"gunicorn did not become healthy:\n{self.log()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.mark.timeout(120)
def test_keys_and_usage_under_gunicorn(pg_url: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    env = {"DATABASE_URL": pg_url, "AI_API_URL": upstream.base_url + "/completions",
           "RATE_LIMIT_GENERAL": "1000 per minute", "RATE_LIMIT_AI": "1000 per minute", "KEY_CACHE_SECONDS": "1",
           # Batches gather for 30 s: only the flush at the graceful stop can have written the rows.
           "USAGE_BATCH_SECONDS": "30"}

    refused = Gunicorn(tmp_path / "refused", env)
    assert refused.proc.wait(timeout=30) != 0
    errors = [line for line in refused.log().splitlines() if "database error" in line]
    assert errors == ["database error: the database has no schema yet (needs 0001): "
                      "run `flask --app wsgi db upgrade`"], refused.log()
    assert "Traceback" not in refused.log()
    refused.stop()

    engine = create_engine(database_url(Settings(database_url=pg_url)))
    schema.upgrade(engine)
    # Two instances on one database: what one revokes, the other refuses within KEY_CACHE_SECONDS.
    servers = [Gunicorn(tmp_path / name, env) for name in ("a", "b")]
    try:
        for server in servers:
            server.wait_healthy()
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
