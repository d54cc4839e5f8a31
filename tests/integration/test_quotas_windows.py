"""Quotas: general and AI limits per caller, headers, exemptions, proxies."""

from __future__ import annotations

import time

import time_machine

from tests.conftest import CANARY_MASTER_KEY, KEY_HEADERS

BODY = {"model": "m", "prompt": "hi"}


def _ai(client, **headers):
    return client.post("/api/ai/completion", json=BODY, headers={**KEY_HEADERS, **headers})


def test_default_ai_quota_is_20_per_15_minutes(client, upstream) -> None:
    statuses = [_ai(client).status_code for _ in range(21)]
    assert statuses == [200] * 20 + [429]
    assert len(upstream.requests) == 20


def test_429_has_envelope_retry_after_and_limit_headers(client) -> None:
    for _ in range(20):
        ok = _ai(client)
    assert ok.headers["X-RateLimit-Limit"] == "20" and ok.headers["X-RateLimit-Remaining"] == "0"
    limited = _ai(client)
    assert limited.status_code == 429
    error = limited.get_json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "gateway_rate_limited"
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= 900
    assert limited.headers["X-RateLimit-Limit"] == "20"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert int(limited.headers["X-RateLimit-Reset"]) >= int(time.time())


def test_remaining_counts_down(client) -> None:
    remaining = [int(_ai(client).headers["X-RateLimit-Remaining"]) for _ in range(3)]
    assert remaining == [19, 18, 17]


def test_all_ai_endpoints_share_the_ai_quota(make_app) -> None:
    client = make_app(rate_limit_ai="4 per minute").test_client()
    assert client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS).status_code == 200
    assert client.post("/v1/completions", json=BODY, headers=KEY_HEADERS).status_code == 200
    assert client.post("/v1/chat/completions", json={"model": "m", "messages": []}, headers=KEY_HEADERS).status_code == 200
    assert client.get("/v1/models", headers=KEY_HEADERS).status_code == 200
    assert client.post("/v1/embeddings", json={"model": "m", "input": "x"}, headers=KEY_HEADERS).status_code == 429


def test_general_quota_applies_with_the_ai_quota(make_app) -> None:
    client = make_app(rate_limit_general="5 per minute", rate_limit_ai="50 per minute").test_client()
    statuses = [_ai(client).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    assert client.get("/v1/models", headers=KEY_HEADERS).status_code == 429


def test_public_endpoints_are_limited_per_client_address(make_app) -> None:
    client = make_app(rate_limit_general="3 per minute").test_client()
    assert [client.get("/").status_code for _ in range(4)] == [200, 200, 200, 429]
    # Another address has its own bucket, and the key's bucket is untouched.
    assert client.get("/", environ_base={"REMOTE_ADDR": "10.1.1.1"}).status_code == 200
    assert _ai(client).status_code == 200


def test_health_and_preflights_are_never_limited(make_app) -> None:
    app = make_app(rate_limit_general="2 per minute", allowed_origins=("https://app.example",))
    client = app.test_client()
    for _ in range(30):
        assert client.get("/health").status_code == 200
        preflight = client.options(
            "/api/ai/completion", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 200
    assert [client.get("/").status_code for _ in range(3)] == [200, 200, 429]


def test_token_and_key_share_one_quota(make_app) -> None:
    client = make_app(rate_limit_ai="4 per minute").test_client()
    tokens = [client.post("/auth/token", json={"apiKey": CANARY_MASTER_KEY}).get_json()["token"] for _ in range(3)]
    statuses = [client.post("/api/ai/completion", json=BODY, headers={"Authorization": f"Bearer {t}"}).status_code for t in tokens]
    statuses += [_ai(client).status_code for _ in range(2)]
    assert statuses == [200, 200, 200, 200, 429]


def test_spoofed_forwarded_for_does_not_reset_quota(make_app) -> None:
    client = make_app(rate_limit_general="3 per minute").test_client()
    statuses = [client.get("/", headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_trusted_proxy_hop_separates_clients(make_app) -> None:
    client = make_app(rate_limit_general="2 per minute", trusted_proxy_count=1).test_client()
    a = [client.get("/", headers={"X-Forwarded-For": "203.0.113.1"}).status_code for _ in range(3)]
    b = [client.get("/", headers={"X-Forwarded-For": "203.0.113.2"}).status_code for _ in range(2)]
    assert a == [200, 200, 429] and b == [200, 200]
    # With one trusted hop, only the right-most address counts: prepending fakes changes nothing.
    spoof = client.get("/", headers={"X-Forwarded-For": "1.2.3.4, 203.0.113.1"})
    assert spoof.status_code == 429


def test_quota_resets_after_the_window(make_app) -> None:
    with time_machine.travel(time.time(), tick=False) as traveller:
        client = make_app(rate_limit_ai="2 per 15 minutes").test_client()
        assert [_ai(client).status_code for _ in range(3)] == [200, 200, 429]
        traveller.shift(15 * 60 + 1)
        assert _ai(client).status_code == 200


def test_upstream_429_is_distinguishable_and_keeps_retry_after(client, upstream) -> None:
    from tests.fakes.upstream import Behavior

    upstream.behavior = Behavior(
        mode="status",
        status=429,
        headers={"Retry-After": "7"},
        body=b'{"error": {"message": "slow down", "type": "requests", "code": null}}',
    )
    response = _ai(client)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    error = response.get_json()["error"]
    assert error["code"] == "upstream_rate_limited" and error["message"] == "slow down"
