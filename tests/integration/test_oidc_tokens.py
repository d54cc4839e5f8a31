"""Tokens from an identity provider (OIDC): admitted with the policy the config maps them to,
refused (401, the one error envelope) when anything about them is wrong.

The provider is real HTTP on loopback (tests/fakes/idp.py) with keys made at test time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from sqlalchemy import select

from gateway.store.tables import usage
from tests.conftest import CANARY_MASTER_KEY, KEY_HEADERS
from tests.fakes.idp import ALGORITHMS, FakeIdentityProvider
from tests.fakes.upstream import FakeUpstream

AUDIENCE = "ai-gateway"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
IDENTITY: dict[str, Any] = {
    "callers": {"carol": "research-team"},
    "groups": {
        "ml-engineers": {"allowed_models": ["gpt-4o*"], "rate_limit_ai": "2 per minute"},
        "staff": {"allowed_models": ["small-*"], "max_tokens_cap": 50},
    },
}


@pytest.fixture
def oidc_app(make_app, idp: FakeIdentityProvider, tmp_path: Path) -> Callable[..., Flask]:
    def build(identity: dict[str, Any] | None = None, **overrides: Any) -> Flask:
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump({"identity": IDENTITY if identity is None else identity}))
        settings = {
            "oidc_issuer": idp.issuer,
            "oidc_audience": AUDIENCE,
            "oidc_jwks_timeout": 0.5,
            "gateway_config": str(path),
            "key_cache_seconds": 0,
            **overrides,
        }
        return make_app(**settings)

    return build


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chat(app: Flask, token: str, model: str = "gpt-4o", **extra: Any) -> Any:
    return app.test_client().post("/v1/chat/completions", json={**CHAT, "model": model, **extra}, headers=bearer(token))


def assert_envelope(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "code", "param"}


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_valid_token_is_admitted_with_its_groups_policy(oidc_app, idp, upstream: FakeUpstream, alg: str) -> None:
    app = oidc_app()
    token = idp.mint(AUDIENCE, alg=alg, groups=["ml-engineers"])
    assert chat(app, token).status_code == 200
    assert len(upstream.requests) == 1
    assert_envelope(chat(app, token, model="llama3"), 403, "model_not_allowed")
    assert len(upstream.requests) == 1


def test_a_group_caller_sees_its_groups_limits_in_its_own_usage(oidc_app, idp, upstream: FakeUpstream) -> None:
    app = oidc_app()
    own = app.test_client().get("/api/usage", headers=bearer(idp.mint(AUDIENCE, groups=["staff"])))
    assert own.status_code == 200, own.get_data(as_text=True)
    limits = own.get_json()["limits"]
    assert limits["allowed_models"] == ["small-*"] and limits["max_tokens_cap"] == 50
    assert limits["rate_limit_ai"] == app.config["GATEWAY"].rate_limit_ai  # the template sets none: the default
    assert limits["budget_usd"] is None and limits["tokens_per_day"] is None


def test_the_groups_rate_limit_is_applied_to_each_caller(oidc_app, idp, upstream: FakeUpstream) -> None:
    app = oidc_app()
    alice = idp.mint(AUDIENCE, groups=["ml-engineers"])
    assert [chat(app, alice).status_code for _ in range(3)] == [200, 200, 429]
    bob = idp.mint(AUDIENCE, sub="bob", groups=["staff", "ml-engineers"])  # file order: ml-engineers first
    assert [chat(app, bob).status_code for _ in range(3)] == [200, 200, 429]
    staff = idp.mint(AUDIENCE, sub="dave", groups=["staff"])
    assert chat(app, staff, model="small-1", max_tokens=50).status_code == 200
    assert_envelope(chat(app, staff, model="small-1", max_tokens=51), 400, "max_tokens_above_cap")


def test_a_caller_mapped_to_a_managed_key_has_its_policy_under_its_own_identity(database_url, oidc_app, idp, upstream) -> None:
    app = oidc_app(database_url=database_url)
    client = app.test_client()
    created = client.post(
        "/admin/keys",
        json={"name": "research-team", "allowed_models": ["research-*"], "rate_limit_ai": "1 per minute"},
        headers=KEY_HEADERS,
    )
    assert created.status_code == 201
    token = idp.mint(AUDIENCE, sub="carol")
    assert chat(app, token, model="research-1").status_code == 200
    assert_envelope(chat(app, token, model="gpt-4o"), 403, "model_not_allowed")
    assert chat(app, token, model="research-1").status_code == 429  # the key's limit, counted for carol
    # The key itself still has its own quota: carol's calls were not counted against it.
    assert (
        client.post(
            "/v1/chat/completions", json={**CHAT, "model": "research-1"}, headers={"X-API-Key": created.get_json()["secret"]}
        ).status_code
        == 200
    )
    own = client.get("/api/usage", headers=bearer(token))
    assert own.status_code == 200 and own.get_json()["key"] == "oidc:carol"
    limits = own.get_json()["limits"]  # the mapped key's, not the defaults
    assert limits["rate_limit_ai"] == "1 per minute" and limits["allowed_models"] == ["research-*"]
    # A revoked key refuses the callers mapped to it.
    assert client.delete(f"/admin/keys/{created.get_json()['id']}", headers=KEY_HEADERS).status_code == 200
    assert_envelope(chat(app, idp.mint(AUDIENCE, sub="carol"), model="research-1"), 403, "identity_not_mapped")


def test_a_key_name_must_be_unique_among_active_keys_and_a_key_id_works_too(oidc_app, idp, upstream) -> None:
    app = oidc_app({"callers": {"carol": "research-team", "dan": "placeholder"}})
    client = app.test_client()
    first = client.post("/admin/keys", json={"name": "research-team"}, headers=KEY_HEADERS).get_json()
    second = client.post("/admin/keys", json={"name": "research-team"}, headers=KEY_HEADERS).get_json()
    carol = idp.mint(AUDIENCE, sub="carol")
    assert_envelope(chat(app, carol), 403, "identity_not_mapped")  # two active keys of that name
    assert client.delete(f"/admin/keys/{second['id']}", headers=KEY_HEADERS).status_code == 200
    assert chat(app, carol).status_code == 200  # one active key left
    by_id = oidc_app({"callers": {"dan": first["id"]}})
    assert chat(by_id, idp.mint(AUDIENCE, sub="dan")).status_code == 200


def test_a_caller_without_a_policy_is_refused_unless_there_is_a_default(oidc_app, idp, upstream) -> None:
    assert_envelope(chat(oidc_app(), idp.mint(AUDIENCE, sub="eve")), 403, "identity_not_mapped")
    with_default = oidc_app({**IDENTITY, "default": {"allowed_models": ["gpt-4o"]}})
    assert chat(with_default, idp.mint(AUDIENCE, sub="eve")).status_code == 200
    assert len(upstream.requests) == 1


def test_callers_appear_in_usage_rows_and_metrics_under_their_own_identity(oidc_app, idp, upstream) -> None:
    app = oidc_app()
    long_subject = "00000000-0000-0000-0000-000000000000/with spaces and more than forty characters"
    for subject in ("alice", long_subject):
        assert chat(app, idp.mint(AUDIENCE, sub=subject, groups=["ml-engineers"])).status_code == 200
    assert app.extensions["gateway.usage"].flush(timeout=5)
    with app.extensions["gateway.store"].engine.connect() as connection:
        key_ids = [row.key_id for row in connection.execute(select(usage).order_by(usage.c.id))]
    assert key_ids[0] == "oidc:alice"
    assert key_ids[1].startswith("oidc:00000000-0000-0000:") and len(key_ids[1]) == 40
    metrics = app.test_client().get("/metrics", headers=KEY_HEADERS).get_data(as_text=True)
    assert 'key_id="oidc:alice"' in metrics


def test_the_gateways_own_tokens_keep_working_beside_the_providers(oidc_app, idp, upstream) -> None:
    client = oidc_app().test_client()
    minted = client.post("/auth/token", json={"apiKey": CANARY_MASTER_KEY}).get_json()["token"]
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "m"}, headers=bearer(minted)).status_code == 200
    # A gateway token and a provider token together name two callers: refused.
    both = {**bearer(idp.mint(AUDIENCE, groups=["ml-engineers"])), "X-API-Key": CANARY_MASTER_KEY}
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o"}, headers=both).status_code == 401


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) if secret is not None else ""
    return f"{signing_input}.{signature}"


def _public_pem(idp: FakeIdentityProvider) -> bytes:
    from cryptography.hazmat.primitives import serialization

    public = idp.key("RS256").private.public_key()
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


REFUSED: dict[str, Callable[[FakeIdentityProvider, FakeIdentityProvider], str]] = {
    "expired": lambda idp, _: idp.mint(AUDIENCE, iat=int(time.time()) - 900, exp=int(time.time()) - 600),
    "wrong issuer": lambda idp, _: idp.mint(AUDIENCE, iss=idp.issuer + "-other"),
    "wrong audience": lambda idp, _: idp.mint("another-app"),
    "a known kid, another key": lambda idp, other: idp.mint(AUDIENCE, pair=other.key("RS256")),  # kid RS256-1 there too
    "unknown kid": lambda idp, other: idp.mint(AUDIENCE, pair=type(other.key("RS256"))("nope", "RS256", other.key().private)),
    "alg none": lambda idp, _: _hand_made({"alg": "none", "kid": "RS256-1"}, idp.claims(AUDIENCE), None),
    "HS256 signed with the public key": lambda idp, _: _hand_made(
        {"alg": "HS256", "kid": "RS256-1", "typ": "JWT"}, idp.claims(AUDIENCE), _public_pem(idp)
    ),
    "a second issuer": lambda _, other: other.mint(AUDIENCE),
    "no exp": lambda idp, _: idp.mint(AUDIENCE, exp=None),
    "no iat": lambda idp, _: idp.mint(AUDIENCE, iat=None),
    "iat in the future": lambda idp, _: idp.mint(AUDIENCE, iat=int(time.time()) + 600),
    "not yet valid": lambda idp, _: idp.mint(AUDIENCE, nbf=int(time.time()) + 600),
    "no subject": lambda idp, _: idp.mint(AUDIENCE, sub=None),
    "alg of another key type": lambda idp, _: _swap_alg(idp),
    "tampered claims": lambda idp, _: _tampered(idp.mint(AUDIENCE, groups=["staff"])),
}


def _swap_alg(idp: FakeIdentityProvider) -> str:
    """An ES256 signature under the kid of the RSA key."""
    pair = idp.key("ES256")
    import jwt

    return jwt.encode(idp.claims(AUDIENCE), pair.private, algorithm="ES256", headers={"kid": "RS256-1"})


def _tampered(token: str) -> str:
    header, _, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    claims["groups"] = ["ml-engineers"]
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_bad_token_is_refused_with_the_error_envelope(oidc_app, idp, upstream, case: str) -> None:
    other = FakeIdentityProvider().start()
    try:
        app = oidc_app()
        assert chat(app, idp.mint(AUDIENCE, groups=["ml-engineers"])).status_code == 200  # keys fetched
        response = chat(app, REFUSED[case](idp, other))
    finally:
        other.stop()
    assert_envelope(response, 401, "token_expired" if case == "expired" else "invalid_api_key")
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer") or case == "expired"
    assert len(upstream.requests) == 1


def test_the_index_says_how_to_use_the_providers_tokens_only_when_one_is_configured(oidc_app, idp, make_app) -> None:
    shown = oidc_app().test_client().get("/").get_json()["authentication"]
    assert shown["identity_provider"] == f"Authorization: Bearer <access token issued by {idp.issuer}>"
    assert "identity_provider" not in make_app().test_client().get("/").get_json()["authentication"]
