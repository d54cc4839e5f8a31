"""Quotas shared through the machine's real Redis; window strategy; headers; concurrency."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
import redis

from gateway.store.audit import Actor
from tests.conftest import KEY_HEADERS, REDIS_URL
from tests.fakes.upstream import Behavior

BODY = {"model": "m", "prompt": "hi"}
CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def redis_app(make_app, redis_prefix):
    def build(**overrides):
        return make_app(rate_limit_storage_uri=REDIS_URL, rate_limit_key_prefix=redis_prefix, **overrides)

    return build


def _ai(client):
    return client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS).status_code


def test_two_instances_share_one_quota(redis_app, upstream) -> None:
    first, second = redis_app().test_client(), redis_app().test_client()
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(lambda i: _ai(first if i % 2 else second), range(30)))
    assert statuses.count(200) == 20 and statuses.count(429) == 10
    assert len(upstream.requests) == 20


def test_counters_are_in_redis_under_the_prefix(redis_app, redis_prefix) -> None:
    client = redis_app().test_client()
    assert _ai(client) == 200
    keys = [k.decode() for k in redis.Redis.from_url(REDIS_URL).scan_iter(match=f"*{redis_prefix}*")]
    assert any("key:master" in k and "/ai/" in k for k in keys)
    assert not any("mk-canary" in k for k in keys)  # the identity, never the secret


def test_ietf_ratelimit_headers_name_the_tightest_policy(redis_app) -> None:
    client = redis_app(rate_limit_general="10 per minute", rate_limit_ai="3 per minute").test_client()
    response = client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS)
    policies = response.headers["RateLimit-Policy"]
    assert '"general";q=10;w=60' in policies and '"ai";q=3;w=60' in policies
    assert re.fullmatch(r'"ai";r=2;t=\d+', response.headers["RateLimit"])
    assert response.headers["X-RateLimit-Limit"] == "3" and response.headers["X-RateLimit-Remaining"] == "2"
    for _ in range(2):
        client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS)
    limited = client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS)
    assert limited.status_code == 429
    match = re.fullmatch(r'"ai";r=0;t=(\d+)', limited.headers["RateLimit"])
    assert match and 1 <= int(limited.headers["Retry-After"]) <= 60


def _admissions_at_a_window_boundary(client) -> list[tuple[float, float]]:
    """One call, then bursts just before and just after the 2-second boundary that a
    fixed window would reset at. Returns (sent, answered) for each admitted call."""
    admitted = []

    def burst(count: int) -> None:
        for _ in range(count):
            sent = time.monotonic()
            if client.get("/v1/models", headers=KEY_HEADERS).status_code == 200:
                admitted.append((sent, time.monotonic()))

    start = time.monotonic()
    burst(1)
    time.sleep(max(0.0, start + 1.8 - time.monotonic()))
    burst(8)
    time.sleep(max(0.0, start + 2.1 - time.monotonic()))
    burst(8)
    time.sleep(max(0.0, start + 4.3 - time.monotonic()))
    burst(8)
    return admitted


def _most_surely_within(admitted: list[tuple[float, float]], window: float) -> int:
    # The admission happened between sent and answered: count those certainly < window apart.
    return max(sum(1 for a in admitted[i:] if a[1] - sent < window) for i, (sent, _) in enumerate(admitted))


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_default_strategy_never_admits_more_than_the_quota_in_any_window(make_app, redis_prefix, storage) -> None:
    extra = {"rate_limit_storage_uri": REDIS_URL, "rate_limit_key_prefix": redis_prefix} if storage == "redis" else {}
    client = make_app(rate_limit_ai="5 per 2 seconds", rate_limit_general="1000 per minute", **extra).test_client()
    admitted = _admissions_at_a_window_boundary(client)
    assert len(admitted) >= 6  # the window does roll on
    assert _most_surely_within(admitted, 2.0) <= 5


@pytest.mark.slow  # waits for a real window boundary
def test_fixed_window_would_admit_a_double_burst_at_the_boundary(make_app) -> None:
    """The same traffic under fixed-window: why it is not the default."""
    client = make_app(
        rate_limit_ai="5 per 2 seconds", rate_limit_general="1000 per minute", rate_limit_strategy="fixed-window"
    ).test_client()
    assert _most_surely_within(_admissions_at_a_window_boundary(client), 2.0) > 5


def test_fixed_window_is_available_and_documented_as_bursty(make_app) -> None:
    client = make_app(rate_limit_ai="3 per 2 seconds", rate_limit_strategy="fixed-window").test_client()
    assert [client.get("/v1/models", headers=KEY_HEADERS).status_code for _ in range(4)] == [200, 200, 200, 429]


# --- concurrency slots ---------------------------------------------------------------


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_concurrency_limit_holds_until_the_stream_ends(make_app, redis_prefix, upstream, storage) -> None:
    extra = {"rate_limit_storage_uri": REDIS_URL, "rate_limit_key_prefix": redis_prefix} if storage == "redis" else {}
    app = make_app(rate_limit_concurrent=1, **extra)
    client = app.test_client()
    upstream.behavior = Behavior(chunks=20, gap=0.05)
    stream = client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS, buffered=False)
    events = iter(stream.response)
    assert next(events)
    blocked = client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS)
    assert blocked.status_code == 429
    assert blocked.get_json()["error"]["code"] == "concurrency_limit_exceeded"
    assert blocked.headers["Retry-After"] == "1"
    for _ in events:
        pass
    stream.close()
    assert _ai(client) == 200


def test_concurrency_slot_is_freed_when_the_client_drops_the_stream(make_app, redis_prefix, upstream) -> None:
    app = make_app(rate_limit_concurrent=1, rate_limit_storage_uri=REDIS_URL, rate_limit_key_prefix=redis_prefix)
    client = app.test_client()
    upstream.behavior = Behavior(chunks=100, gap=0.05)
    stream = client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS, buffered=False)
    assert next(iter(stream.response))
    stream.close()  # what the server does when the client disconnects
    assert _ai(client) == 200


def test_concurrency_slots_free_after_errors_and_timeouts(make_app, upstream) -> None:
    client = make_app(rate_limit_concurrent=1, upstream_read_timeout=0.3).test_client()
    for behavior in (Behavior(mode="hang", hang_seconds=2), Behavior(mode="status", status=500), Behavior(mode="drop")):
        upstream.behavior = behavior
        client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).get_data()
    upstream.behavior = Behavior()
    assert _ai(client) == 200
    assert client.application.extensions["gateway.inflight"].local.count("key:master") == 0


def test_concurrent_callers_get_exactly_the_limit(make_app, redis_prefix, upstream) -> None:
    upstream.behavior = Behavior(mode="drip", gap=0.002)
    app = make_app(rate_limit_concurrent=3, rate_limit_storage_uri=REDIS_URL, rate_limit_key_prefix=redis_prefix)
    barrier = threading.Barrier(8)

    def call(_):
        client = app.test_client()
        barrier.wait()
        return _ai(client)

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(call, range(8)))
    assert statuses.count(200) >= 3 and statuses.count(429) >= 1
    assert statuses.count(200) + statuses.count(429) == 8


def test_slot_expiry_is_the_safety_net(redis_prefix) -> None:
    from gateway.quotas.slots import RedisSlots

    slots = RedisSlots(redis.Redis.from_url(REDIS_URL), redis_prefix)
    assert slots.acquire("key:x", "a", 1, ttl=0.2)
    assert not slots.acquire("key:x", "b", 1, ttl=0.2)
    time.sleep(0.3)  # a crashed worker never released "a"
    assert slots.acquire("key:x", "c", 1, ttl=0.2)


def test_open_policy_serves_when_redis_answers_but_refuses_the_quota_commands(redis_app, upstream, capfd) -> None:
    """A Redis that answers PING but refuses the counting commands (here: the counters' keys
    hold fixed-window strings, and the moving window needs lists) gets the policy for each
    such request: with ``open`` the gateway counts it in the process and serves, with
    ``closed`` it answers 503. A refused command is not an outage (gateway.quotas.outage.is_outage):
    it is logged once, and the store stays in use for every caller whose commands it takes."""
    fixed = redis_app(rate_limit_strategy="fixed-window", rate_limit_on_storage_error="open").test_client()
    assert fixed.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS).status_code == 200
    moving_app = redis_app(rate_limit_strategy="moving-window", rate_limit_on_storage_error="open")
    moving = moving_app.test_client()
    statuses = [moving.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    logged = capfd.readouterr().err
    assert logged.count("rate limit storage refused a command (ResponseError)") == 1
    assert "rate limit storage unreachable" not in logged
    assert moving_app.extensions["gateway.quotas"].health.down_since is None
    closed = redis_app(rate_limit_strategy="moving-window", rate_limit_on_storage_error="closed").test_client()
    refused = closed.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS)
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "rate_limit_storage_unavailable"


ABSURD_LIMIT = "5 per 99999999999999 years"


def test_an_absurd_per_key_limit_cannot_be_stored(redis_app) -> None:
    client = redis_app().test_client()
    created = client.post("/admin/keys", json={"name": "a", "rate_limit_ai": ABSURD_LIMIT}, headers=KEY_HEADERS)
    assert created.status_code == 400 and created.get_json()["error"]["param"] == "rate_limit_ai"
    key = client.post("/admin/keys", json={"name": "a"}, headers=KEY_HEADERS).get_json()
    changed = client.patch(f"/admin/keys/{key['id']}", json={"rate_limit_general": ABSURD_LIMIT}, headers=KEY_HEADERS)
    assert changed.status_code == 400 and changed.get_json()["error"]["param"] == "rate_limit_general"


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_one_keys_refused_command_never_costs_other_keys_their_exact_quota(redis_app, upstream, capfd, policy: str) -> None:
    """Two instances (as two workers) share Redis. Key A's stored limit (written before limits
    had bounds) makes Redis refuse A's counting command; key B, at 5 per minute, must still get
    exactly 5 calls across both instances: A's error must not move anyone else off the store."""
    apps = [redis_app(rate_limit_on_storage_error=policy, key_cache_seconds=0) for _ in range(2)]
    admin = apps[0].test_client()
    secrets = {}
    for name in ("a", "b"):
        created = admin.post("/admin/keys", json={"name": name, "rate_limit_ai": "5 per minute"}, headers=KEY_HEADERS)
        secrets[name] = created.get_json()
        assert created.status_code == 201
    legacy = Actor(name="legacy-row", via="cli", address="cli")  # written straight to the store, past the validation
    store = apps[0].extensions["gateway.store"]
    store.keys.update(secrets["a"]["id"], {"rate_limit_ai": ABSURD_LIMIT}, actor=legacy, now=datetime.now(UTC))
    clients = [app.test_client() for app in apps]
    for client in clients:
        answer = client.post("/api/ai/completion", json=BODY, headers={"X-API-Key": secrets["a"]["secret"]})
        assert answer.status_code == (200 if policy == "open" else 503)
    statuses = [
        clients[i % 2].post("/api/ai/completion", json=BODY, headers={"X-API-Key": secrets["b"]["secret"]}).status_code
        for i in range(20)
    ]
    assert statuses.count(200) == 5 and statuses.count(429) == 15
    logged = capfd.readouterr().err
    assert "rate limit storage unreachable" not in logged
    assert logged.count("rate limit storage refused a command") == 2  # once per instance
    assert all(app.extensions["gateway.quotas"].health.down_since is None for app in apps)


