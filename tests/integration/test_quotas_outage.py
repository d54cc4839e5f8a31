"""Outage policy: a test-owned redis-server that the test stops and restarts."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import KEY_HEADERS

BODY = {"model": "m", "prompt": "hi"}
TIMEOUT = 0.3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=0.2).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_open_policy_keeps_serving_and_reports_readiness(make_app, own_redis, capfd) -> None:
    app = make_app(rate_limit_storage_uri=own_redis.url, rate_limit_on_storage_error="open", rate_limit_storage_timeout=TIMEOUT)
    client = app.test_client()
    assert client.get("/health/ready").status_code == 200
    assert client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS).status_code == 200

    own_redis.stop()
    for _ in range(10):
        response, took = _timed(lambda: client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS))
        assert response.status_code == 200
        assert took < 2 * TIMEOUT + 1
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["error"]["code"] == "not_ready" and body["checks"]["rate_limit_storage"] == "unreachable"
    assert client.get("/health").status_code == 200  # liveness is unaffected

    own_redis.start()
    assert client.get("/health/ready").status_code == 200
    assert client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS).status_code == 200

    logs = capfd.readouterr().err
    assert logs.count('"msg": "rate limit storage unreachable') == 1  # one line per outage, not per request
    assert "rate limit storage answers again" in logs


def test_open_policy_still_limits_per_process_during_the_outage(make_app, own_redis) -> None:
    client = make_app(
        rate_limit_storage_uri=own_redis.url,
        rate_limit_on_storage_error="open",
        rate_limit_storage_timeout=TIMEOUT,
        rate_limit_ai="3 per minute",
    ).test_client()
    own_redis.stop()
    statuses = [client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_closed_policy_answers_503_then_recovers(make_app, own_redis, upstream) -> None:
    client = make_app(
        rate_limit_storage_uri=own_redis.url, rate_limit_on_storage_error="closed", rate_limit_storage_timeout=TIMEOUT
    ).test_client()
    assert client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS).status_code == 200
    own_redis.stop()
    upstream.reset()
    for _ in range(3):
        response, took = _timed(lambda: client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS))
        assert response.status_code == 503
        error = response.get_json()["error"]
        assert error["code"] == "rate_limit_storage_unavailable" and set(error) == {"message", "type", "code", "param"}
        assert took < 2 * TIMEOUT + 1
    assert upstream.requests == []
    assert client.get("/health").status_code == 200
    assert client.get("/health/ready").status_code == 503
    own_redis.start()
    assert client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS).status_code == 200
    assert client.get("/health/ready").status_code == 200


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_an_unresponsive_redis_never_hangs_a_request(make_app, policy) -> None:
    """A Redis that accepts connections and never answers (a black hole)."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    try:
        client = make_app(
            rate_limit_storage_uri=f"redis://127.0.0.1:{hole.getsockname()[1]}/0",
            rate_limit_on_storage_error=policy,
            rate_limit_storage_timeout=TIMEOUT,
        ).test_client()
        for _ in range(3):
            response, took = _timed(lambda: client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS))
            assert response.status_code == (200 if policy == "open" else 503)
            assert took < 3 * TIMEOUT + 1
        ready, took = _timed(lambda: client.get("/health/ready"))
        assert ready.status_code == 503 and took < 2 * TIMEOUT + 1
    finally:
        hole.close()


def test_open_policy_keeps_concurrency_slots_in_the_process(make_app, own_redis) -> None:
    client = make_app(
        rate_limit_storage_uri=own_redis.url,
        rate_limit_on_storage_error="open",
        rate_limit_storage_timeout=TIMEOUT,
        rate_limit_concurrent=1,
    ).test_client()
    own_redis.stop()
    for _ in range(3):  # each slot is taken in the process and released: no 5xx, no stuck slot
        assert client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS).status_code == 200
    assert client.application.extensions["gateway.inflight"].local.count("key:master") == 0
