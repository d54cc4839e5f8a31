"""Tokens from the company's identity provider (OIDC): who the caller is, and which policy applies.

On when ``OIDC_ISSUER`` is set. A bearer JWT whose (unverified) ``iss`` is ``OIDC_ISSUER`` is
checked here; every other JWT goes to the gateway's own HS256 check
(:mod:`gateway.auth.tokens`), unchanged. ``OIDC_ISSUER`` must differ from ``JWT_ISSUER``.

A token is accepted only when all of these hold:

- its header's ``alg`` is in ``OIDC_ALGORITHMS`` (asymmetric only: an HMAC algorithm or
  ``none`` is refused at start, so a token "signed" with the provider's public key as an
  HMAC secret fails), and its ``kid`` names a key of the provider
  (:mod:`gateway.auth.jwks`) that may sign with that algorithm;
- the signature verifies; ``exp``, ``iat``, ``iss`` and ``aud`` are present; ``iss`` is
  ``OIDC_ISSUER``, ``aud`` names ``OIDC_AUDIENCE``; ``exp``, ``nbf`` and ``iat`` hold within
  ``JWT_LEEWAY`` seconds, as for the gateway's own tokens;
- the claim ``OIDC_CALLER_CLAIM`` (default ``sub``) is a non-empty string (or a number).

The caller's identity is :func:`caller_id` of that claim: ``oidc:<value>``, what quotas, usage
rows, metrics and logs carry. Its policy comes from the config file's ``identity:`` section
(:mod:`gateway.backends.identity`): a managed key by name (its limits, counted for this
caller alone; a revoked or expired key refuses its callers), or a group's template; a caller
with no policy is refused (403). A provider whose keys cannot be fetched is a 503.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

import jwt
from flask import Flask, current_app

from gateway import extensions
from gateway.auth.jwks import Discovery, KeysUnavailable, SigningKey, SigningKeys
from gateway.auth.tokens import InvalidToken
from gateway.backends.identity import TEMPLATE_FIELDS, Template
from gateway.config import Settings
from gateway.config.checks import check_provider_url
from gateway.errors import Forbidden, ServiceUnavailable, TokenExpired, Unauthorized
from gateway.quotas.policy import CallerPolicy
from gateway.store.keys import KeyRecord
from gateway.store.tables import KEY_ID_LENGTH

log = logging.getLogger(__name__)

EXTENSION = "gateway.oidc"
VIA = "oidc"
CALLER_PREFIX = "oidc:"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud")
MAX_GROUPS = 1000  # group claim values looked at; the rest are ignored
_VERBATIM = re.compile(rf"[A-Za-z0-9._@+-]{{1,{KEY_ID_LENGTH - len(CALLER_PREFIX)}}}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")
_SHOWN = 18  # characters of a long or unusual value kept before its digest
_DIGEST = 16  # hex digits of SHA-256: 64 bits
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def caller_id(value: str) -> str:
    """The caller's id (at most ``KEY_ID_LENGTH`` characters, safe in logs, labels and the key_id column).

    A short value of letters, digits and ``._@+-`` is kept as it is (``oidc:alice@example.com``);
    any other is its first characters with the others replaced by ``_``, ``:`` and 16 hex digits
    of its SHA-256 (``:`` appears in no kept value, so the two kinds never collide). Both are
    metric label values (:class:`gateway.metrics.BoundedLabel`).
    """
    if _VERBATIM.fullmatch(value):
        return CALLER_PREFIX + value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST]
    return f"{CALLER_PREFIX}{_UNSAFE.sub('_', value[:_SHOWN])}:{digest}"


class Provider:
    """The identity provider's settings and keys; one per app (``app.extensions[EXTENSION]``)."""

    def __init__(self, settings: Settings, keys: SigningKeys) -> None:
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.algorithms = frozenset(settings.oidc_algorithms)
        self.caller_claim = settings.oidc_caller_claim
        self.groups_claim = settings.oidc_groups_claim
        self.leeway = settings.jwt_leeway
        self.keys = keys
        self.warned_unmapped = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Provider:
        def check_jwks_uri(url: str) -> None:
            check_provider_url("jwks_uri", url, settings.production)  # a refused URL fails the fetch

        if settings.oidc_jwks_url:
            url = settings.oidc_jwks_url

            def locate(timeout: float) -> str:
                return url
        else:
            locate = Discovery(settings.oidc_issuer, check_jwks_uri)
        keys = SigningKeys(locate, algorithms=settings.oidc_algorithms, timeout=settings.oidc_jwks_timeout)
        return cls(settings, keys)

    def issued(self, token: str) -> bool:
        """Whether the token says it comes from the provider (unverified: it only picks the check)."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            return False
        return isinstance(claims, dict) and claims.get("iss") == self.issuer

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims.

        :raises InvalidToken: any check fails (``expired_at`` set for a token valid but for its expiry).
        :raises KeysUnavailable: its key is unknown and the provider could not be asked.
        """
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("header") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise InvalidToken("alg")
        if not isinstance(kid, str) or not 0 < len(kid) <= 256:
            raise InvalidToken("kid")
        key = self.keys.get(kid)
        if key is None or alg not in key.algorithms:
            raise InvalidToken("kid")
        try:
            claims = self._decode(token, key, alg, verify_exp=True)
        except jwt.ExpiredSignatureError:
            raise InvalidToken("ExpiredSignatureError", expired_at=self._expiry(token, key, alg)) from None
        except (jwt.PyJWTError, ValueError, TypeError) as error:
            raise InvalidToken(type(error).__name__) from None
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool) or iat > time.time() + self.leeway:
            raise InvalidToken("iat")
        return claims

    def _decode(self, token: str, key: SigningKey, alg: str, verify_exp: bool) -> dict[str, Any]:
        return jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
            options={"require": list(REQUIRED_CLAIMS), "verify_signature": True, "verify_exp": verify_exp},
        )

    def _expiry(self, token: str, key: SigningKey, alg: str) -> int | None:
        try:
            exp = self._decode(token, key, alg, verify_exp=False).get("exp")
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        return int(exp) if isinstance(exp, int | float) else None

    def caller_of(self, claims: dict[str, Any]) -> str | None:
        value = claims.get(self.caller_claim)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return value if isinstance(value, str) and value else None

    def groups_of(self, claims: dict[str, Any]) -> frozenset[str]:
        value = claims.get(self.groups_claim)
        if isinstance(value, str):
            return frozenset((value,))
        if isinstance(value, list):
            return frozenset(item for item in value[:MAX_GROUPS] if isinstance(item, str))
        return frozenset()


