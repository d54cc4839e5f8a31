"""The identity provider's keys over time: rotation without a restart, at most one fetch a
minute for unknown kids, and an endpoint that is down costing no request more than
OIDC_JWKS_TIMEOUT. The refresh schedule's clock is controlled; the provider is real HTTP.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask

from gateway.auth import oidc
from tests.fakes.idp import FakeIdentityProvider, SigningKeyPair, new_private_key

AUDIENCE = "ai-gateway"
TIMEOUT = 0.5  # OIDC_JWKS_TIMEOUT in these tests
MARGIN = 0.3  # what a request through the test client may take besides waiting for keys
IDENTITY = {"default": {"allowed_models": ["m"], "rate_limit_ai": "1000 per minute", "rate_limit_general": "1000 per minute"}}


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def oidc_app(make_app, idp: FakeIdentityProvider, tmp_path: Path) -> Callable[..., tuple[Flask, Clock]]:
    def build(**overrides: Any) -> tuple[Flask, Clock]:
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump({"identity": IDENTITY}))
        settings = {"oidc_issuer": idp.issuer, "oidc_audience": AUDIENCE, "oidc_jwks_timeout": TIMEOUT, "gateway_config": str(path)}
        app = make_app(**{**settings, **overrides})
        found = oidc.provider(app)
        assert found is not None
        clock = found.keys.clock = Clock()
        return app, clock

    return build


def call(app: Flask, token: str) -> tuple[int, float, Any]:
    started = time.monotonic()
    response = app.test_client().post(
        "/v1/completions", json={"model": "m", "prompt": "hi"}, headers={"Authorization": f"Bearer {token}"}
    )
    return response.status_code, time.monotonic() - started, response


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_new_kid_at_the_provider_works_without_a_restart(oidc_app, idp, upstream) -> None:
    app, clock = oidc_app()
    old = idp.mint(AUDIENCE)
    assert call(app, old)[0] == 200
    assert idp.jwks_fetches == 1 and idp.discovery_fetches == 1
    fresh = idp.rotate("RS256")  # the old RSA key is withdrawn
    new = idp.mint(AUDIENCE, pair=fresh)
    clock.advance(30)  # within a minute of the last fetch: no new one
    assert call(app, new)[0] == 401
    assert call(app, old)[0] == 200  # the cached key still verifies
    assert idp.jwks_fetches == 1
    clock.advance(31)
    assert call(app, new)[0] == 200  # fetched again: the new kid is known
    assert idp.jwks_fetches == 2 and idp.discovery_fetches == 1
    assert call(app, old)[0] == 401  # withdrawn at the provider: gone with the refreshed set
    assert call(app, idp.mint(AUDIENCE, alg="EdDSA"))[0] == 200


def test_unknown_kids_start_at_most_one_fetch_a_minute(oidc_app, idp, upstream) -> None:
    app, clock = oidc_app()
    assert call(app, idp.mint(AUDIENCE, alg="ES256"))[0] == 200
    for round_ in range(3):
        clock.advance(61)
        for _ in range(20):
            stranger = SigningKeyPair(uuid.uuid4().hex, "RS256", idp.key("RS256").private)
            assert call(app, idp.mint(AUDIENCE, pair=stranger))[0] == 401
        assert idp.jwks_fetches == 2 + round_


def test_a_set_older_than_its_max_age_is_refreshed_without_making_a_request_wait(oidc_app, idp, upstream) -> None:
    app, clock = oidc_app()
    token = idp.mint(AUDIENCE)
    assert call(app, token)[0] == 200
    clock.advance(301)
    status, elapsed, _ = call(app, token)
    assert status == 200
    assert wait_until(lambda: idp.jwks_fetches == 2)


def test_the_provider_down_for_30_seconds_fails_no_request_signed_with_a_cached_key(oidc_app, idp, upstream) -> None:
    app, clock = oidc_app()
    cached = [idp.mint(AUDIENCE, alg=alg) for alg in ("RS256", "ES256", "EdDSA")]
    assert [call(app, token)[0] for token in cached] == [200, 200, 200]
    rotated = idp.mint(AUDIENCE, pair=idp.rotate("ES256", keep_old=True))  # a kid the gateway has not seen
    idp.down, idp.hang = True, 3.0  # connections accepted, nothing answered
    clock.advance(61)  # a fetch is due: the first unknown kid starts one
    outage_start = clock.now
    statuses: list[int] = []
    while clock.now <= outage_start + 30:
        for token in cached:
            status, elapsed, _ = call(app, token)
            assert status == 200 and elapsed < TIMEOUT + MARGIN, (clock.now - outage_start, status, elapsed)
        status, elapsed, response = call(app, rotated)
        assert elapsed < TIMEOUT + MARGIN, (clock.now - outage_start, elapsed)
        assert status == 503 and response.get_json()["error"]["code"] == "identity_provider_unavailable"
        assert response.headers["Retry-After"]
        statuses.append(status)
        clock.advance(5)
    assert len(statuses) == 7
    assert idp.jwks_fetches == 2  # one attempt in the 30 s, not one per request
    # Past the set's max age, still down: the background refresh makes no request wait.
    clock.advance(300)
    for token in cached:
        status, elapsed, _ = call(app, token)
        assert status == 200 and elapsed < TIMEOUT + MARGIN
    assert wait_until(lambda: idp.jwks_fetches == 3)
    time.sleep(TIMEOUT + 0.2)  # that fetch gives up after the timeout
    # Back up: the next allowed refresh brings the rotated key in.
    idp.down = False
    clock.advance(61)
    assert call(app, rotated)[0] == 200
    assert [call(app, token)[0] for token in cached] == [200, 200, 200]


def test_a_provider_down_from_the_start_is_a_503_within_the_timeout_then_retried_soon(oidc_app, idp, upstream) -> None:
    app, clock = oidc_app()
    idp.down, idp.hang = True, 3.0
    status, elapsed, response = call(app, idp.mint(AUDIENCE))
    assert status == 503 and elapsed < TIMEOUT + MARGIN
    assert response.get_json()["error"]["code"] == "identity_provider_unavailable"
    assert len(upstream.requests) == 0
    time.sleep(TIMEOUT + 0.2)  # the fetch gives up after the timeout
    idp.down = False
    assert call(app, idp.mint(AUDIENCE))[0] == 503  # no second attempt within FIRST_FETCH_RETRY
    clock.advance(5)  # without any key yet, the next attempt comes after 5 s, not a minute
    assert call(app, idp.mint(AUDIENCE))[0] == 200


def test_a_discovery_document_naming_another_issuer_is_not_trusted(oidc_app, idp, upstream) -> None:
    app, _ = oidc_app()
    idp.discovery_issuer = "http://127.0.0.1:9/realms/evil"
    status, _, _ = call(app, idp.mint(AUDIENCE))
    assert status == 503 and idp.jwks_fetches == 0


def test_oidc_jwks_url_skips_discovery(oidc_app, idp, upstream) -> None:
    app, _ = oidc_app(oidc_jwks_url=idp.jwks_url)
    assert call(app, idp.mint(AUDIENCE, alg="EdDSA"))[0] == 200
    assert idp.discovery_fetches == 0 and idp.jwks_fetches == 1


def test_hmac_and_encryption_keys_in_the_set_are_never_used(oidc_app, idp, upstream, monkeypatch) -> None:
    import jwt

    app, _ = oidc_app()
    secret_jwk = {"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ1Ng", "alg": "HS256"}
    encryption = dict(idp.key("RS256").jwk(), kid="enc-1", use="enc")
    monkeypatch.setattr(idp, "jwks", lambda: {"keys": [secret_jwk, encryption, idp.key("EdDSA").jwk()]})
    hmac_token = jwt.encode(idp.claims(AUDIENCE), b"secret-secret-secret-secret-123456", algorithm="HS256", headers={"kid": "hmac-1"})
    assert call(app, hmac_token)[0] == 401
    enc_token = jwt.encode(idp.claims(AUDIENCE), idp.key("RS256").private, algorithm="RS256", headers={"kid": "enc-1"})
    assert call(app, enc_token)[0] == 401
    assert call(app, idp.mint(AUDIENCE, alg="EdDSA"))[0] == 200
    assert new_private_key("EdDSA") is not None


def test_concurrent_requests_for_unknown_kids_share_one_fetch_and_each_waits_at_most_the_timeout(oidc_app, idp, upstream) -> None:
    from concurrent.futures import ThreadPoolExecutor

    app, clock = oidc_app()
    assert call(app, idp.mint(AUDIENCE))[0] == 200
    idp.down, idp.hang = True, 3.0
    clock.advance(61)
    tokens = [idp.mint(AUDIENCE, pair=SigningKeyPair(f"new-{index}", "RS256", idp.key().private)) for index in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda token: call(app, token), tokens))
    assert [status for status, _, _ in results] == [503] * 12
    assert max(elapsed for _, elapsed, _ in results) < TIMEOUT + 2 * MARGIN  # twelve threads share the GIL
    assert idp.jwks_fetches == 2