def _commands_sent(app, call) -> list[str]:
    """The Redis commands the quota store's client sends while ``call()`` runs."""
    client = app.extensions["gateway.limiter"].storage.storage
    sent: list[str] = []
    send = client.execute_command

    def counting(*args, **options):
        sent.append(str(args[0]))
        return send(*args, **options)

    client.execute_command = counting
    try:
        call()
    finally:
        del client.execute_command
    return sent


def test_every_quota_of_a_request_and_its_headers_cost_one_round_trip(redis_app) -> None:
    """Two quotas on an AI endpoint, counted and read for the headers in one script call
    (the library's path takes four: a hit and a read per quota)."""
    app = redis_app(rate_limit_general="10 per minute", rate_limit_ai="3 per minute")
    client = app.test_client()
    assert _ai(client) == 200  # a Redis that has not seen the script yet also gets SCRIPT LOAD once
    responses = []
    sent = _commands_sent(app, lambda: responses.append(client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS)))
    assert sent == ["EVALSHA"]
    assert responses[0].headers["RateLimit"].startswith('"ai";r=1;')
    fixed = redis_app(rate_limit_strategy="fixed-window")
    assert fixed.extensions["gateway.quotas"].windows is None  # the library's path, one counter per call


def test_one_round_trip_counts_exactly_as_the_library_does(redis_prefix) -> None:
    """The script keeps limits' own keys and lists: counts made either way add up, the
    windows it reports are the library's, and counting stops at the first full counter."""
    from limits import parse
    from limits.storage import storage_from_string
    from limits.strategies import MovingWindowRateLimiter

    from gateway.quotas.redis_script import RedisWindows

    strategy = MovingWindowRateLimiter(storage_from_string(REDIS_URL))
    windows = RedisWindows.for_strategy(strategy)
    assert windows is not None
    tight, loose = parse("3 per minute"), parse("5 per minute")
    parts = {tight: (redis_prefix, "key:a", "ai"), loose: (redis_prefix, "key:a", "global")}
    counters = [(item, item.key_for(*parts[item])) for item in (tight, loose)]

    first = windows.hit(counters)
    assert [w.breached for w in first] == [False, False] and [w.remaining for w in first] == [2, 4]
    assert strategy.hit(tight, *parts[tight]) and strategy.hit(loose, *parts[loose])  # the library's path
    second = windows.hit(counters)
    assert [w.remaining for w in second] == [0, 2]
    for item, window in zip((tight, loose), second, strict=True):
        reset, remaining = strategy.get_window_stats(item, *parts[item])
        assert (window.remaining, window.reset_at) == (remaining, int(reset + 1))
        assert time.time() + 59 <= window.reset_at <= time.time() + 61

    refused = windows.hit(counters)
    assert len(refused) == 1 and refused[0].breached and refused[0].remaining == 0
    assert strategy.get_window_stats(loose, *parts[loose])[1] == 2  # not counted after the refusal
    assert not strategy.hit(tight, *parts[tight])


