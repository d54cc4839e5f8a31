"""Budgets in USD per key: the fields (admin API, CLI, both databases), holds at the most
cost, clamping, refusals, unpriced models, resets and ``GET /api/usage``; memory and Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import time_machine
from flask import Flask
from sqlalchemy import select

from gateway.store.tables import usage
from tests.conftest import KEY_HEADERS, REDIS_URL
from tests.fakes.upstream import Behavior

CLAMPED = "X-Gateway-Max-Tokens-Clamped"
# Per million tokens. The fake answers a completion with 5 + 7 tokens (1,550 micro-dollars here)
# and a chat with 9 + 6 (1,800); prompt bounds: 10 ("hi" completion), 14 (chat).
PRICES = """\
prices:
  metered: {input: 100, output: 150}
  cached: {input: 100, cached_input: 300, output: 150}
"""
TEXT = {"model": "metered", "prompt": "hi"}
CHAT = {"model": "metered", "messages": [{"role": "user", "content": "hi"}]}
NOW = "2026-11-27T10:00:00+00:00"
TO_MONTH_END = 3 * 86400 + 14 * 3600  # from NOW to 2026-12-01T00:00:00Z


@pytest.fixture(params=["memory", "redis"])
def build(request, make_app, redis_prefix, tmp_path: Path):
    """Apps with the price table, counting in the process or in Redis."""
    extra = {"rate_limit_storage_uri": REDIS_URL, "rate_limit_key_prefix": redis_prefix} if request.param == "redis" else {}
    config = tmp_path / "gateway.yaml"
    config.write_text(PRICES)

    def app(**overrides) -> Flask:
        settings = {"rate_limit_ai": "1000 per minute", "rate_limit_general": "1000 per minute", "gateway_config": str(config)}
        return make_app(key_cache_seconds=0, **{**settings, **extra, **overrides})

    return app


def _key(client, **fields) -> dict[str, str]:
    response = client.post("/admin/keys", json={"name": "spender", **fields}, headers=KEY_HEADERS)
    assert response.status_code == 201, response.get_json()
    return {"X-API-Key": response.get_json()["secret"]}


def _budget(client, key) -> dict:
    return client.get("/api/usage", headers=key).get_json()["remaining"]["budget"]


def recorded_costs(app: Flask, status: int | None = None) -> list[float | None]:
    """``cost_usd`` of the app's usage rows, oldest first (of one status, if given)."""
    assert app.extensions["gateway.usage"].flush(timeout=10)
    query = select(usage.c.cost_usd).order_by(usage.c.id)
    if status is not None:
        query = query.where(usage.c.status == status)
    with app.extensions["gateway.store"].engine.connect() as connection:
        return [row[0] for row in connection.execute(query)]


def _answer(prompt: int, completion: int) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return json.dumps({"id": "x", "object": "text_completion", "choices": [{"text": "t", "index": 0}], "usage": usage}).encode()


def test_the_fields_through_the_admin_api(db_client) -> None:
    created = db_client.post("/admin/keys", json={"name": "b", "budget_usd": 0.01}, headers=KEY_HEADERS).get_json()
    assert (created["budget_usd"], created["budget_period"], created["budget_reset"]) == (0.01, None, None)
    path = f"/admin/keys/{created['id']}"
    patched = db_client.patch(
        path, json={"budget_usd": "123456789.123456", "budget_period": "week", "budget_reset": "rolling"}, headers=KEY_HEADERS
    )
    assert patched.status_code == 200
    shown = db_client.get(path, headers=KEY_HEADERS).get_json()
    assert (shown["budget_usd"], shown["budget_period"], shown["budget_reset"]) == (123456789.123456, "week", "rolling")
    for field, value in (("budget_usd", 0), ("budget_usd", "0.0000001"), ("budget_period", "year"), ("budget_reset", "sliding")):
        refused = db_client.patch(path, json={field: value}, headers=KEY_HEADERS)
        assert refused.status_code == 400, (field, value)
        error = refused.get_json()["error"]
        assert error["param"] == field and field in error["message"]
    cleared = db_client.patch(path, json={"budget_usd": None}, headers=KEY_HEADERS).get_json()
    assert cleared["budget_usd"] is None and cleared["budget_period"] == "week"


