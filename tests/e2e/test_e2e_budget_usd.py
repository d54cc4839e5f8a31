"""A budget in USD under real gunicorn: 2 instances x 2 workers on one Redis and one PostgreSQL.

50 concurrent calls of one key with ``budget_usd`` 0.01, spread over both instances (so over
four processes): the recorded cost never passes the budget, every admitted call's cost is
recorded, and the shared counter equals the recorded spend (nothing lost, nothing left held).
A reset at a period's boundary: tests/e2e/test_e2e_budget_reset.py (the gateway under
libfaketime), and under time-machine tests/unit/test_budget_periods.py and
tests/integration/test_budget_usd.py.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway.config import Settings
from gateway.store import database_url
from tests.conftest import REDIS_URL
from tests.e2e.conftest import AUTH, request
from tests.fakes.upstream import Behavior

CALLS = 50
BUDGET = Decimal("0.01")
PRICES = "prices:\n  metered: {input: 100, output: 150}\n"  # a completion of the fake: 5 x 100 + 7 x 150 = 1,550 per million
BODIES = (
    {"model": "metered", "prompt": "hi"},  # clamped to what the budget allows
    {"model": "metered", "prompt": "hi", "max_tokens": 16},  # holds its own limit whole
    {"model": "metered", "prompt": "hi", "stream": True},
)


@pytest.mark.timeout(120)
def test_two_instances_with_two_workers_never_spend_past_the_budget(
    gateway_server, pg_url, redis_prefix, tmp_path: Path, upstream
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(PRICES)
    env = {
        "DATABASE_URL": pg_url,
        "RATE_LIMIT_STORAGE_URI": REDIS_URL,
        "RATE_LIMIT_KEY_PREFIX": redis_prefix,
        "GATEWAY_WORKERS": "2",
        "GATEWAY_CONFIG": str(config),
        "RATE_LIMIT_GENERAL": "10000 per minute",
        "RATE_LIMIT_AI": "10000 per minute",
        "USAGE_BATCH_SECONDS": "0.2",
    }
    servers = [gateway_server(**env) for _ in range(2)]
    for server in servers:
        assert server.wait_for_log(lambda log: len(set(re.findall(r"Booting worker with pid: (\d+)", log))) >= 2, 10)
    status, _, body = request(servers[0].url, "POST", "/admin/keys", {"name": "spender", "budget_usd": str(BUDGET)}, headers=AUTH)
    assert status == 201, body
    key = json.loads(body)
    headers = {"X-API-Key": key["secret"]}
    upstream.behavior = Behavior(gap=0.01)
    barrier = threading.Barrier(CALLS, timeout=30)

    def call(i: int) -> int:
        barrier.wait()
        time.sleep(i * 0.004)  # holds and settlements interleave across the four processes
        answer, _, _ = request(servers[i % 2].url, "POST", "/v1/completions", BODIES[i % len(BODIES)], headers=headers, timeout=30)
        return answer

    with ThreadPoolExecutor(max_workers=CALLS) as pool:
        statuses = list(pool.map(call, range(CALLS)))
    admitted = statuses.count(200)
    assert 1 <= admitted and statuses.count(429) == CALLS - admitted, statuses

    engine = create_engine(database_url(Settings(database_url=pg_url)))
    query = text("SELECT status, cost_usd FROM usage WHERE key_id = :key ORDER BY id")
    deadline = time.monotonic() + 15
    while True:  # every call has its row once the writers have flushed
        with engine.connect() as connection:
            rows = connection.execute(query, {"key": key["id"]}).all()
        if len(rows) >= CALLS or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    engine.dispose()
    assert len(rows) == CALLS
    billed = [cost for status, cost in rows if status == 200]
    assert len(billed) == admitted and all(cost is not None for cost in billed)
    spent = sum(billed, Decimal(0))  # numeric: exact
    assert 0 < spent <= BUDGET
    _, _, usage_body = request(servers[1].url, "GET", "/api/usage", headers=headers)
    budget = json.loads(usage_body)["remaining"]["budget"]
    assert Decimal(repr(budget["usage"])) == spent and budget["limit"] == 0.01