def test_one_round_trip_is_used_only_where_it_is_exact() -> None:
    from limits.storage import MemoryStorage, storage_from_string
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

    from gateway.quotas.redis_script import RedisWindows

    shared = storage_from_string(REDIS_URL)
    assert RedisWindows.for_strategy(MovingWindowRateLimiter(MemoryStorage())) is None
    assert RedisWindows.for_strategy(FixedWindowRateLimiter(shared)) is None
    assert RedisWindows.for_strategy(SlidingWindowCounterRateLimiter(shared)) is None


# --- the AI quota counts what is sent upstream -------------------------------------------

# Requests refused for their own input before any upstream call, with their status.
MALFORMED = [
    (400, {"data": "{not json", "content_type": "application/json"}),
    (400, {"json": {"model": "m", "prompt": "hi", "stream": "yes"}}),
    (413, {"json": {"model": "m", "prompt": "x" * 2000}}),
    (415, {"data": "model=m", "content_type": "application/x-www-form-urlencoded"}),
    (415, {"data": '{"model": "m"}'}),
]


def _storage(storage: str, redis_prefix: str) -> dict:
    return {"rate_limit_storage_uri": REDIS_URL, "rate_limit_key_prefix": redis_prefix} if storage == "redis" else {}


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_requests_refused_for_their_own_input_use_the_general_quota_only(make_app, redis_prefix, upstream, storage) -> None:
    app = make_app(
        rate_limit_ai="3 per minute", rate_limit_general="30 per minute", max_request_bytes=1024, **_storage(storage, redis_prefix)
    )
    client = app.test_client()
    for _ in range(2):  # twice the AI quota's worth of malformed requests
        for status, kwargs in MALFORMED:
            refused = client.post("/api/ai/completion", headers=KEY_HEADERS, **kwargs)
            assert refused.status_code == status, refused.get_json()
            assert refused.headers["RateLimit-Policy"] == '"general";q=30;w=60'
    assert refused.headers["X-RateLimit-Remaining"] == str(30 - 2 * len(MALFORMED))
    assert upstream.requests == []
    statuses = [_ai(client) for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # the whole AI quota is still there
    assert len(upstream.requests) == 3
    limited = client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS)
    assert limited.get_json()["error"]["code"] == "gateway_rate_limited" and "(ai)" in limited.get_json()["error"]["message"]
    remaining = client.get("/api/usage", headers=KEY_HEADERS).get_json()["remaining"]["requests"]
    assert remaining["ai"]["remaining"] == 0
    # 10 malformed + 5 well-formed (3 sent, 2 refused by the AI quota after counting on the general one) + this one
    assert remaining["general"]["remaining"] == 30 - 2 * len(MALFORMED) - 5 - 1


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_a_failed_upstream_call_still_uses_the_ai_quota(make_app, redis_prefix, upstream, storage) -> None:
    client = make_app(rate_limit_ai="2 per minute", **_storage(storage, redis_prefix)).test_client()
    upstream.behavior = Behavior(mode="status", status=500)
    assert [_ai(client) for _ in range(2)] == [502, 502]
    upstream.reset()
    assert _ai(client) == 429
    assert upstream.requests == []


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_malformed_requests_over_the_general_quota_get_429(make_app, redis_prefix, upstream, storage) -> None:
    client = make_app(rate_limit_general="2 per minute", **_storage(storage, redis_prefix)).test_client()
    statuses = [
        client.post("/api/ai/completion", data="{", content_type="application/json", headers=KEY_HEADERS).status_code for _ in range(3)
    ]
    assert statuses == [400, 400, 429]
    assert _ai(client) == 429