def test_the_fields_through_the_command_line(db_app: Flask) -> None:
    def run(*args: str):
        return db_app.test_cli_runner().invoke(args=list(args))

    result = run("keys", "create", "--name", "b", "--budget-usd", "0.01", "--budget-period", "day", "--budget-reset", "rolling")
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert (created["budget_usd"], created["budget_period"], created["budget_reset"]) == (0.01, "day", "rolling")
    updated = run("keys", "update", created["id"], "--budget-usd", "25.5", "--clear", "budget_reset")
    assert json.loads(updated.stdout)["budget_usd"] == 25.5 and json.loads(updated.stdout)["budget_reset"] is None
    bad = run("keys", "create", "--name", "b", "--budget-usd", "lots")
    assert bad.exit_code == 2 and "--budget-usd" in bad.output
    assert run("keys", "create", "--name", "b", "--budget-period", "year").exit_code == 2


def test_a_budgeted_key_may_not_call_a_model_without_a_price(build, upstream) -> None:
    client = build().test_client()
    key = _key(client, budget_usd=1)
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "unpriced"}, headers=key)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["code"], error["param"]) == ("model_not_priced", "model") and "unpriced" in error["message"]
    assert client.post("/v1/completions", json={"prompt": "no model"}, headers=key).get_json()["error"]["code"] == "model_not_priced"
    assert upstream.requests == []
    # A key without a budget, and the master key, still may (their rows have no cost).
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "unpriced"}, headers=_key(client)).status_code == 200
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "unpriced"}, headers=KEY_HEADERS).status_code == 200


def test_without_a_price_table_a_budgeted_key_is_refused(make_app, upstream) -> None:
    client = make_app(key_cache_seconds=0).test_client()
    key = _key(client, budget_usd=5)
    assert client.post("/v1/completions", json=TEXT, headers=key).get_json()["error"]["code"] == "model_not_priced"
    assert upstream.requests == []


def test_a_call_without_a_limit_is_clamped_to_what_the_budget_allows(build, upstream) -> None:
    client = build().test_client()
    key = _key(client, budget_usd=0.01)
    response = client.post("/v1/completions", json=TEXT, headers=key)
    # 0.01 USD = 10,000 micro-dollars: the prompt's 10 tokens at 100 leave 9,000, so 60 tokens at 150.
    assert response.status_code == 200 and response.headers[CLAMPED] == "60"
    assert upstream.requests[-1].json() == {**TEXT, "max_tokens": 60}
    budget = _budget(client, key)
    assert (budget["usage"], budget["limit"], budget["limit_remaining"]) == (0.00155, 0.01, 0.00845)  # settled to 5 x 100 + 7 x 150
    # With plenty of money, the completion is the token plan's (1024), and the limit is set even without token counters.
    rich = _key(client, budget_usd=100)
    assert client.post("/v1/completions", json=TEXT, headers=rich).headers[CLAMPED] == "1024"
    assert client.post("/v1/completions", json={**TEXT, "max_tokens": 5}, headers=rich).headers.get(CLAMPED) is None


def test_tokens_held_beyond_the_budgets_limit_are_given_back_at_once(build, upstream) -> None:
    client = build().test_client()
    key = _key(client, budget_usd=0.01, budget_tokens_day=1000)
    upstream.behavior = Behavior(chunks=3, gap=0.05)
    stream = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=key, buffered=False)
    # 10,000 - 14 x 100 = 8,600 micro-dollars: 57 tokens at 150 (the token counter alone would allow 986).
    assert stream.status_code == 200 and stream.headers[CLAMPED] == "57"
    remaining = client.get("/api/usage", headers=key).get_json()["remaining"]
    assert remaining["tokens"]["budget_tokens_day"]["remaining"] == 1000 - 14 - 57  # held while the stream is open
    assert remaining["budget"]["usage"] == 0.00995  # 14 x 100 + 57 x 150
    stream.get_data()
    stream.close()
    remaining = client.get("/api/usage", headers=key).get_json()["remaining"]
    assert remaining["tokens"]["budget_tokens_day"]["remaining"] == 1000 - 12  # the stream's usage: 9 + 3
    assert remaining["budget"]["usage"] == 0.00135  # 9 x 100 + 3 x 150


