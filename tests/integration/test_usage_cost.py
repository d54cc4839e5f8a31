"""Cost per usage row, reasoning and cached tokens, the report's sums and ``GET /admin/prices``,
through real requests to the fake upstream, on SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from gateway.store.tables import usage
from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import Behavior, FakeUpstream

PRICES = """\
prices:
  chat-m: {input: 2.50, cached_input: 1.25, output: 10.00, currency: USD}
  "text-*": {input: 2.50, output: 10}
"""
DETAILS = {"prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}
CHAT = {"model": "chat-m", "messages": [{"role": "user", "content": "hi"}]}


def _config(tmp_path: Path, text: str, name: str = "gateway.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def priced(database_url: str, make_app, tmp_path: Path) -> Any:
    """Build apps on one database with a prices-only config file (the fake upstream from AI_API_URL)."""

    def build(text: str = PRICES, name: str = "gateway.yaml") -> Flask:
        return make_app(database_url=database_url, key_cache_seconds=0, gateway_config=_config(tmp_path, text, name))

    return build


def _rows(app: Flask) -> list[dict]:
    assert app.extensions["gateway.usage"].flush(timeout=5)
    with app.extensions["gateway.store"].engine.connect() as connection:
        return [row._asdict() for row in connection.execute(select(usage).order_by(usage.c.id))]


def _figures(row: dict) -> tuple:
    return row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"], row["reasoning_tokens"], row["cost_usd"]


def test_chat_completion_and_stream_rows_carry_their_details_and_cost(priced, upstream: FakeUpstream) -> None:
    app = priced()
    client = app.test_client()
    upstream.behavior = Behavior(usage_details=DETAILS)
    assert client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).status_code == 200
    assert client.post("/v1/completions", json={"model": "text-x", "prompt": "hi"}, headers=KEY_HEADERS).status_code == 200
    streamed = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=KEY_HEADERS)
    body = streamed.get_data()
    assert b"cached_tokens" not in body  # the client did not ask for usage: the chunk was removed
    upstream.behavior = Behavior()
    assert client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).status_code == 200
    chat, text, stream, plain = _rows(app)
    # (9 - 4) x 2.50 + 4 x 1.25 + 6 x 10 = 77.5 per million: the 2 reasoning tokens are among the 6, priced once.
    assert _figures(chat) == (9, 4, 6, 2, 0.0000775)
    # "text-*" has no cached_input: cached tokens at the input price: 5 x 2.50 + 7 x 10 = 82.5.
    assert _figures(text) == (5, 4, 7, 2, 0.0000825)
    # The streamed usage chunk (5 chunks): 5 x 2.50 + 4 x 1.25 + 5 x 10 = 67.5.
    assert _figures(stream) == (9, 4, 5, 2, 0.0000675)
    assert _figures(plain) == (9, 0, 6, 0, 0.0000825)
    assert not any(row["tokens_estimated"] for row in (chat, text, stream, plain))


def test_estimated_usage_is_priced_and_says_so(database_url: str, make_app, tmp_path: Path, upstream: FakeUpstream) -> None:
    app = make_app(database_url=database_url, gateway_config=_config(tmp_path, PRICES), upstream_stream_usage=False)
    response = app.test_client().post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=KEY_HEADERS)
    assert response.status_code == 200 and response.get_data().rstrip().endswith(b"[DONE]")
    (row,) = _rows(app)
    assert row["tokens_estimated"] is True and row["cached_tokens"] == 0 and row["reasoning_tokens"] == 0
    assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] * 2.5 + row["completion_tokens"] * 10) / 1e6, abs=1e-15)
    assert row["cost_usd"] > 0


def test_a_model_without_a_price_is_recorded_with_no_cost_and_one_warning(
    priced, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    app = priced()
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="gateway.usage.cost"):
        for _ in range(3):
            assert client.post("/v1/chat/completions", json={**CHAT, "model": "unpriced"}, headers=KEY_HEADERS).status_code == 200
        rows = _rows(app)
    assert [(row["model"], row["total_tokens"], row["cost_usd"]) for row in rows] == [("unpriced", 15, None)] * 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.usage.cost"]
    assert warnings == ["model 'unpriced' has no price in the config file's prices: its usage rows have no cost"]


def test_a_request_refused_before_any_answer_has_no_cost(priced, upstream: FakeUpstream) -> None:
    app = priced()
    upstream.behavior = Behavior(mode="status", status=500)
    assert app.test_client().post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).status_code == 502
    (row,) = _rows(app)
    assert (row["total_tokens"], row["cached_tokens"], row["reasoning_tokens"], row["cost_usd"]) == (None, None, None, None)


def test_a_price_change_never_rewrites_history(priced, upstream: FakeUpstream) -> None:
    before = priced()
    assert before.test_client().post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).status_code == 200
    _rows(before)
    # A new file (a reload brings it in new workers): chat-m costs twice as much from now on.
    after = priced("prices:\n  chat-m: {input: 5, output: 20}\n", name="new.yaml")
    assert after.test_client().post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).status_code == 200
    assert [row["cost_usd"] for row in _rows(after)] == [0.0000825, 0.000165]


def test_the_report_sums_cost_where_it_sums_tokens(priced, upstream: FakeUpstream) -> None:
    app = priced()
    client = app.test_client()
    created = client.post("/admin/keys", json={"name": "c"}, headers=KEY_HEADERS).get_json()
    own = {"X-API-Key": created["secret"]}
    upstream.behavior = Behavior(usage_details=DETAILS)
    for model, headers in (("chat-m", own), ("chat-m", own), ("text-a", KEY_HEADERS), ("free-m", own)):
        assert client.post("/v1/chat/completions", json={**CHAT, "model": model}, headers=headers).status_code == 200
    _rows(app)
    report = client.get("/admin/usage?group_by=model", headers=KEY_HEADERS).get_json()
    # chat-m: 77.5 per million each; text-a ("text-*", cached at the input price): 5 x 2.5 + 4 x 2.5 + 6 x 10 = 82.5.
    assert report["totals"]["cost_usd"] == pytest.approx(0.0002375, abs=1e-15)
    totals = report["totals"]
    assert (totals["cached_tokens"], totals["reasoning_tokens"], totals["unpriced_requests"]) == (16, 8, 1)
    by_model = {group["model"]: (group["cost_usd"], group["unpriced_requests"]) for group in report["groups"]}
    assert by_model == {"chat-m": (0.000155, 0), "free-m": (None, 1), "text-a": (0.0000825, 0)}
    mine = client.get("/api/usage", headers=own).get_json()
    assert mine["totals"]["cost_usd"] == mine["this_month"]["cost_usd"] == mine["today"]["cost_usd"] == 0.000155
    assert mine["totals"]["unpriced_requests"] == 1 and mine["by_day"][0]["cost_usd"] == 0.000155


def test_admin_prices_shows_the_table_in_force_to_the_master_key_only(priced, upstream: FakeUpstream) -> None:
    app = priced()
    client = app.test_client()
    body = client.get("/admin/prices", headers=KEY_HEADERS).get_json()
    assert body == {
        "object": "list",
        "source": app.config["GATEWAY"].gateway_config,
        "currency": "USD",
        "per_tokens": 1_000_000,
        "data": [
            {"model": "chat-m", "input": 2.5, "cached_input": 1.25, "output": 10.0, "currency": "USD", "per_tokens": 1_000_000},
            {"model": "text-*", "input": 2.5, "cached_input": 2.5, "output": 10.0, "currency": "USD", "per_tokens": 1_000_000},
        ],
    }
    created = client.post("/admin/keys", json={"name": "c"}, headers=KEY_HEADERS).get_json()
    assert client.get("/admin/prices", headers={"X-API-Key": created["secret"]}).status_code == 403
    assert client.get("/admin/prices").status_code == 401


def test_admin_prices_is_empty_without_a_price_table(app: Flask) -> None:
    body = app.test_client().get("/admin/prices", headers=KEY_HEADERS).get_json()
    assert body["data"] == [] and body["source"] is None


def test_the_openapi_describes_admin_prices(app: Flask) -> None:
    document = app.test_client().get("/openapi.json").get_json()
    answer = document["paths"]["/admin/prices"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/Prices"}
    schema = document["components"]["schemas"]["Prices"]
    assert schema["properties"]["data"]["items"]["required"] == ["model", "input", "cached_input", "output", "currency", "per_tokens"]
    assert "cost_usd" in document["components"]["schemas"]["UsageReport"]["properties"]["totals"]["properties"]
