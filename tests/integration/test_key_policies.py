"""Per-key policy: allowed models, the max_tokens cap, own request limits, token quotas."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import time_machine

from gateway.quotas.policy import CallerPolicy
from gateway.quotas.tokens import window_of
from tests.conftest import KEY_HEADERS, REDIS_URL
from tests.fakes.upstream import Behavior

BODY = {"model": "m", "prompt": "hi"}


def _create(client, **fields) -> dict[str, str]:
    response = client.post("/admin/keys", json={"name": "team", **fields}, headers=KEY_HEADERS)
    assert response.status_code == 201, response.get_json()
    return {"X-API-Key": response.get_json()["secret"]}


@pytest.fixture
def sqlite_app(make_app):
    def build(**overrides):
        return make_app(key_cache_seconds=0, **overrides)

    return build


def test_allowed_models_exact_and_glob(sqlite_app, upstream) -> None:
    client = sqlite_app().test_client()
    key = _create(client, allowed_models=["gpt-4o", "llama3:*"])
    for model, status in (("gpt-4o", 200), ("llama3:8b", 200), ("gpt-4o-mini", 403), ("llama2", 403)):
        response = client.post("/v1/chat/completions", json={"model": model, "messages": []}, headers=key)
        assert response.status_code == status, model
        if status == 403:
            error = response.get_json()["error"]
            assert error["code"] == "model_not_allowed" and error["param"] == "model"
    assert len(upstream.requests) == 2
    missing = client.post("/v1/completions", json={"prompt": "hi"}, headers=key)
    assert missing.status_code == 403
    # Without a list, every model is allowed (the master key too).
    assert client.post("/v1/completions", json={"model": "anything"}, headers=KEY_HEADERS).status_code == 200


def test_max_tokens_cap(sqlite_app, upstream) -> None:
    client = sqlite_app().test_client()
    key = _create(client, max_tokens_cap=100)
    assert client.post("/v1/completions", json={**BODY, "max_tokens": 100}, headers=key).status_code == 200
    over = client.post("/v1/completions", json={**BODY, "max_tokens": 101}, headers=key)
    assert over.status_code == 400
    assert over.get_json()["error"]["code"] == "max_tokens_above_cap" and over.get_json()["error"]["param"] == "max_tokens"
    over_new_name = client.post("/v1/chat/completions", json={"model": "m", "messages": [], "max_completion_tokens": 500}, headers=key)
    assert over_new_name.status_code == 400
    assert client.post("/v1/completions", json={**BODY, "max_tokens": "lots"}, headers=key).status_code == 400
    assert len(upstream.requests) == 1


def test_keys_are_held_to_their_own_request_limits(sqlite_app) -> None:
    client = sqlite_app(rate_limit_ai="5 per minute").test_client()
    tight = _create(client, rate_limit_ai="2 per minute")
    loose = _create(client, rate_limit_ai="4 per minute")
    tight_statuses = [client.get("/v1/models", headers=tight).status_code for _ in range(3)]
    loose_statuses = [client.get("/v1/models", headers=loose).status_code for _ in range(5)]
    master = [client.get("/v1/models", headers=KEY_HEADERS).status_code for _ in range(6)]
    assert tight_statuses == [200, 200, 429]
    assert loose_statuses == [200] * 4 + [429]
    assert master == [200] * 5 + [429]  # the master key has the defaults, not a bypass
    limited = client.get("/v1/models", headers=tight)
    assert limited.headers["X-RateLimit-Limit"] == "2"


def test_key_general_limit_overrides_the_default(sqlite_app) -> None:
    client = sqlite_app(rate_limit_general="50 per minute").test_client()
    key = _create(client, rate_limit_general="3 per minute")
    assert [client.get("/v1/models", headers=key).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_token_budget_is_reserved_then_settled(sqlite_app, upstream) -> None:
    client = sqlite_app().test_client()
    key = _create(client, budget_tokens_day=100)
    # Reserve the prompt's bound (10: 2 bytes + 8) + max_tokens (70) = 80; the fake then reports 12 used.
    assert client.post("/v1/completions", json={**BODY, "max_tokens": 70}, headers=key).status_code == 200
    # 12 used, so another 80-token reservation fits (12 + 80 <= 100); it settles to 12 as well.
    assert client.post("/v1/completions", json={**BODY, "max_tokens": 70}, headers=key).status_code == 200
    refused = client.post("/v1/completions", json={**BODY, "max_tokens": 90}, headers=key)  # 24 + 100 > 100
    assert refused.status_code == 429
    error = refused.get_json()["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "insufficient_quota"
    assert 1 <= int(refused.headers["Retry-After"]) <= 86400
    assert len(upstream.requests) == 2


def test_failed_requests_give_their_reservation_back(sqlite_app, upstream) -> None:
    client = sqlite_app().test_client()
    key = _create(client, tokens_per_minute=200)
    upstream.behavior = Behavior(mode="status", status=500)
    for _ in range(5):
        assert client.post("/v1/completions", json={**BODY, "max_tokens": 150}, headers=key).status_code == 502
    upstream.behavior = Behavior()
    assert client.post("/v1/completions", json={**BODY, "max_tokens": 150}, headers=key).status_code == 200


def test_streams_settle_with_the_usage_they_report(sqlite_app, upstream) -> None:
    client = sqlite_app().test_client()
    key = _create(client, tokens_per_day=75)
    upstream.behavior = Behavior(chunks=3)
    chat = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
    # each reserves 54 (the prompt's bound: 2 bytes + 4 for the message + 8; and 40) and settles
    # to 12 (9 prompt + 3 completion)
    for _ in range(2):
        assert client.post("/v1/chat/completions", json=chat, headers=key).get_data().endswith(b"data: [DONE]\n\n")
    # 24 used: 54 more would pass 75
    assert client.post("/v1/chat/completions", json=chat, headers=key).status_code == 429


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_concurrent_requests_never_overshoot_a_budget(sqlite_app, upstream, redis_prefix, storage) -> None:
    extra = {"rate_limit_storage_uri": REDIS_URL, "rate_limit_key_prefix": redis_prefix} if storage == "redis" else {}
    app = sqlite_app(rate_limit_ai="1000 per minute", rate_limit_general="1000 per minute", **extra)
    key = _create(app.test_client(), budget_tokens_day=1000)
    # Each call reserves 10 (the prompt's bound) + 100 (max_tokens) and reports 100 used.
    answer = {
        "id": "x",
        "object": "text_completion",
        "choices": [{"text": "t", "index": 0}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 99, "total_tokens": 100},
    }
    upstream.behavior = Behavior(mode="raw", body=json.dumps(answer).encode())
    barrier = threading.Barrier(50)

    def call(_):
        client = app.test_client()
        barrier.wait()
        response = client.post("/v1/completions", json={**BODY, "max_tokens": 100}, headers=key)
        return response.status_code, response.get_json()["error"]["code"] if response.status_code != 200 else None

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(call, range(50)))
    admitted = sum(1 for status, _ in results if status == 200)
    assert {code for status, code in results if status != 200} == {"insufficient_quota"}
    assert 1 <= admitted and admitted * 100 <= 1000  # what each used never passes what it held


def test_token_counters_reset_with_their_window(sqlite_app) -> None:
    with time_machine.travel("2026-11-27 10:00:30+00:00", tick=False) as traveller:
        client = sqlite_app().test_client()
        key = _create(client, tokens_per_minute=100)
        assert client.post("/v1/completions", json={**BODY, "max_tokens": 90}, headers=key).status_code == 200
        assert client.post("/v1/completions", json={**BODY, "max_tokens": 90}, headers=key).status_code == 429
        traveller.shift(31)  # the next minute
        assert client.post("/v1/completions", json={**BODY, "max_tokens": 90}, headers=key).status_code == 200


def test_windows_are_utc_calendar_windows() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 27, 5, 0, 17, tzinfo=UTC).timestamp()
    assert window_of("tokens_per_minute", now) == (f"m{int(now // 60) * 60}", 43)
    assert window_of("budget_tokens_day", now) == ("d20261127", 19 * 3600 - 17)
    month_end = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert window_of("budget_tokens_month", now) == ("M202611", int(month_end - now))


def test_policy_falls_back_to_defaults() -> None:
    from gateway.config import Settings

    policy = CallerPolicy.build("master", None, Settings())
    assert policy.rate_limit_ai == "20 per 15 minutes" and policy.token_limits == () and policy.allowed_models is None


def test_without_max_tokens_a_request_holds_what_is_left(sqlite_app, upstream) -> None:
    """The reservation shrinks to what is left, the upstream is told so, and a room smaller than
    the prompt's bound (10) and MIN_COMPLETION_TOKENS (16) means 429 (tests/integration/test_token_clamping.py)."""
    client = sqlite_app().test_client()
    key = _create(client, tokens_per_day=100)
    statuses = [client.post("/v1/completions", json=BODY, headers=key).status_code for _ in range(12)]
    # Each call uses 12 (the fake's usage): after 7 calls 16 are left, fewer than 10 + 16.
    assert statuses == [200] * 7 + [429] * 5
    assert [request.json()["max_tokens"] for request in upstream.requests] == [90 - 12 * n for n in range(7)]


def test_remaining_says_unknown_when_the_store_is_down() -> None:
    from gateway.quotas.tokens import TokenLedger

    class Down:
        def used(self, key: str) -> int:
            raise ConnectionError("down")

    policy = CallerPolicy("key_x", "1 per minute", "1 per minute", None, None, (("tokens_per_day", 100),))
    assert TokenLedger("p", Down(), fail_open=True).remaining(policy) == {"tokens_per_day": None}  # type: ignore[arg-type]
    figures = TokenLedger("p", None, fail_open=True).remaining(policy)
    assert figures["tokens_per_day"]["remaining"] == 100
