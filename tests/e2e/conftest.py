"""End-to-end fixtures: the real gateway under real gunicorn with the shipped config.

``gateway_server(**env)`` (function scope, fresh quotas) and
``module_gateway_server(**env)`` (module scope, shared by a module's tests) start
``python -m gunicorn -c gunicorn.conf.py wsgi:app`` from the repository root on a
free loopback port, pointed at the in-process fake upstream, and stop it (SIGTERM,
then SIGKILL of its whole process group) when the test or module ends.

Helpers for talking to it over raw sockets / ``http.client`` live here too, so the
tests can time individual SSE events instead of trusting a client library's buffers.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from gateway.config import Settings
from gateway.store import database_url, schema
from tests.conftest import CANARY_AI_API_KEY, CANARY_JWT_SECRET, CANARY_MASTER_KEY, postgres_schema
from tests.fakes.upstream import FakeUpstream

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

# Every variable the gateway (or gunicorn itself) reads from the environment: none of
# the developer's values may leak into the server under test.
_GATEWAY_VARIABLES = frozenset(
    {f.name.upper() for f in dataclasses.fields(Settings)}
    | {"NODE_ENV", "APP_ENV", "AI_PROXY_ENV_FILE", "GUNICORN_CMD_ARGS", "WEB_CONCURRENCY", "FLASK_DEBUG"}
)

KEY = CANARY_MASTER_KEY
AUTH = {"X-API-Key": KEY}
JSON_AUTH = {"X-API-Key": KEY, "Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_env(upstream: FakeUpstream, workdir: Path, port: int, overrides: dict[str, str]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _GATEWAY_VARIABLES}
    env.update(
        {
            "AI_PROXY_HOST": HOST,
            "AI_PROXY_PORT": str(port),
            "AI_PROXY_ENV_FILE": str(workdir / "none.env"),
            "MASTER_API_KEY": CANARY_MASTER_KEY,
            "JWT_SECRET": CANARY_JWT_SECRET,
            "AI_API_KEY": CANARY_AI_API_KEY,
            "AI_API_URL": upstream.base_url + "/completions",
            "INSTANCE_PATH": str(workdir / "instance"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({name: str(value) for name, value in overrides.items()})
    return env


class GatewayServer:
    """One gunicorn process (its own session / process group)."""

    def __init__(self, upstream: FakeUpstream, workdir: Path, env: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = workdir / "gunicorn.log"
        self.env = server_env(upstream, workdir, self.port, env)
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.proc.returncode} before answering /health:\n{self.log()}")
            try:
                status, _, _ = request(self.url, "GET", "/health", timeout=0.5)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"gunicorn did not answer GET /health within {timeout}s:\n{self.log()}")

    def wait_for_log(self, predicate: Callable[[str], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.log()):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> int | None:
        """SIGTERM the arbiter, give it STOP_TIMEOUT, then SIGKILL the whole group."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind, if any
            except (ProcessLookupError, PermissionError):
                pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self._log_file.close()
        return self.proc.returncode


@pytest.fixture
def gateway_server(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Callable[..., GatewayServer]]:
    """Factory: ``gateway_server(RATE_LIMIT_AI="2 per minute", ...)`` -> a healthy, fresh gateway."""
    servers: list[GatewayServer] = []

    def start(wait: bool = True, **env: Any) -> GatewayServer:
        server = GatewayServer(upstream, tmp_path / f"gw{len(servers)}", env)
        servers.append(server)
        if wait:
            server.wait_healthy()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def module_gateway_server(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., GatewayServer]]:
    """Like ``gateway_server`` but lives for the module (for tests that need no fresh quota)."""
    servers: list[GatewayServer] = []

    def start(**env: Any) -> GatewayServer:
        server = GatewayServer(fake_upstream, tmp_path_factory.mktemp("gateway"), env)
        servers.append(server)
        server.wait_healthy()
        return server

    yield start
    for server in servers:
        server.stop()


# --------------------------------------------------------------------------- #
# HTTP helpers (always loopback, always with a timeout)
# --------------------------------------------------------------------------- #


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    assert url.startswith(f"http://{HOST}:"), url
    port = int(url.rsplit(":", 1)[1])
    return http.client.HTTPConnection(HOST, port, timeout=timeout)


def request(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on its own connection; returns (status, headers, body)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    conn = _connection(url, timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


class EventStream:
    """A streamed response read with ``read1`` so each SSE event gets its arrival time."""

    def __init__(self, url: str, path: str, body: dict, headers: dict[str, str] | None = None, timeout: float = 10.0) -> None:
        self.conn = _connection(url, timeout)
        self.sent_at = time.monotonic()
        self.conn.request("POST", path, body=json.dumps(body).encode(), headers={**JSON_AUTH, **(headers or {})})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers
        self._buffer = b""
        self.events: list[tuple[float, str]] = []  # (monotonic arrival time, event text)
        self.raw = b""

    def next_events(self) -> list[str]:
        """Block until at least one more complete event (or EOF: empty list)."""
        while True:
            data = self.response.read1(65536)
            now = time.monotonic()
            if not data:
                return []
            self.raw += data
            self._buffer += data
            new = []
            while b"\n\n" in self._buffer:
                block, self._buffer = self._buffer.split(b"\n\n", 1)
                if block.strip():
                    text = block.decode()
                    self.events.append((now, text))
                    new.append(text)
            if new:
                return new

    def read_all(self) -> list[str]:
        while self.next_events():
            pass
        return [text for _, text in self.events]

    def close(self) -> None:
        self.conn.close()


def error_envelope(body: bytes) -> dict:
    """Parse and check the gateway's one error shape; return the inner ``error``."""
    document = json.loads(body)
    assert set(document) == {"error"}, document
    error = document["error"]
    assert set(error) == {"message", "type", "code", "param"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return error


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL schema of the test's own on the machine's server, migrated; dropped afterwards."""
    with postgres_schema() as url:
        engine = create_engine(database_url(Settings(database_url=url)))
        schema.upgrade(engine)
        engine.dispose()
        yield url
