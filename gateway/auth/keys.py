"""API keys the gateway accepts: the master key and managed keys.

- ``MASTER_API_KEY`` is the caller ``master``: the administrator and the default
  key. It never touches the database; its first use in a process is logged at INFO.
- Managed keys look like ``aip_<43 URL-safe characters>`` (256 random bits). The
  ``aip_`` prefix lets secret scanners recognise a leaked key. Only
  ``HMAC-SHA256(pepper, secret)`` is stored, and a presented secret is looked up by
  that hash, so the time a lookup takes says nothing about how close a guess was;
  the hash is then compared again with :func:`hmac.compare_digest`.
- The pepper is ``KEY_HASH_PEPPER``, or else derived from ``JWT_SECRET``: rotating
  ``JWT_SECRET`` without setting ``KEY_HASH_PEPPER`` to the old derived value makes
  every managed key stop working (re-issue them, or set ``KEY_HASH_PEPPER`` first).

Lookups are cached in the process for ``KEY_CACHE_SECONDS`` (default 5), so a
revocation or rotation reaches every worker and instance within that time.
Expiry is checked against the clock on every request, cached or not.

The identity (key id), never the secret, is what quotas, logs, usage and tokens carry.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from gateway.config import Settings
from gateway.errors import ServiceUnavailable
from gateway.store.keys import KEY_ID_PREFIX, KeyRecord, KeyStore

log = logging.getLogger(__name__)

MASTER_KEY_ID = "master"
SECRET_PREFIX = "aip_"
SECRET_RANDOM_BYTES = 32  # 43 URL-safe characters
SHOWN_PREFIX_LENGTH = 12  # "aip_" and 8 characters: enough to tell keys apart in a list
CACHE_MAX_ENTRIES = 10_000
_PEPPER_LABEL = b"ai-proxy-gateway/key-hash-pepper/v1"


def derive_pepper(settings: Settings) -> bytes:
    """``KEY_HASH_PEPPER``, or an HMAC of a fixed label under ``JWT_SECRET``."""
    if settings.key_hash_pepper:
        return settings.key_hash_pepper.encode("utf-8")
    return hmac.new(settings.jwt_secret.encode("utf-8"), _PEPPER_LABEL, hashlib.sha256).digest()


def new_secret() -> str:
    """A managed key's secret: ``aip_`` and 256 random bits, URL-safe. Shown once, never stored."""
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_RANDOM_BYTES)


