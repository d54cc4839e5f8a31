"""The identity provider's signing keys: discovered, fetched, cached, refreshed rarely.

Contract (:class:`SigningKeys`):

- The key set comes from ``OIDC_JWKS_URL``, or from the ``jwks_uri`` of the issuer's
  discovery document (``<OIDC_ISSUER>/.well-known/openid-configuration``, whose ``issuer``
  must be ``OIDC_ISSUER`` exactly). The set is fetched with PyJWT's :class:`jwt.PyJWKClient`
  (its own cache off: this module keeps the keys), the discovery document with urllib;
  neither follows a redirect.
- Keys are kept by ``kid``. Only signature keys of an allowed algorithm are kept: ``oct``
  (HMAC) keys and ``use: enc`` keys never are.
- A token whose ``kid`` is unknown starts a refresh, at most once per
  :data:`MIN_REFRESH_INTERVAL` seconds (successful or not; until a first set has been
  fetched, once per :data:`FIRST_FETCH_RETRY` seconds), and waits for it at most
  ``timeout`` seconds (``OIDC_JWKS_TIMEOUT``). The fetch runs on its own thread (a greenlet
  under gevent), so a slow or silent endpoint never holds a request longer than that.
- A set older than :data:`MAX_AGE` is refreshed in the background on the next lookup (a key
  the provider withdrew stops working then); the request does not wait for it.
- A failed fetch keeps the keys already known: tokens they signed keep working while the
  endpoint is down.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

log = logging.getLogger(__name__)

MIN_REFRESH_INTERVAL = 60.0  # seconds between two fetches started by unknown kids or age
FIRST_FETCH_RETRY = 5.0  # seconds between attempts while no set was ever fetched (a provider down at start)
MAX_AGE = 300.0  # seconds a fetched set is used before a background refresh
DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_DOCUMENT_BYTES = 512 * 1024
# The key type each algorithm needs (RFC 7518 section 6.1, RFC 8037).
KEY_TYPES = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}


class KeysUnavailable(Exception):
    """No key set could be fetched yet (or the last refresh failed): the provider does not answer."""


@dataclass(frozen=True)
class SigningKey:
    """One public key: the key object PyJWT verifies with, and the algorithms it may sign with."""

    kid: str
    key: Any
    algorithms: frozenset[str]


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + DISCOVERY_PATH


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch_json(url: str, timeout: float) -> Any:
    """GET ``url`` as JSON, no redirect, ``timeout`` per socket operation.

    :raises OSError: or :class:`ValueError` when it fails or is not JSON.
    """
    opener = urllib.request.build_opener(_NoRedirect())
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with opener.open(request, timeout=timeout) as response:
        body = response.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError("document too large")
    return json.loads(body)


def keys_from(document: Any, allowed: Collection[str]) -> dict[str, SigningKey]:
    """The usable keys of a JWK Set document, by ``kid`` (others are skipped, not errors)."""
    entries = document.get("keys") if isinstance(document, Mapping) else None
    found: dict[str, SigningKey] = {}
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        kid, kty, declared = entry.get("kid"), entry.get("kty"), entry.get("alg")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig" or kty == "oct":
            continue
        if declared is not None:
            algorithms = {declared} if declared in allowed and KEY_TYPES.get(declared) == kty else set()
        else:
            algorithms = {alg for alg in allowed if KEY_TYPES.get(alg) == kty}
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if kty == "EC":  # the curve decides the one algorithm an EC key serves
            algorithms &= {jwk.algorithm_name}
        if algorithms:
            found[kid] = SigningKey(kid, jwk.key, frozenset(algorithms))
    return found


class SigningKeys:
    """The provider's keys by ``kid`` (see the module's contract).

    :param locate: returns the JWKS URL (discovering it if needed), given the fetch timeout.
    :param fetch_set: fetches the JWK Set document at a URL, given the timeout.
    :param clock: monotonic seconds; tests replace it to move the refresh schedule.
    """

    def __init__(
        self,
        locate: Callable[[float], str],
        *,
        algorithms: Collection[str],
        timeout: float,
        fetch_set: Callable[[str, float], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._locate = locate
        self.algorithms = frozenset(algorithms)
        self.timeout = timeout
        self._fetch_set = fetch_set or _fetch_with_pyjwt
        self.clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # clock time of the last successful fetch
        self._started_at: float | None = None  # clock time the last fetch started
        self._last_failed = False
        self._job: threading.Thread | None = None
        self._lock = threading.Lock()

    def get(self, kid: str) -> SigningKey | None:
        """The key named ``kid``; ``None``: the provider has no such key (after a refresh, if one was due).

        :raises KeysUnavailable: the key is unknown and the provider could not be asked.
        """
        found = self._keys.get(kid)
        if found is not None:
            fetched = self._fetched_at
            if fetched is not None and self.clock() - fetched > MAX_AGE:
                self._refresh()
            return found
        job = self._refresh()
        if job is not None:
            job.join(self.timeout)
            if job.is_alive():
                raise KeysUnavailable()  # the provider has not answered within the timeout
        found = self._keys.get(kid)
        if found is None and (self._last_failed or self._fetched_at is None):
            raise KeysUnavailable()
        return found

    def _refresh(self) -> threading.Thread | None:
        """Start a fetch if none runs and none started within the interval; return the running one."""
        with self._lock:
            job = self._job
            if job is not None and job.is_alive():
                return job
            now = self.clock()
            interval = MIN_REFRESH_INTERVAL if self._fetched_at is not None else FIRST_FETCH_RETRY
            if self._started_at is not None and now - self._started_at < interval:
                return None
            self._started_at = now
            job = self._job = threading.Thread(target=self._fetch, name="oidc-jwks-refresh", daemon=True)
            job.start()
            return job

    def _fetch(self) -> None:
        try:
            url = self._locate(self.timeout)
            keys = keys_from(self._fetch_set(url, self.timeout), self.algorithms)
            if not keys:
                raise ValueError("no usable signing key in the set")
        except Exception as error:  # any failure keeps the keys already known
            self._last_failed = True
            log.warning("identity provider keys not refreshed (%s); keeping %d known keys", type(error).__name__, len(self._keys))
            return
        added = len(keys.keys() - self._keys.keys())
        self._keys = keys  # one assignment: readers see the old set or the new one
        self._fetched_at = self.clock()
        self._last_failed = False
        log.info("identity provider keys fetched: %d keys, %d new", len(keys), added)


def _fetch_with_pyjwt(url: str, timeout: float) -> Any:
    return jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout).fetch_data()


class Discovery:
    """``jwks_uri`` from the issuer's discovery document, fetched once it is needed and kept.

    :param check_url: refuses a ``jwks_uri`` the settings would refuse (raises :class:`ValueError`).
    """

    def __init__(self, issuer: str, check_url: Callable[[str], None], fetch: Callable[[str, float], Any] = fetch_json) -> None:
        self.issuer = issuer
        self._check_url = check_url
        self._fetch = fetch
        self._jwks_uri: str | None = None

    def __call__(self, timeout: float) -> str:
        if self._jwks_uri is not None:
            return self._jwks_uri
        document = self._fetch(discovery_url(self.issuer), timeout)
        if not isinstance(document, Mapping) or document.get("issuer") != self.issuer:
            raise ValueError("the discovery document names another issuer")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str):
            raise ValueError("the discovery document has no jwks_uri")
        self._check_url(uri)
        self._jwks_uri = uri
        return uri
