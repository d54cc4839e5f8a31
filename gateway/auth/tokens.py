"""JWTs minted by ``POST /auth/token``: HS256 only, every claim required.

The algorithm is pinned on decode (never read from the token header), and ``sub``,
``iat``, ``exp``, ``jti``, ``iss`` and ``aud`` are all required, so a token without
an expiry, from another issuer, or signed with ``none`` or another algorithm fails.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("sub", "iat", "exp", "jti", "iss", "aud")


@dataclass(frozen=True)
class TokenConfig:
    """What signs and checks tokens, from ``JWT_SECRET``, ``JWT_ISSUER``, ``JWT_AUDIENCE``,
    ``JWT_EXPIRES_IN`` and ``JWT_LEEWAY`` (seconds)."""

    secret: str
    issuer: str
    audience: str
    expires_in: int
    leeway: int


class InvalidToken(Exception):
    """The token is malformed, forged, expired or not meant for us.

    ``expired_at`` (epoch seconds) is set only for a token that is ours and was valid in
    every other way: it may be told to the caller without helping a forger.
    """

    def __init__(self, reason: str, expired_at: int | None = None) -> None:
        super().__init__(reason)
        self.expired_at = expired_at


def mint(config: TokenConfig, subject: str, now: float | None = None) -> str:
    """A token for the key id ``subject``, valid ``config.expires_in`` seconds from ``now`` (default: the clock)."""
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + config.expires_in,
        "jti": uuid.uuid4().hex,
        "iss": config.issuer,
        "aud": config.audience,
    }
    return jwt.encode(claims, config.secret, algorithm=ALGORITHM)


def verify(config: TokenConfig, token: str) -> str:
    """Return the token's subject.

    :raises InvalidToken: for any token that is not ours, valid and current.
    """
    try:
        claims = _decode(config, token, verify_exp=True)
    except jwt.ExpiredSignatureError:
        raise InvalidToken("ExpiredSignatureError", expired_at=_expiry(config, token)) from None
    except (jwt.PyJWTError, ValueError, TypeError) as error:
        raise InvalidToken(type(error).__name__) from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("sub")
    iat = claims.get("iat")
    if not isinstance(iat, (int, float)) or iat > time.time() + config.leeway:
        raise InvalidToken("iat")
    return subject


def _decode(config: TokenConfig, token: str, verify_exp: bool) -> dict[str, Any]:
    return jwt.decode(
        token,
        config.secret,
        algorithms=[ALGORITHM],
        audience=config.audience,
        issuer=config.issuer,
        leeway=config.leeway,
        options={"require": list(REQUIRED_CLAIMS), "verify_signature": True, "verify_exp": verify_exp},
    )


def _expiry(config: TokenConfig, token: str) -> int | None:
    """The ``exp`` of an expired token whose signature and other claims are valid, else ``None``."""
    try:
        claims = _decode(config, token, verify_exp=False)
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    subject, iat, exp = claims.get("sub"), claims.get("iat"), claims.get("exp")
    if not isinstance(subject, str) or not subject or not isinstance(iat, (int, float)):
        return None
    return int(exp) if isinstance(exp, (int, float)) else None


def looks_like_jwt(value: str) -> bool:
    """A compact JWS has three dot-separated segments; API keys never contain dots."""
    return value.count(".") == 2
