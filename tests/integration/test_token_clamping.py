"""A call without max_tokens on a key with token counters: limited to what it holds, never past it (issue 15).

The gateway sets the upstream's ``max_tokens`` to what the call holds beyond its prompt's
bound (the default reserve, the key's cap, or what is left when less is left) and says so
in ``X-Gateway-Max-Tokens-Clamped``; it refuses (429 ``insufficient_quota``) only when not
even the prompt and MIN_COMPLETION_TOKENS fit.
"""

from __future__ import annotations

import json

import pytest

from gateway.quotas.policy import DEFAULT_COMPLETION_RESERVE, MIN_COMPLETION_TOKENS
from gateway.upstream.accounting import prompt_token_bound
from tests.conftest import KEY_HEADERS, REDIS_URL
from tests.fakes.upstream import Behavior

CLAMPED = "X-Gateway-Max-Tokens-Clamped"
JOKE = {"model": "m", "prompt": "Tell me a joke"}
JOKE_PROMPT = prompt_token_bound(JOKE)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Tell me a joke"}]}
CHAT_PROMPT = prompt_token_bound(CHAT)


@pytest.fixture(params=["memory", "redis"])
def build(request, make_app, redis_prefix):
    """Apps counting tokens in the process, or in Redis (the Lua script)."""
    extra = {"rate_limit_storage_uri": REDIS_URL, "rate_limit_key_prefix": redis_prefix} if request.param == "redis" else {}

    plenty = {"rate_limit_ai": "1000 per minute", "rate_limit_general": "1000 per minute"}

    def app(**overrides):
        return make_app(key_cache_seconds=0, **plenty, **extra, **overrides)

    return app


def _key(client, **fields) -> dict[str, str]:
    response = client.post("/admin/keys", json={"name": "clamped", **fields}, headers=KEY_HEADERS)
    assert response.status_code == 201, response.get_json()
    return {"X-API-Key": response.get_json()["secret"]}


def _answer(total: int) -> bytes:
    """A completion whose usage says ``total`` tokens (to bring a counter where a test wants it)."""
    usage = {"prompt_tokens": 1, "completion_tokens": total - 1, "total_tokens": total}
    return json.dumps({"id": "x", "object": "text_completion", "choices": [{"text": "t", "index": 0}], "usage": usage}).encode()


def test_the_issue_example_is_clamped_to_what_is_left(build, upstream) -> None:
    client = build().test_client()
    key = _key(client, budget_tokens_day=100)
    response = client.post("/api/ai/completion", json=JOKE, headers=key)
    assert response.status_code == 200
    assert response.headers[CLAMPED] == str(100 - JOKE_PROMPT)
    # The rest of the body is the client's, in meaning.
    assert upstream.requests[-1].json() == {**JOKE, "max_tokens": 100 - JOKE_PROMPT}


