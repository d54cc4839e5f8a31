"""Quotas shared through Redis by several gunicorn instances, each with several workers."""

from __future__ import annotations

import http.client
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REDIS_URL
from tests.e2e.conftest import AUTH, HOST, EventStream, request
from tests.fakes.upstream import Behavior

CALLS = 60


def _redis_env(prefix: str, **extra: str) -> dict[str, str]:
    return {"RATE_LIMIT_STORAGE_URI": REDIS_URL, "RATE_LIMIT_KEY_PREFIX": prefix, "GATEWAY_WORKERS": "2", **extra}


def _worker_pids(server) -> set[str]:
    return set(re.findall(r"Booting worker with pid: (\d+)", server.log()))


@pytest.mark.timeout(90)
def test_two_instances_with_two_workers_each_share_the_quota(gateway_server, upstream, redis_prefix) -> None:
    servers = [gateway_server(**_redis_env(redis_prefix)) for _ in range(2)]
    for server in servers:
        assert server.wait_for_log(lambda log: len(set(re.findall(r"Booting worker with pid: (\d+)", log))) >= 2, 10)
    barrier = threading.Barrier(CALLS, timeout=30)

    def call(i: int) -> int:
        barrier.wait()
        status, _, _ = request(
            servers[i % 2].url, "POST", "/api/ai/completion", {"model": "m", "prompt": "hi"}, headers=AUTH, timeout=30
        )
        return status

    with ThreadPoolExecutor(max_workers=CALLS) as pool:
        statuses = list(pool.map(call, range(CALLS)))
    assert statuses.count(200) == 20, statuses
    assert statuses.count(429) == CALLS - 20, statuses
    assert upstream.wait_for_requests(20, timeout=2) and len(upstream.requests) == 20


def _get_from(server, source: str) -> int:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_different_callers_are_counted_apart(gateway_server, redis_prefix) -> None:
    servers = [gateway_server(**_redis_env(redis_prefix, RATE_LIMIT_GENERAL="4 per minute")) for _ in range(2)]
    a = [_get_from(servers[i % 2], "127.0.0.2") for i in range(6)]
    b = [_get_from(servers[i % 2], "127.0.0.3") for i in range(6)]
    assert a == [200] * 4 + [429] * 2
    assert b == [200] * 4 + [429] * 2


@pytest.mark.timeout(60)
def test_a_dropped_stream_frees_its_concurrency_slot_within_a_second(gateway_server, upstream, redis_prefix) -> None:
    server = gateway_server(**_redis_env(redis_prefix, RATE_LIMIT_CONCURRENT="1"))
    upstream.behavior = Behavior(chunks=200, gap=0.05)
    stream = EventStream(
        server.url,
        "/v1/chat/completions",
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers=AUTH,
    )
    assert stream.next_events()
    status, _, _ = request(server.url, "GET", "/v1/models", headers=AUTH)
    assert status == 429  # the stream holds the only slot
    stream.close()
    dropped = time.monotonic()
    while True:
        status, _, _ = request(server.url, "GET", "/v1/models", headers=AUTH)
        if status == 200:
            break
        assert time.monotonic() - dropped < 1.0, "the slot was not freed within a second"
        time.sleep(0.05)
    assert upstream.wait_for_active_streams(0, timeout=2)