def test_refused_when_not_even_a_minimal_answer_fits_until_the_month_ends(build, upstream) -> None:
    with time_machine.travel(NOW, tick=False):
        client = build().test_client()
        key = _key(client, budget_usd=0.01)
        upstream.behavior = Behavior(mode="raw", body=_answer(5, 60))  # it used all it was allowed: 9,500
        assert client.post("/v1/completions", json=TEXT, headers=key).headers[CLAMPED] == "60"
        refused = client.post("/v1/completions", json=TEXT, headers=key)  # 500 left; 10 x 100 + 16 x 150 needed
        assert refused.status_code == 429 and CLAMPED not in refused.headers
        error = refused.get_json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
        assert "budget (0.01 USD per month)" in error["message"] and "minimal answer" in error["message"]
        assert refused.headers["Retry-After"] == str(TO_MONTH_END)
        budget = _budget(client, key)
        assert budget["resets_at"] == "2026-12-01T00:00:00+00:00" and budget["resets_in"] == TO_MONTH_END
        assert (budget["limit_reset"], budget["reset"], budget["window_start"]) == ("month", "calendar", "2026-11-01T00:00:00+00:00")
        assert len(upstream.requests) == 1


def test_a_call_with_its_own_limit_holds_it_whole_or_is_refused(build, upstream) -> None:
    client = build().test_client()
    key = _key(client, budget_usd=0.01)
    refused = client.post("/v1/completions", json={**TEXT, "max_tokens": 100}, headers=key)  # 1,000 + 15,000
    assert refused.status_code == 429 and "max_tokens" in refused.get_json()["error"]["message"]
    raw = json.dumps({**TEXT, "max_tokens": 20}).encode()  # 1,000 + 3,000: fits
    response = client.post("/v1/completions", data=raw, content_type="application/json", headers=key)
    assert response.status_code == 200 and CLAMPED not in response.headers and upstream.requests[-1].body == raw


@pytest.mark.parametrize(("period", "reset", "start"), [("day", "calendar", "2026-11-27T23:59:59"), ("week", "rolling", None)])
def test_a_spent_budget_starts_again_at_the_period_boundary(build, upstream, period, reset, start) -> None:
    with time_machine.travel(start or NOW, tick=False) as traveller:
        client = build().test_client()
        key = _key(client, budget_usd=0.004, budget_period=period, budget_reset=reset)
        if start is None:  # rolling: a week from the key's creation
            traveller.shift(7 * 86400 - 1)
        assert client.post("/v1/completions", json=TEXT, headers=key).status_code == 200  # 1,550 of 4,000; 3,400 needed
        refused = client.post("/v1/completions", json=TEXT, headers=key)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        traveller.shift(1)
        assert client.post("/v1/completions", json=TEXT, headers=key).status_code == 200
        assert _budget(client, key)["usage"] == 0.00155


def test_the_counter_settles_to_the_cost_the_usage_rows_record(build, upstream) -> None:
    app = build()
    client = app.test_client()
    key = _key(client, budget_usd=1)
    upstream.behavior = Behavior(usage_details={"prompt_tokens_details": {"cached_tokens": 4}})
    for document in ({**CHAT, "model": "cached"}, {**CHAT, "model": "cached", "stream": True}, TEXT):
        path = "/v1/chat/completions" if "messages" in document else "/v1/completions"
        response = client.post(path, json=document, headers=key)
        assert response.status_code == 200 and response.get_data()
        response.close()  # a stream is settled at its end
    assert client.post("/v1/embeddings", json={"model": "metered", "input": "hi"}, headers=key).status_code == 200
    upstream.behavior = Behavior(mode="status", status=500)
    assert client.post("/v1/completions", json=TEXT, headers=key).status_code == 502  # no answer: no cost
    costs = recorded_costs(app)
    assert costs[-1] is None and all(cost is not None for cost in costs[:-1])
    # Cached chat 5 x 100 + 4 x 300 + 6 x 150, its stream (5 chunks) 2,450, text 1,550, embeddings 4 x 100.
    assert costs[:-1] == [0.0026, 0.00245, 0.00155, 0.0004]
    assert _budget(client, key)["usage"] == 0.007


def test_usage_shows_no_budget_for_a_key_without_one(build) -> None:
    client = build().test_client()
    key = _key(client)
    body = client.get("/api/usage", headers=key).get_json()
    assert body["remaining"]["budget"] is None
    assert {body["limits"][name] for name in ("budget_usd", "budget_period", "budget_reset")} == {None}
    budgeted = _key(client, budget_usd=2.5, budget_period="day")
    limits = client.get("/api/usage", headers=budgeted).get_json()["limits"]
    assert (limits["budget_usd"], limits["budget_period"], limits["budget_reset"]) == (2.5, "day", None)
