"""Issue 5 acceptance under real gunicorn: several workers, Redis quotas, PostgreSQL keys."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, func, select

from gateway.config import Settings
from gateway.store import database_url
from gateway.store.tables import usage
from tests.conftest import REDIS_URL
from tests.e2e.conftest import AUTH, request


def _create_key(server, **fields) -> dict:
    status, _, body = request(server.url, "POST", "/admin/keys", {"name": "team", **fields}, headers=AUTH)
    assert status == 201, body
    return json.loads(body)


@pytest.mark.timeout(120)
def test_two_keys_are_held_to_their_own_limits_across_workers_and_instances(gateway_server, pg_url, redis_prefix) -> None:
    env = {
        "DATABASE_URL": pg_url,
        "RATE_LIMIT_STORAGE_URI": REDIS_URL,
        "RATE_LIMIT_KEY_PREFIX": redis_prefix,
        "GATEWAY_WORKERS": "2",
        "RATE_LIMIT_GENERAL": "1000 per minute",
    }
    servers = [gateway_server(**env) for _ in range(2)]
    small = _create_key(servers[0], rate_limit_ai="5 per minute")
    large = _create_key(servers[0], rate_limit_ai="12 per minute")
    keys = {"small": {"X-API-Key": small["secret"]}, "large": {"X-API-Key": large["secret"]}}
    plan = [name for _ in range(20) for name in ("small", "large")]
    barrier = threading.Barrier(len(plan), timeout=30)

    def call(i: int) -> tuple[str, int]:
        barrier.wait()
        status, _, _ = request(
            servers[i % 2].url, "POST", "/v1/completions", {"model": "m", "prompt": "hi"}, headers=keys[plan[i]], timeout=30
        )
        return plan[i], status

    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        results = list(pool.map(call, range(len(plan))))
    admitted = {name: sum(1 for who, status in results if who == name and status == 200) for name in keys}
    refused = {name: sum(1 for who, status in results if who == name and status == 429) for name in keys}
    assert admitted == {"small": 5, "large": 12}
    assert refused == {"small": 15, "large": 8}


@pytest.mark.timeout(120)
def test_graceful_reload_under_load_loses_no_usage_record(gateway_server, pg_url, redis_prefix) -> None:
    server = gateway_server(
        DATABASE_URL=pg_url,
        RATE_LIMIT_STORAGE_URI=REDIS_URL,
        RATE_LIMIT_KEY_PREFIX=redis_prefix,
        GATEWAY_WORKERS="2",
        RATE_LIMIT_GENERAL="10000 per minute",
        RATE_LIMIT_AI="10000 per minute",
        USAGE_BATCH_SECONDS="5",
    )
    key = _create_key(server)
    headers = {"X-API-Key": key["secret"]}
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set() and len(statuses) < 400:
            try:
                status, _, _ = request(
                    server.url, "POST", "/v1/completions", {"model": "m", "prompt": "hi"}, headers=headers, timeout=20
                )
            except OSError:
                status = -1
            statuses.append(status)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    for _ in range(2):
        server.signal(signal.SIGHUP)  # new workers; old ones finish what they hold and flush
        time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert server.stop() == 0
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    engine = create_engine(database_url(Settings(database_url=pg_url)))
    with engine.connect() as connection:
        rows = connection.execute(select(func.count()).where(usage.c.key_id == key["id"])).scalar_one()
    engine.dispose()
    assert rows == len(statuses), server.log()[-3000:]


@pytest.mark.timeout(120)
def test_sdk_calls_appear_in_admin_usage_with_the_upstreams_token_counts(gateway_server, pg_url, upstream) -> None:
    from openai import OpenAI

    from tests.fakes.upstream import Behavior

    server = gateway_server(DATABASE_URL=pg_url, USAGE_BATCH_SECONDS="0.2")
    key = _create_key(server)
    upstream.behavior = Behavior(chunks=4)
    sdk = OpenAI(base_url=f"{server.url}/v1", api_key=key["secret"], max_retries=0, timeout=10)
    messages = [{"role": "user", "content": "hi"}]
    completion = sdk.chat.completions.create(model="fake-model", messages=messages)
    chunks = list(sdk.chat.completions.create(model="fake-model", messages=messages, stream=True))
    sdk.close()
    assert completion.usage.total_tokens == 15
    # The client did not ask for usage: no chunk carries it, though the upstream was asked.
    assert all(chunk.usage is None for chunk in chunks) and all(chunk.choices for chunk in chunks)
    assert upstream.requests[-1].json()["stream_options"] == {"include_usage": True}

    deadline = time.monotonic() + 10
    while True:
        status, _, body = request(server.url, "GET", f"/admin/usage?key={key['id']}&group_by=operation", headers=AUTH)
        assert status == 200, body
        report = json.loads(body)
        if report["totals"]["requests"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert report["totals"]["requests"] == 2
    # 9 + 6 (non-streamed) and 9 + 4 (the stream's usage chunk): the upstream's figures, not estimates.
    assert report["totals"]["prompt_tokens"] == 18 and report["totals"]["completion_tokens"] == 10
    assert report["totals"]["estimated_requests"] == 0