def test_a_refused_request_costs_one_round_trip_too(redis_app) -> None:
    app = redis_app(rate_limit_general="10 per minute", rate_limit_ai="3 per minute")
    client = app.test_client()
    assert _ai(client) == 200
    responses = []
    sent = _commands_sent(
        app,
        lambda: responses.append(client.post("/api/ai/completion", data="{", content_type="application/json", headers=KEY_HEADERS)),
    )
    assert sent == ["EVALSHA"]
    assert responses[0].status_code == 400 and responses[0].headers["RateLimit"].startswith('"general";r=8;')


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_requests_refused_by_a_key_policy_or_the_concurrency_limit_use_no_ai_quota(make_app, redis_prefix, upstream, storage) -> None:
    """Not sent upstream, so not on the AI quota: a model the key may not use (403) and a
    request over the concurrency limit (429), which counts on the general quota only."""
    app = make_app(rate_limit_ai="2 per minute", rate_limit_concurrent=1, key_cache_seconds=0, **_storage(storage, redis_prefix))
    client = app.test_client()
    created = client.post("/admin/keys", json={"name": "t", "allowed_models": ["m"]}, headers=KEY_HEADERS)
    key = {"X-API-Key": created.get_json()["secret"]}
    for _ in range(3):
        refused = client.post("/v1/completions", json={"model": "other", "prompt": "hi"}, headers=key)
        assert refused.status_code == 403
    upstream.behavior = Behavior(chunks=20, gap=0.05)
    stream = client.post("/v1/chat/completions", json={**CHAT, "model": "m"}, headers=key, buffered=False)
    events = iter(stream.response)
    assert next(events)  # 1 of 2 on the AI quota
    for _ in range(3):
        blocked = client.post("/v1/completions", json=BODY, headers=key)
        assert blocked.get_json()["error"]["code"] == "concurrency_limit_exceeded"
    for _ in events:
        pass
    stream.close()
    assert [client.post("/v1/completions", json=BODY, headers=key).status_code for _ in range(2)] == [200, 429]


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_requests_refused_by_a_token_quota_use_no_ai_quota(make_app, redis_prefix, upstream, storage) -> None:
    app = make_app(rate_limit_ai="2 per minute", key_cache_seconds=0, **_storage(storage, redis_prefix))
    client = app.test_client()
    created = client.post("/admin/keys", json={"name": "t", "tokens_per_day": 1000}, headers=KEY_HEADERS)
    key = {"X-API-Key": created.get_json()["secret"]}
    for _ in range(3):
        refused = client.post("/v1/completions", json={**BODY, "max_tokens": 5000}, headers=key)
        assert refused.get_json()["error"]["type"] == "insufficient_quota"
    statuses = [client.post("/v1/completions", json={**BODY, "max_tokens": 5}, headers=key).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
