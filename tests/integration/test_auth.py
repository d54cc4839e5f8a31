"""Authentication: deny by default, API keys, JWTs, the token endpoint."""

from __future__ import annotations

import json
import time

import jwt
import pytest
import time_machine
from flask import Flask

from tests.conftest import CANARY_JWT_SECRET, CANARY_MASTER_KEY, KEY_HEADERS

PUBLIC = {("meta.index", "GET"), ("meta.openapi", "GET"), ("meta.health", "GET"), ("meta.ready", "GET"), ("auth.issue_token", "POST")}
# The console's sign-in page and its CSS/JS (tests/integration/test_console.py).
PUBLIC |= {("console.sign_in", "GET"), ("console.sign_in", "POST"), ("console.static", "GET")}


def _every_protected_route(app: Flask):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if (rule.endpoint, method) not in PUBLIC:
                yield method, rule.rule.replace("<", "").replace(">", "")


def _assert_401(response) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["type"] == "authentication_error"


def test_every_route_but_the_public_ones_needs_credentials(app, client, upstream) -> None:
    @app.get("/added-later")
    def added_later():
        return {"secret": True}

    routes = list(_every_protected_route(app))
    assert ("GET", "/added-later") in routes and ("POST", "/api/ai/completion") in routes
    assert len(routes) >= 11
    for method, path in routes:
        _assert_401(client.open(path, method=method, json={"model": "m"}))
    assert upstream.requests == []


def test_public_routes_need_no_credentials(client) -> None:
    assert client.get("/").status_code == 200
    assert client.get("/health").status_code == 200
    assert client.post("/auth/token", json={"apiKey": CANARY_MASTER_KEY}).status_code == 200


def test_unknown_path_without_credentials_is_401_not_404(client) -> None:
    _assert_401(client.get("/nope"))


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": CANARY_MASTER_KEY},
        {"Authorization": f"Bearer {CANARY_MASTER_KEY}"},
        {"Authorization": f"bearer {CANARY_MASTER_KEY}"},
        {"X-API-Key": CANARY_MASTER_KEY, "Authorization": f"Bearer {CANARY_MASTER_KEY}"},
    ],
    ids=["x-api-key", "bearer-key", "lowercase-scheme", "both-agree"],
)
def test_api_key_credentials_are_accepted(client, upstream, headers) -> None:
    response = client.post("/api/ai/completion", json={"model": "m", "prompt": "hi"}, headers=headers)
    assert response.status_code == 200
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "x" + CANARY_MASTER_KEY[1:]},
        {"X-API-Key": CANARY_MASTER_KEY[:-1] + "x"},
        {"X-API-Key": CANARY_MASTER_KEY[:-1]},
        {"X-API-Key": CANARY_MASTER_KEY + "x"},
        {"X-API-Key": ""},
        {"X-API-Key": CANARY_MASTER_KEY + " "},
        {"Authorization": f"Basic {CANARY_MASTER_KEY}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-the-key"},
        {"Authorization": "Bearer a.b.c"},
        {"X-API-Key": CANARY_MASTER_KEY, "Authorization": "Bearer wrong"},
        {"X-API-Key": "wrong", "Authorization": f"Bearer {CANARY_MASTER_KEY}"},
    ],
    ids=[
        "first-char",
        "last-char",
        "shorter",
        "longer",
        "empty",
        "trailing-space",
        "basic",
        "bearer-empty",
        "bearer-wrong",
        "bearer-bad-jwt",
        "good-key-bad-bearer",
        "bad-key-good-bearer",
    ],
)
def test_bad_credentials_are_401_and_never_reach_upstream(client, upstream, headers) -> None:
    response = client.post("/api/ai/completion", json={"model": "m"}, headers=headers)
    _assert_401(response)
    assert CANARY_MASTER_KEY not in response.get_data(as_text=True)
    assert upstream.requests == []


def test_wrong_keys_all_get_the_same_body(client) -> None:
    bodies = {client.get("/v1/models", headers={"X-API-Key": key}).get_data() for key in ("a", "b" * 64, "")}
    assert len(bodies) == 1


def test_key_in_query_string_is_not_accepted(client) -> None:
    _assert_401(client.get(f"/v1/models?api_key={CANARY_MASTER_KEY}"))


def test_key_comparison_is_constant_time(client, monkeypatch) -> None:
    import hmac

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    client.get("/v1/models", headers={"X-API-Key": "guess"})
    assert calls


def test_token_flow(client, upstream) -> None:
    response = client.post("/auth/token", json={"apiKey": CANARY_MASTER_KEY})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == "master" and claims["exp"] - claims["iat"] == 3600
    for claim in ("iat", "exp", "jti", "iss", "aud"):
        assert claim in claims
    assert CANARY_MASTER_KEY not in response.get_data(as_text=True)
    used = client.post("/api/ai/completion", json={"model": "m"}, headers={"Authorization": f"Bearer {body['token']}"})
    assert used.status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"json": {"apiKey": "wrong"}}, 401),
        ({"json": {}}, 400),
        ({"json": {"apiKey": 123}}, 400),
        ({"json": {"apiKey": None}}, 400),
        ({"json": {"apiKey": ""}}, 400),
        ({"json": ["apiKey"]}, 400),
        ({"data": "apiKey=x", "content_type": "application/x-www-form-urlencoded"}, 415),
        ({"data": "{not json", "content_type": "application/json"}, 400),
        ({}, 415),
        ({"data": json.dumps({"apiKey": CANARY_MASTER_KEY})}, 415),
    ],
    ids=["wrong-key", "missing", "number", "null", "empty", "array", "form", "broken-json", "no-body", "json-not-declared"],
)
def test_token_endpoint_rejects_bad_requests(client, kwargs, status) -> None:
    response = client.post("/auth/token", **kwargs)
    assert response.status_code == status
    assert set(response.get_json()["error"]) == {"message", "type", "code", "param"}


