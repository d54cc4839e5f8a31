"""A key with ``budget_usd`` 0.01 under 50 concurrent calls (threads on the Flask test client),
counting in the process and in Redis, its rows in SQLite and PostgreSQL: the recorded spend
never passes the budget, and every admitted call's cost is recorded."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import KEY_HEADERS, REDIS_URL
from tests.fakes.upstream import Behavior
from tests.integration.test_budget_usd import CHAT, PRICES, TEXT, recorded_costs

CALLS = 50
BUDGET = Decimal("0.01")
# Completions and chats, plain and streamed, with and without their own limit. At the prices
# of PRICES each costs 1,250 to 1,800 micro-dollars, so a handful of calls fit in 10,000; each
# holds 3,400 to 4,400 (or, without a limit of its own, what is left) while in flight.
PLAN = (
    ("/v1/completions", TEXT),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 20}),
    ("/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 16}),
    ("/v1/completions", {**TEXT, "stream": True, "max_tokens": 16}),
    ("/v1/chat/completions", CHAT),
)
STAGGER_SECONDS = 0.004  # call i starts i x this after the others are ready: holds and settlements interleave


@pytest.mark.parametrize("counters", ["memory", "redis"])
def test_fifty_concurrent_calls_never_spend_past_the_budget(
    counters, database_url, make_app, redis_prefix, tmp_path: Path, upstream
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(PRICES)
    shared = {"rate_limit_storage_uri": REDIS_URL, "rate_limit_key_prefix": redis_prefix} if counters == "redis" else {}
    app = make_app(
        database_url=database_url,
        key_cache_seconds=0,
        gateway_config=str(config),
        rate_limit_ai="1000 per minute",
        rate_limit_general="1000 per minute",
        **shared,
    )
    created = app.test_client().post("/admin/keys", json={"name": "load", "budget_usd": str(BUDGET)}, headers=KEY_HEADERS)
    key = {"X-API-Key": created.get_json()["secret"]}
    barrier = threading.Barrier(CALLS, timeout=30)

    def call(i: int) -> tuple[int, str | None]:
        path, document = PLAN[i % len(PLAN)]
        client = app.test_client()
        barrier.wait()
        time.sleep(i * STAGGER_SECONDS)
        response = client.post(path, json=document, headers=key)
        body = response.get_data()  # a stream is read to its end
        response.close()
        error = response.get_json()["error"]["code"] if response.status_code != 200 else None
        assert response.status_code != 200 or not document.get("stream") or body.rstrip().endswith(b"[DONE]")
        return response.status_code, error

    upstream.behavior = Behavior(gap=0.01)  # streams stay open a while
    with ThreadPoolExecutor(max_workers=CALLS) as pool:
        results = list(pool.map(call, range(CALLS)))
    admitted = sum(1 for status, _ in results if status == 200)
    assert {(status, error) for status, error in results if status != 200} <= {(429, "insufficient_quota")}
    assert 1 <= admitted <= 8, results  # at least 1,250 micro-dollars each

    costs = recorded_costs(app, status=200)
    assert len(costs) == admitted and all(cost is not None for cost in costs)  # every admitted call is billed
    spent = sum(Decimal(repr(cost)) for cost in costs if cost is not None)  # exact: the floats of 6-place decimals
    assert 0 < spent <= BUDGET
    assert all(cost is None for cost in recorded_costs(app, status=429))
    # The counter holds exactly what was recorded (nothing left held, nothing lost).
    budget = app.test_client().get("/api/usage", headers=key).get_json()["remaining"]["budget"]
    assert Decimal(repr(budget["usage"])) == spent
