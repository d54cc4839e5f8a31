"""JWT minting and verification: pinned algorithm, required claims, leeway."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from gateway.auth import tokens

SECRET = "x" * 48
CONFIG = tokens.TokenConfig(secret=SECRET, issuer="ai-proxy-gateway", audience="ai-proxy-gateway", expires_in=3600, leeway=30)


def _claims(**changes):
    now = int(time.time())
    claims = {"sub": "master", "iat": now, "exp": now + 600, "jti": "j1", "iss": CONFIG.issuer, "aud": CONFIG.audience}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_minted_token_round_trips_with_every_claim() -> None:
    token = tokens.mint(CONFIG, "master")
    assert tokens.verify(CONFIG, token) == "master"
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert set(tokens.REQUIRED_CLAIMS) <= set(claims)
    assert claims["exp"] - claims["iat"] == 3600


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda: jwt.encode(_claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256"), id="expired"),
        pytest.param(lambda: jwt.encode(_claims(nbf=int(time.time()) + 120), SECRET, algorithm="HS256"), id="not-yet-valid"),
        pytest.param(lambda: jwt.encode(_claims(iat=int(time.time()) + 120), SECRET, algorithm="HS256"), id="issued-in-future"),
        pytest.param(lambda: jwt.encode(_claims(exp=None), SECRET, algorithm="HS256"), id="no-exp"),
        pytest.param(lambda: jwt.encode(_claims(iat=None), SECRET, algorithm="HS256"), id="no-iat"),
        pytest.param(lambda: jwt.encode(_claims(jti=None), SECRET, algorithm="HS256"), id="no-jti"),
        pytest.param(lambda: jwt.encode(_claims(sub=None), SECRET, algorithm="HS256"), id="no-sub"),
        pytest.param(lambda: jwt.encode(_claims(iss=None), SECRET, algorithm="HS256"), id="no-iss"),
        pytest.param(lambda: jwt.encode(_claims(aud=None), SECRET, algorithm="HS256"), id="no-aud"),
        pytest.param(lambda: jwt.encode(_claims(iss="someone-else"), SECRET, algorithm="HS256"), id="wrong-iss"),
        pytest.param(lambda: jwt.encode(_claims(iss="ai-proxy"), SECRET, algorithm="HS256"), id="partial-iss"),
        pytest.param(lambda: jwt.encode(_claims(aud="other"), SECRET, algorithm="HS256"), id="wrong-aud"),
        pytest.param(lambda: jwt.encode(_claims(), SECRET, algorithm="HS384"), id="hs384"),
        pytest.param(lambda: jwt.encode(_claims(), SECRET, algorithm="HS512"), id="hs512"),
        pytest.param(lambda: jwt.encode(_claims(), "y" * 48, algorithm="HS256"), id="other-secret"),
        pytest.param(lambda: f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.", id="alg-none"),
        pytest.param(lambda: f"{_b64({'alg': 'NONE', 'typ': 'JWT'})}.{_b64(_claims())}.", id="alg-NONE"),
        pytest.param(lambda: f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(_claims())}.c2ln", id="rs256"),
        pytest.param(lambda: "not.a.jwt", id="garbage"),
        pytest.param(lambda: "a.b", id="two-segments"),
        pytest.param(lambda: "a.b.c.d.e", id="five-segments"),
        pytest.param(lambda: "", id="empty"),
        pytest.param(lambda: "é.é.é", id="non-ascii"),
    ],
)
def test_invalid_tokens_are_refused(make_token) -> None:
    """Tokens are made when the test runs, so time-relative claims stay meaningful."""
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(CONFIG, make_token())


def test_tampered_payload_is_refused() -> None:
    header, payload, signature = tokens.mint(CONFIG, "master").split(".")
    forged = _b64({**json.loads(base64.urlsafe_b64decode(payload + "==")), "sub": "someone-else"})
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(CONFIG, f"{header}.{forged}.{signature}")


def test_flipped_signature_is_refused() -> None:
    token = tokens.mint(CONFIG, "master")
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(CONFIG, flipped)


def test_leeway_accepts_small_clock_skew() -> None:
    token = jwt.encode(_claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256")
    assert tokens.verify(CONFIG, token) == "master"


def test_jku_header_is_never_followed() -> None:
    token = jwt.encode(_claims(), "z" * 48, algorithm="HS256", headers={"jku": "http://127.0.0.1:9/keys", "kid": "x"})
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(CONFIG, token)