def test_failed_token_attempts_are_limited_per_address(make_app) -> None:
    client = make_app(rate_limit_auth_failures="3 per minute").test_client()
    statuses = [client.post("/auth/token", json={"apiKey": f"guess-{i}"}).status_code for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    # Even the right key is refused from that address until the window passes.
    assert client.post("/auth/token", json={"apiKey": CANARY_MASTER_KEY}).status_code == 429
    other = client.post("/auth/token", json={"apiKey": "guess"}, environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert other.status_code == 401


def test_successful_token_requests_do_not_count_as_failures(make_app) -> None:
    client = make_app(rate_limit_auth_failures="2 per minute").test_client()
    for _ in range(5):
        assert client.post("/auth/token", json={"apiKey": CANARY_MASTER_KEY}).status_code == 200


def _signed(**changes) -> str:
    now = int(time.time())
    claims = {
        "sub": "master",
        "iat": now,
        "exp": now + 600,
        "jti": "j",
        "iss": "ai-proxy-gateway",
        "aud": "ai-proxy-gateway",
        **changes,
    }
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, CANARY_JWT_SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "make_token",
    [
        lambda: _signed(exp=int(time.time()) - 300),
        lambda: _signed(sub="someone-else"),
        lambda: _signed(aud="other"),
        lambda: _signed(exp=None),
        lambda: jwt.encode({"sub": "master"}, CANARY_MASTER_KEY, algorithm="HS256"),
    ],
    ids=["expired", "unknown-subject", "wrong-audience", "no-exp", "signed-with-master-key"],
)
def test_bad_tokens_are_401(client, upstream, make_token) -> None:
    _assert_401(client.get("/v1/models", headers={"Authorization": f"Bearer {make_token()}"}))
    assert upstream.requests == []


def test_minted_token_and_its_key_share_one_identity(client) -> None:
    token = client.post("/auth/token", json={"apiKey": CANARY_MASTER_KEY}).get_json()["token"]
    both = client.get("/v1/models", headers={**KEY_HEADERS, "Authorization": f"Bearer {token}"})
    assert both.status_code == 200


def test_token_endpoint_has_the_content_type_rule_of_every_json_endpoint(client) -> None:
    """One rule: a JSON body is declared as JSON, on /auth/token as on the AI endpoints."""
    body = json.dumps({"apiKey": CANARY_MASTER_KEY})
    for path, headers in (("/auth/token", {}), ("/v1/completions", KEY_HEADERS)):
        refused = client.post(path, data=body, headers=headers)
        assert refused.status_code == 415, path
        assert refused.get_json()["error"]["code"] == "unsupported_media_type"
    # The original contract's curl example sends Content-Type: application/json.
    accepted = client.post("/auth/token", data=body, headers={"Content-Type": "application/json"})
    assert accepted.status_code == 200 and accepted.get_json()["token"]


def test_expired_token_says_it_expired_and_when(client, upstream) -> None:
    expired_at = int(time.time()) - 300
    response = client.get("/v1/models", headers={"Authorization": f"Bearer {_signed(exp=expired_at)}"})
    _assert_401(response)
    error = response.get_json()["error"]
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expired_at))
    assert error["code"] == "token_expired"
    assert f"expired at {when} (UTC)" in error["message"] and "POST /auth/token" in error["message"]
    assert upstream.requests == []


def test_minted_token_expires_with_its_own_message(make_app) -> None:
    client = make_app(jwt_expires_in=60, jwt_leeway=0).test_client()
    token = client.post("/auth/token", json={"apiKey": CANARY_MASTER_KEY}).get_json()["token"]
    with time_machine.travel(time.time() + 120, tick=False):
        response = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "token_expired"


@pytest.mark.parametrize(
    "make_token",
    [
        lambda: jwt.encode(
            {"sub": "master", "iat": 1, "exp": 2, "jti": "j", "iss": "ai-proxy-gateway", "aud": "ai-proxy-gateway"},
            "not-our-secret-" * 3,
            algorithm="HS256",
        ),
        lambda: _signed(exp=int(time.time()) - 300, aud="other"),
        lambda: _signed(exp=int(time.time()) - 300, sub=None),
    ],
    ids=["forged", "wrong-audience", "no-subject"],
)
def test_only_our_own_otherwise_valid_tokens_are_told_they_expired(client, make_token) -> None:
    response = client.get("/v1/models", headers={"Authorization": f"Bearer {make_token()}"})
    _assert_401(response)
    assert response.get_json()["error"]["code"] == "invalid_api_key"
    assert "expired" not in response.get_json()["error"]["message"]
