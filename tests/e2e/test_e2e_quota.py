"""Quotas under real gunicorn: concurrent callers share one in-process quota."""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import AUTH, GatewayServer, error_envelope, request

CALLS = 30
DEFAULT_AI_QUOTA = 20  # RATE_LIMIT_AI's default: 20 per 15 minutes


@pytest.mark.timeout(60)
def test_default_ai_quota_holds_under_concurrency(gateway_server, upstream) -> None:
    server: GatewayServer = gateway_server()
    barrier = threading.Barrier(CALLS, timeout=20)

    def call(_: int):
        barrier.wait()
        return request(server.url, "POST", "/api/ai/completion", {"model": "fake-model", "prompt": "hi"}, headers=AUTH, timeout=20)

    with ThreadPoolExecutor(max_workers=CALLS) as pool:
        results = list(pool.map(call, range(CALLS)))

    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(200) == DEFAULT_AI_QUOTA, statuses
    assert statuses.count(429) == CALLS - DEFAULT_AI_QUOTA, statuses

    now = int(time.time())
    for status, headers, body in results:
        assert headers["X-RateLimit-Limit"] == str(DEFAULT_AI_QUOTA)
        reset = int(headers["X-RateLimit-Reset"])
        assert now - 5 <= reset <= now + 15 * 60 + 5
        remaining = int(headers["X-RateLimit-Remaining"])
        assert 0 <= remaining < DEFAULT_AI_QUOTA
        if status == 200:
            assert b"fake completion" in body
            continue
        assert remaining == 0
        assert headers["Content-Type"] == "application/json"
        error = error_envelope(body)
        assert error["code"] == "gateway_rate_limited"
        assert error["type"] == "rate_limit_error"
        retry_after = int(headers["Retry-After"])
        assert 1 <= retry_after <= 15 * 60

    # Every 200 went upstream once; no 429 reached it.
    assert upstream.wait_for_requests(DEFAULT_AI_QUOTA, timeout=2)
    assert len(upstream.requests) == DEFAULT_AI_QUOTA
    # The quota stays spent: one more call is refused without reaching the upstream.
    status, _, body = request(server.url, "POST", "/api/ai/completion", {"prompt": "hi"}, headers=AUTH)
    assert status == 429 and error_envelope(body)["code"] == "gateway_rate_limited"
    assert len(upstream.requests) == DEFAULT_AI_QUOTA


@pytest.mark.timeout(30)
def test_refuses_several_workers_with_memory_storage(gateway_server) -> None:
    server: GatewayServer = gateway_server(wait=False, GATEWAY_WORKERS="2")
    try:
        returncode = server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn kept running with GATEWAY_WORKERS=2 and memory:// storage:\n{server.log()}")
    assert returncode != 0
    assert "GATEWAY_WORKERS" in server.log()
    with pytest.raises(OSError):
        request(server.url, "GET", "/health", timeout=1)