def provider(app: Flask | None = None) -> Provider | None:
    """The app's identity provider; ``None`` when ``OIDC_ISSUER`` is unset."""
    found: Provider | None = (app or current_app).extensions.get(EXTENSION)
    return found


def init_app(app: Flask) -> None:
    settings: Settings = app.config["GATEWAY"]
    app.extensions[EXTENSION] = Provider.from_settings(settings) if settings.oidc_issuer else None
    if settings.oidc_issuer:
        source = "OIDC_JWKS_URL" if settings.oidc_jwks_url else "discovery"
        log.info("identity provider tokens accepted (issuer from OIDC_ISSUER, keys from %s)", source)


def _template_record(caller: str, template: Template) -> KeyRecord:
    """A group's template as the key record a policy is built from (it is never stored)."""
    limits: dict[str, Any] = dict.fromkeys(TEMPLATE_FIELDS)
    limits.update(template.fields)
    return KeyRecord(
        id=caller,
        name=template.name,
        prefix="",
        secret_hash="",
        metadata={},
        created_at=_EPOCH,
        expires_at=None,
        revoked_at=None,
        **limits,
    )


def _expired(expired_at: int | None) -> Unauthorized:
    if expired_at is None:
        return Unauthorized()
    when = datetime.fromtimestamp(expired_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return TokenExpired(f"The token expired at {when} (UTC). Get a new one from your identity provider.")


def authenticate(found: Provider, token: str) -> tuple[str, CallerPolicy]:
    """The caller's id and policy for a token from the provider.

    :raises Unauthorized: the token is not valid (``TokenExpired``: valid but for its expiry).
    :raises Forbidden: valid, but the config gives its caller no policy.
    :raises ServiceUnavailable: the provider's keys (or the key database) cannot be reached.
    """
    try:
        claims = found.verify(token)
    except InvalidToken as error:
        raise _expired(error.expired_at) from None
    except KeysUnavailable:
        raise ServiceUnavailable(
            "The identity provider's signing keys could not be fetched; retry shortly.",
            error_code="identity_provider_unavailable",
            headers={"Retry-After": "5"},
        ) from None
    value = found.caller_of(claims)
    if value is None:
        raise Unauthorized()
    caller = caller_id(value)
    settings: Settings = current_app.config["GATEWAY"]
    chosen = extensions.backends_config().identity.resolve(value, found.groups_of(claims))
    if isinstance(chosen, Template):
        return caller, CallerPolicy.build(caller, _template_record(caller, chosen), settings)
    record = extensions.keys().record_named(chosen) if chosen is not None else None
    if record is None:
        if chosen is not None:
            log.warning("identity provider caller %s is mapped to a key that is not active, or not unique", caller)
        elif not found.warned_unmapped:
            found.warned_unmapped = True  # once per process: the cause is the config, not the caller
            log.warning("identity provider caller refused: the config file's identity: section gives it no policy")
        raise Forbidden("This identity has no policy in the gateway's identity configuration.", error_code="identity_not_mapped")
    return caller, CallerPolicy.build(caller, record, settings)
