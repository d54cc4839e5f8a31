"""In-flight AI requests per caller (``RATE_LIMIT_CONCURRENT``).

A caller holds a slot from before the upstream call until its answer is complete:
a non-streamed request releases it when the relay view returns; a stream releases
it when the stream ends, fails, or the client goes away (the relay's ``finally``).
Every slot also carries an expiry (``UPSTREAM_TOTAL_TIMEOUT`` + a margin) as a
safety net, so a crashed worker can never leave a caller stuck at its limit.

At a graceful stop, a stream still running at the drain deadline is cut by the
worker (:mod:`gateway.server`); :data:`stream_cut` tells the stream's end callbacks so.

Slots live in Redis (a sorted set per caller, scored by expiry, changed by one Lua
script so concurrent gateways cannot both take the last slot) when the quota store
is Redis, otherwise in the process.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from contextvars import ContextVar
from typing import Any, Protocol

from gateway.config import Settings
from gateway.errors import ConcurrencyLimited
from gateway.quotas.outage import on_store

log = logging.getLogger(__name__)

EXPIRY_MARGIN = 30.0

# True while a stream cut by a stopping worker ends (set in the greenlet that serves it).
stream_cut: ContextVar[bool] = ContextVar("stream_cut", default=False)

# KEYS[1]: the caller's slot set. ARGV: limit, token, ttl in ms. Time comes from the
# Redis server, so gateways with skewed clocks agree on what has expired.
_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""


class _Backend(Protocol):
    def acquire(self, key: str, token: str, limit: int, ttl: float) -> bool: ...
    def release(self, key: str, token: str) -> None: ...


class LocalSlots:
    """Slots in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, float]] = {}

    def acquire(self, key: str, token: str, limit: int, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            held = {t: expiry for t, expiry in self._held.get(key, {}).items() if expiry > now}
            if len(held) >= limit:
                self._held[key] = held
                return False
            held[token] = now + ttl
            self._held[key] = held
            return True

    def release(self, key: str, token: str) -> None:
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                held.pop(token, None)
                if not held:
                    del self._held[key]

    def count(self, key: str) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(1 for expiry in self._held.get(key, {}).values() if expiry > now)


class RedisSlots:
    """Slots shared by every gateway using the same Redis."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:inflight:{key}"

    def acquire(self, key: str, token: str, limit: int, ttl: float) -> bool:
        return bool(self._acquire(keys=[self._key(key)], args=[limit, token, int(ttl * 1000)]))

    def release(self, key: str, token: str) -> None:
        self._client.zrem(self._key(key), token)


class Slot:
    """One held slot; :meth:`release` is idempotent."""

    def __init__(self, backend: _Backend | None, key: str, token: str) -> None:
        self._backend = backend
        self._key = key
        self._token = token

    def release(self) -> None:
        backend, self._backend = self._backend, None
        if backend is None:
            return
        try:
            backend.release(self._key, self._token)
        except Exception:  # the store is down: the slot's expiry frees it
            log.warning("could not release a concurrency slot; it expires on its own")


class InFlight:
    def __init__(self, limit: int, ttl: float, shared: _Backend | None, fail_open: bool) -> None:
        self.limit = limit
        self.ttl = ttl
        self.local = LocalSlots()
        self._shared = shared
        self._fail_open = fail_open

    @classmethod
    def from_settings(cls, settings: Settings, storage: Any) -> InFlight:
        shared = None
        if settings.rate_limit_concurrent and settings.shared_limit_storage:
            shared = RedisSlots(storage.storage, settings.rate_limit_key_prefix)
        return cls(
            limit=settings.rate_limit_concurrent,
            ttl=settings.upstream_total_timeout + EXPIRY_MARGIN,
            shared=shared,
            fail_open=settings.rate_limit_on_storage_error == "open",
        )

    def acquire(self, key: str) -> Slot:
        """Take one of the caller's slots.

        :raises ConcurrencyLimited: the caller already has ``limit`` requests in flight (429).
        :raises LimitStorageUnavailable: the store is down and the policy is closed (503).
        """
        if not self.limit:
            return Slot(None, key, "")
        token = uuid.uuid4().hex
        backend, taken = on_store(
            self._shared, self.local, self._fail_open, lambda store: store.acquire(key, token, self.limit, self.ttl)
        )
        if not taken:
            raise ConcurrencyLimited(headers={"Retry-After": "1"})
        return Slot(backend, key, token)