@pytest.mark.parametrize("room", [JOKE_PROMPT + MIN_COMPLETION_TOKENS, JOKE_PROMPT + MIN_COMPLETION_TOKENS - 1])
def test_refused_only_when_not_even_a_minimal_answer_fits(build, upstream, room) -> None:
    client = build().test_client()
    key = _key(client, budget_tokens_day=100)
    upstream.behavior = Behavior(mode="raw", body=_answer(100 - room))
    assert client.post("/v1/completions", json={**JOKE, "max_tokens": 5}, headers=key).status_code == 200
    response = client.post("/v1/completions", json=JOKE, headers=key)
    if room >= JOKE_PROMPT + MIN_COMPLETION_TOKENS:
        assert response.status_code == 200 and response.headers[CLAMPED] == str(MIN_COMPLETION_TOKENS)
        assert upstream.requests[-1].json()["max_tokens"] == MIN_COMPLETION_TOKENS
        return
    assert response.status_code == 429 and CLAMPED not in response.headers
    error = response.get_json()["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "insufficient_quota"
    assert "minimal answer" in error["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 86400
    assert len(upstream.requests) == 1


def test_the_key_cap_limits_a_call_without_max_tokens(build, upstream) -> None:
    client = build().test_client()
    capped = _key(client, max_tokens_cap=500)
    response = client.post("/v1/completions", json=JOKE, headers=capped)
    assert response.status_code == 200 and response.headers[CLAMPED] == "500"
    assert upstream.requests[-1].json() == {**JOKE, "max_tokens": 500}
    # With a budget too: the cap while more is left, what is left after that.
    budgeted = _key(client, max_tokens_cap=500, budget_tokens_day=600)
    upstream.behavior = Behavior(mode="raw", body=_answer(JOKE_PROMPT + 500))  # it used all it was allowed
    assert client.post("/v1/completions", json=JOKE, headers=budgeted).headers[CLAMPED] == "500"
    assert client.post("/v1/completions", json=JOKE, headers=budgeted).headers[CLAMPED] == str(600 - (JOKE_PROMPT + 500) - JOKE_PROMPT)


def test_a_call_asking_above_the_cap_is_still_refused(build, upstream) -> None:
    client = build().test_client()
    key = _key(client, max_tokens_cap=500, budget_tokens_day=100)
    response = client.post("/v1/completions", json={**JOKE, "max_tokens": 501}, headers=key)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "max_tokens_above_cap"
    assert upstream.requests == []


def test_a_call_with_its_own_limit_goes_as_written(build, upstream) -> None:
    client = build().test_client()
    key = _key(client, budget_tokens_day=100)
    raw = json.dumps({**JOKE, "max_tokens": 50}).encode()
    response = client.post("/v1/completions", data=raw, content_type="application/json", headers=key)
    assert response.status_code == 200 and CLAMPED not in response.headers
    assert upstream.requests[-1].body == raw  # not even re-encoded
    # One that does not fit is refused, not clamped (the client asked for that much).
    refused = client.post("/v1/completions", json={**JOKE, "max_tokens": 99}, headers=key)
    assert refused.status_code == 429 and refused.get_json()["error"]["type"] == "insufficient_quota"
    assert "max_tokens" in refused.get_json()["error"]["message"]
    chat = {**CHAT, "max_completion_tokens": 40}
    response = client.post("/v1/chat/completions", json=chat, headers=key)
    assert response.status_code == 200 and CLAMPED not in response.headers
    assert upstream.requests[-1].json() == chat


def test_plenty_left_a_counted_key_still_limits_the_answer_to_what_it_holds(build, upstream) -> None:
    # Exact budgets: the answer can never use more than the call held, even with plenty left.
    client = build().test_client()
    key = _key(client, budget_tokens_day=DEFAULT_COMPLETION_RESERVE * 10)
    response = client.post("/v1/completions", json=JOKE, headers=key)
    assert response.status_code == 200 and response.headers[CLAMPED] == str(DEFAULT_COMPLETION_RESERVE)
    assert upstream.requests[-1].json() == {**JOKE, "max_tokens": DEFAULT_COMPLETION_RESERVE}


def test_a_key_without_token_counters_or_cap_leaves_the_body_alone(build, upstream) -> None:
    client = build().test_client()
    key = _key(client)
    raw = json.dumps(JOKE).encode()
    response = client.post("/v1/completions", data=raw, content_type="application/json", headers=key)
    assert response.status_code == 200 and CLAMPED not in response.headers
    assert upstream.requests[-1].body == raw


def test_chat_is_clamped_with_max_tokens(build, upstream) -> None:
    client = build().test_client()
    key = _key(client, tokens_per_minute=300)
    response = client.post("/v1/chat/completions", json=CHAT, headers=key)
    assert response.status_code == 200 and response.headers[CLAMPED] == str(300 - CHAT_PROMPT)
    assert upstream.requests[-1].json() == {**CHAT, "max_tokens": 300 - CHAT_PROMPT}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_clamped_stream_says_so_and_still_reports_its_usage(build, upstream, path) -> None:
    client = build().test_client()
    key = _key(client, budget_tokens_month=200)
    document = {**(CHAT if "chat" in path else JOKE), "stream": True}
    prompt = prompt_token_bound(document)
    upstream.behavior = Behavior(chunks=3)
    response = client.post(path, json=document, headers=key)
    assert response.status_code == 200 and response.headers[CLAMPED] == str(200 - prompt)
    text = response.get_data()
    assert text.endswith(b"data: [DONE]\n\n") and b'"usage"' not in text  # the usage chunk was for the gateway
    sent = upstream.requests[-1].json()
    assert sent == {**document, "max_tokens": 200 - prompt, "stream_options": {"include_usage": True}}
    # Settled to the fake's usage (prompt 9 or 5, 3 completion tokens), so the next is clamped below that.
    used = (9 if "chat" in path else 5) + 3
    assert client.post(path, json=document, headers=key).headers[CLAMPED] == str(200 - used - prompt)


def test_held_streams_never_hold_more_than_the_budget(build, upstream) -> None:
    """Reservation = prompt estimate + the limit the upstream was given: while streams are open,
    what they hold adds up to the budget exactly, and the next call is refused."""
    client = build().test_client()
    key = _key(client, max_tokens_cap=1000, budget_tokens_day=2500)
    document = {**CHAT, "stream": True}
    opened = [client.post("/v1/chat/completions", json=document, headers=key, buffered=False) for _ in range(3)]
    assert [response.headers[CLAMPED] for response in opened] == ["1000", "1000", str(500 - 3 * CHAT_PROMPT)]
    limits = [request.json()["max_tokens"] for request in upstream.requests]
    assert sum(limits) + 3 * CHAT_PROMPT == 2500
    tokens = client.get("/api/usage", headers=key).get_json()["remaining"]["tokens"]
    assert tokens["budget_tokens_day"]["remaining"] == 0
    assert client.post("/v1/chat/completions", json=document, headers=key).status_code == 429
    for response in opened:
        response.get_data()
        response.close()


def test_embeddings_are_never_given_a_completion_limit(build, upstream) -> None:
    client = build().test_client()
    key = _key(client, budget_tokens_day=50, max_tokens_cap=10)
    raw = json.dumps({"model": "m", "input": "Tell me a joke"}).encode()
    response = client.post("/v1/embeddings", data=raw, content_type="application/json", headers=key)
    assert response.status_code == 200 and CLAMPED not in response.headers
    assert upstream.requests[-1].body == raw


@pytest.mark.parametrize("store", ["local", "redis"])
def test_counters_shrink_to_the_tightest_room_or_refuse(store, redis_prefix) -> None:
    """Both stores: the amount shrinks to the least room of all counters, not below the minimum,
    and a refusal names the first counter that refused and holds nothing anywhere."""
    import redis

    from gateway.quotas.tokens import LocalCounters, RedisCounters

    client = redis.Redis.from_url(REDIS_URL)
    counters = LocalCounters() if store == "local" else RedisCounters(client)
    keys = [f"{redis_prefix}:a", f"{redis_prefix}:b"]
    ttls = [60, 60]
    assert counters.reserve(keys, [100, 50], ttls, 80, 10) == 50  # the second counter's room
    assert counters.reserve(keys, [100, 70], ttls, 80, 10) == 20  # 50 and 20 left: the tighter
    assert counters.reserve(keys, [100, 70], ttls, 80, 10) == -2  # 30 and 0 left
    assert counters.reserve(keys, [75, 200], ttls, 5, 5) == 5  # enough room: the amount asked
    assert counters.reserve(keys, [75, 200], ttls, 5, 5) == -1  # 0 left on the first
    assert [counters.used(key) for key in keys] == [75, 75]
    client.close()
