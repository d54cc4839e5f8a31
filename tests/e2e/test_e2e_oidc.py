"""Tokens from an identity provider under real gunicorn (gevent worker, shipped config):
the provider is real HTTP on loopback with keys made at test time (tests/fakes/idp.py)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import AUTH, error_envelope, request
from tests.fakes.idp import ALGORITHMS, FakeIdentityProvider

AUDIENCE = "ai-gateway"
TIMEOUT = 0.5
MARGIN = 0.5  # what a request through gunicorn may take besides waiting for keys
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
IDENTITY = {"groups": {"ml": {"allowed_models": ["gpt-4o*"], "rate_limit_ai": "3 per minute"}}}


def start(gateway_server, idp: FakeIdentityProvider, tmp_path: Path, wait: bool = True):
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"identity": IDENTITY}))
    return gateway_server(
        wait=wait,
        OIDC_ISSUER=idp.issuer,
        OIDC_AUDIENCE=AUDIENCE,
        OIDC_JWKS_TIMEOUT=str(TIMEOUT),
        GATEWAY_CONFIG=str(config),
        RATE_LIMIT_GENERAL="1000 per minute",
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def timed(url: str, method: str, path: str, body=None, headers=None) -> tuple[int, bytes, float]:
    started = time.monotonic()
    status, _, data = request(url, method, path, body, headers=headers)
    return status, data, time.monotonic() - started


@pytest.mark.timeout(60)
def test_provider_tokens_under_gunicorn(gateway_server, idp, upstream, tmp_path) -> None:
    server = start(gateway_server, idp, tmp_path)
    token = idp.mint(AUDIENCE, groups=["ml"])
    statuses = [request(server.url, "POST", "/v1/chat/completions", CHAT, headers=bearer(token))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # the group's rate limit
    status, _, body = request(server.url, "POST", "/v1/chat/completions", {**CHAT, "model": "llama3"}, headers=bearer(token))
    assert status == 403 and error_envelope(body)["code"] == "model_not_allowed"
    status, _, body = request(server.url, "GET", "/api/usage", headers=bearer(token))
    assert status == 200 and json.loads(body)["key"] == "oidc:alice"
    for refused in (
        idp.mint("another-app", groups=["ml"]),
        idp.mint(AUDIENCE, groups=["ml"], iss=idp.issuer + "/other"),
        FakeIdentityProvider().mint(AUDIENCE, groups=["ml"]),  # same issuer and kid, another key
    ):
        status, _, body = request(server.url, "GET", "/v1/models", headers=bearer(refused))
        assert status == 401 and error_envelope(body)["code"] == "invalid_api_key"
    expired = idp.mint(AUDIENCE, groups=["ml"], iat=int(time.time()) - 900, exp=int(time.time()) - 600)
    status, _, body = request(server.url, "GET", "/v1/models", headers=bearer(expired))
    assert status == 401 and error_envelope(body)["code"] == "token_expired"
    # The gateway's own tokens are unchanged.
    status, _, body = request(server.url, "POST", "/auth/token", {"apiKey": AUTH["X-API-Key"]})
    assert status == 200
    assert request(server.url, "GET", "/v1/models", headers=bearer(json.loads(body)["token"]))[0] == 200
    # The provider goes down: tokens signed by cached keys keep working, and fast.
    warm = [bearer(idp.mint(AUDIENCE, sub=f"w-{alg}", alg=alg, groups=["ml"])) for alg in ALGORITHMS]
    assert [request(server.url, "GET", "/v1/models", headers=headers)[0] for headers in warm] == [200, 200, 200]
    fetches = idp.jwks_fetches
    idp.down, idp.hang = True, 5.0
    for alg in ALGORITHMS:
        status, _, elapsed = timed(
            server.url, "GET", "/v1/models", headers=bearer(idp.mint(AUDIENCE, sub=f"u-{alg}", alg=alg, groups=["ml"]))
        )
        assert status == 200 and elapsed < MARGIN
    rotated = idp.mint(AUDIENCE, pair=idp.rotate("RS256", keep_old=True), groups=["ml"])
    status, _, elapsed = timed(server.url, "GET", "/v1/models", headers=bearer(rotated))
    assert status == 401 and elapsed < MARGIN  # within a minute of the last fetch: no new one
    assert idp.jwks_fetches == fetches
    assert token not in server.log() and "alice" not in server.log().replace("oidc:alice", "")


@pytest.mark.timeout(60)
def test_a_provider_down_at_start_costs_one_request_the_timeout_and_no_other_request_anything(
    gateway_server, idp, upstream, tmp_path
) -> None:
    idp.down, idp.hang = True, 5.0
    server = start(gateway_server, idp, tmp_path)
    outcome: dict[str, object] = {}

    def call() -> None:
        outcome["status"], outcome["body"], outcome["elapsed"] = timed(
            server.url, "GET", "/v1/models", headers=bearer(idp.mint(AUDIENCE, groups=["ml"]))
        )

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.1)
    health = [timed(server.url, "GET", "/health") for _ in range(3)]  # while that request waits for keys
    caller.join(10)
    assert all(status == 200 and elapsed < 0.3 for status, _, elapsed in health), health
    assert outcome["status"] == 503 and outcome["elapsed"] < TIMEOUT + MARGIN, outcome
    assert error_envelope(outcome["body"])["code"] == "identity_provider_unavailable"
    assert idp.jwks_fetches + idp.discovery_fetches == 1