def shown_prefix(secret: str) -> str:
    """The part of a secret that may be stored and listed, to tell keys apart; it does not identify one."""
    return secret[:SHOWN_PREFIX_LENGTH]


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the store refuses naive datetimes)."""
    return datetime.now(UTC)


class _TtlCache:
    """A small thread-safe cache of lookups (found or not) that expire after ``ttl`` seconds."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> tuple[bool, KeyRecord | None]:
        entry = self._entries.get(name)  # one atomic read: no lock needed (writers hold it)
        if entry is None or entry[0] <= self._clock():
            return False, None
        return True, entry[1]

    def put(self, name: str, record: KeyRecord | None) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[name] = (self._clock() + self.ttl, record)
            self._entries.move_to_end(name)
            while len(self._entries) > CACHE_MAX_ENTRIES:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class KeyRing:
    """Resolves presented secrets to key ids and tells whether a key id is still honoured.

    :meth:`identify` and :meth:`is_active` raise :class:`~gateway.errors.ServiceUnavailable`
    (503) when a managed key must be looked up and the database does not answer; the
    master key keeps working without the database.
    """

    def __init__(
        self,
        master_api_key: str,
        store: KeyStore | None = None,
        *,
        pepper: bytes = b"",
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._master = master_api_key.encode("utf-8")
        self.store = store
        self._pepper = pepper
        self.clock = clock  # monotonic seconds; tests replace it to move the cache's time
        self._cache = _TtlCache(cache_seconds, lambda: self.clock())
        self._now = now
        self._master_logged_in: int | None = None  # the pid that logged the master key's use

    @classmethod
    def from_settings(cls, settings: Settings, store: KeyStore) -> KeyRing:
        return cls(settings.master_api_key, store, pepper=derive_pepper(settings), cache_seconds=settings.key_cache_seconds)

    # --- secrets -------------------------------------------------------------------
    def hash_secret(self, secret: str) -> str:
        """``HMAC-SHA256(pepper, secret)`` in hex: what the store keeps and looks a secret up by."""
        return hmac.digest(self._pepper, secret.encode("utf-8", "surrogateescape"), "sha256").hex()

    def issue_secret(self) -> tuple[str, str, str]:
        """A fresh secret with its shown prefix and its hash: ``(secret, prefix, hash)``."""
        secret = new_secret()
        return secret, shown_prefix(secret), self.hash_secret(secret)

    # --- lookups -------------------------------------------------------------------
    def _note_master_use(self) -> None:
        if self._master_logged_in != os.getpid():
            self._master_logged_in = os.getpid()
            log.info("the master key is in use (logged once per process)")

    def _lookup(self, cache_name: str, fetch: Callable[[KeyStore], KeyRecord | None]) -> KeyRecord | None:
        hit, record = self._cache.get(cache_name)
        if hit:
            return record
        if self.store is None:
            return None
        try:
            record = fetch(self.store)
        except SQLAlchemyError as error:
            log.warning("key lookup failed: database unavailable (%s)", type(error).__name__)
            raise ServiceUnavailable(headers={"Retry-After": "5"}) from None
        self._cache.put(cache_name, record)
        return record

    def identify(self, presented: str) -> str | None:
        """Return the key id for a presented secret, or ``None`` for no valid key.

        Revoked and expired keys are ``None``. Secrets are compared in constant time.
        """
        candidate = presented.encode("utf-8", "surrogateescape")
        if self._master and hmac.compare_digest(candidate, self._master):
            self._note_master_use()
            return MASTER_KEY_ID
        if not presented.startswith(SECRET_PREFIX):
            return None  # not one of ours: no database round trip for it
        digest = self.hash_secret(presented)
        record = self._lookup(f"hash:{digest}", lambda store: store.find_by_hash(digest))
        if record is None or not hmac.compare_digest(record.secret_hash, digest):
            return None
        return record.id if record.is_active(self._now()) else None

    def is_active(self, key_id: str) -> bool:
        """Whether tokens minted for ``key_id`` are still honoured (not revoked, not expired)."""
        if key_id == MASTER_KEY_ID:
            return True
        if not key_id.startswith(KEY_ID_PREFIX):
            return False
        record = self._lookup(f"id:{key_id}", lambda store: store.get(key_id))
        return record is not None and record.is_active(self._now())

    def record(self, key_id: str) -> KeyRecord | None:
        """A managed key's settings (cached like every lookup); ``None`` for the master key."""
        if key_id == MASTER_KEY_ID or not key_id.startswith(KEY_ID_PREFIX):
            return None
        return self._lookup(f"id:{key_id}", lambda store: store.get(key_id))

    def record_named(self, name: str) -> KeyRecord | None:
        """The one active managed key named ``name`` (or with that id); ``None`` when none is
        active, or several are (a name that is not unique names no key). Cached like every lookup."""
        if name.startswith(KEY_ID_PREFIX):
            record = self.record(name)
            if record is not None:
                return record if record.is_active(self._now()) else None

        def only_active(store: KeyStore) -> KeyRecord | None:
            now = self._now()
            active = [record for record in store.find_by_name(name) if record.is_active(now)]
            return active[0] if len(active) == 1 else None

        record = self._lookup(f"name:{name}", only_active)
        return record if record is not None and record.is_active(self._now()) else None

    def forget(self) -> None:
        """Drop this process's cache (after a change made here, so it applies at once here)."""
        self._cache.clear()
