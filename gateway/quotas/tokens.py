"""Token quotas and budgets per key.

Token quotas are enforced before the call, atomically: a request reserves a bound on its
prompt (:func:`gateway.upstream.accounting.prompt_token_bound`) plus its completion (``max_tokens``, or the key's cap, or
:data:`~gateway.quotas.policy.DEFAULT_COMPLETION_RESERVE`) against every token counter
of its key at once, and is refused (429) if any counter would pass its limit. When the
answer is complete the reservation is settled to the tokens actually used.

A call that names no limit of its own is not refused for that: it holds its reservation,
or what is left when less is left, and the gateway sets the upstream's completion limit
to exactly what it holds beyond the prompt's bound (so the upstream cannot produce more
than was reserved, and a counter is never passed); it is refused only when not even the
prompt and :data:`~gateway.quotas.policy.MIN_COMPLETION_TOKENS` fit
(:class:`~gateway.quotas.policy.TokenPlan`).

Counters (all per key; windows in UTC):

=======================  =============================  ==================
field                    counter                        resets
=======================  =============================  ==================
``tokens_per_minute``    tokens in the current minute   every minute
``tokens_per_day``       tokens in the current day      at 00:00 UTC
``budget_tokens_day``    the day's budget               at 00:00 UTC
``budget_tokens_month``  the month's budget             on the 1st, 00:00 UTC
=======================  =============================  ==================

They live in Redis (one Lua script reserves on every counter at once) when the quota
store is Redis, otherwise in the process. On a store outage the quota store's policy
applies (``RATE_LIMIT_ON_STORAGE_ERROR``): ``open`` counts in the process, ``closed``
answers 503.
"""

from __future__ import annotations

import calendar
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any, Protocol, Self

from gateway.config import Settings
from gateway.errors import InsufficientQuota
from gateway.quotas.outage import on_store
from gateway.quotas.policy import CallerPolicy

log = logging.getLogger(__name__)


def window_of(counter: str, now: float) -> tuple[str, int]:
    """The counter's current window: a label for its key, and seconds until it resets."""
    moment = datetime.fromtimestamp(now, UTC)
    if counter == "tokens_per_minute":
        start = int(now // 60) * 60
        return f"m{start}", start + 60 - int(now)
    day_end = calendar.timegm((moment.year, moment.month, moment.day, 0, 0, 0)) + 86400
    if counter in ("tokens_per_day", "budget_tokens_day"):
        return moment.strftime("d%Y%m%d"), day_end - int(now)
    days = calendar.monthrange(moment.year, moment.month)[1]
    month_end = calendar.timegm((moment.year, moment.month, 1, 0, 0, 0)) + days * 86400
    return moment.strftime("M%Y%m"), month_end - int(now)


# KEYS: counter keys. ARGV[1]: amount, ARGV[2]: the least it may shrink to (at least 1)
# when less is left; then per counter: limit, ttl seconds. Returns the amount added to
# every counter, or minus the index of the first counter that refused.
_RESERVE = """
local amount = tonumber(ARGV[1])
local minimum = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local room = tonumber(ARGV[2 * i + 1]) - tonumber(redis.call('GET', key) or '0')
  if room < amount then
    if room < minimum then return -i end
    amount = room
  end
end
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, amount)
  redis.call('EXPIRE', key, tonumber(ARGV[2 * i + 2]))
end
return amount
"""


class TokenCounters(Protocol):
    """Where token counters live: the process (:class:`LocalCounters`) or Redis (:class:`RedisCounters`)."""

    def reserve(self, keys: list[str], limits: list[int], ttls: list[int], amount: int, minimum: int) -> int: ...

    def adjust(self, keys: list[str], amount: int) -> None: ...

    def used(self, key: str) -> int: ...


class LocalCounters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[str, tuple[int, float]] = {}  # key -> (tokens, expires at)

    def _get(self, key: str, now: float) -> int:
        used, expires = self._used.get(key, (0, 0.0))
        return used if expires > now else 0

    def reserve(self, keys: list[str], limits: list[int], ttls: list[int], amount: int, minimum: int) -> int:
        now = time.time()
        with self._lock:
            for index, (key, limit) in enumerate(zip(keys, limits, strict=True), start=1):
                room = limit - self._get(key, now)
                if room < amount:
                    if room < minimum:
                        return -index
                    amount = room
            for key, ttl in zip(keys, ttls, strict=True):
                self._used[key] = (self._get(key, now) + amount, now + ttl)
            return amount

    def adjust(self, keys: list[str], amount: int) -> None:
        now = time.time()
        with self._lock:
            for key in keys:
                used, expires = self._used.get(key, (0, now))
                if expires > now:
                    self._used[key] = (max(0, used + amount), expires)

    def used(self, key: str) -> int:
        with self._lock:
            return self._get(key, time.time())


class RedisCounters:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._reserve = client.register_script(_RESERVE)

    def reserve(self, keys: list[str], limits: list[int], ttls: list[int], amount: int, minimum: int) -> int:
        args: list[int] = [amount, minimum]
        for limit, ttl in zip(limits, ttls, strict=True):
            args += [limit, ttl]
        return int(self._reserve(keys=keys, args=args))

    def adjust(self, keys: list[str], amount: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.incrby(key, amount)
        pipe.execute()

    def used(self, key: str) -> int:
        return int(self._client.get(key) or 0)


class Reservation:
    """Tokens held for one request until :meth:`settle`; settling twice does nothing."""

    def __init__(self, ledger: TokenLedger | None, backend: Any, keys: list[str], amount: int) -> None:
        self._ledger = ledger
        self._backend = backend
        self._keys = keys
        self.amount = amount

    def give_back(self, amount: int) -> None:
        """Hold ``amount`` tokens less from now on (the call was given a smaller limit)."""
        if self._ledger is None or not self._keys or amount <= 0:
            return
        try:
            self._backend.adjust(self._keys, -amount)
        except Exception:
            log.warning("could not give back part of a token reservation; the counters keep it until settled")
            return
        self.amount -= amount

    def settle(self, used: int) -> None:
        ledger, self._ledger = self._ledger, None
        if ledger is None or not self._keys or used == self.amount:
            return
        try:
            self._backend.adjust(self._keys, used - self.amount)
        except Exception:
            log.warning("could not settle a token reservation; the counters keep the estimate")


NO_RESERVATION = Reservation(None, None, [], 0)


class CounterLedger:
    """Counters kept in Redis when the quota store is Redis, else in this process, under the
    quota store's outage policy: the base of the token and the spend ledgers."""

    def __init__(self, prefix: str, shared: TokenCounters | None, fail_open: bool) -> None:
        self.prefix = prefix
        self.local = LocalCounters()
        self._shared = shared
        self._fail_open = fail_open

    @classmethod
    def from_settings(cls, settings: Settings, storage: Any) -> Self:
        shared = RedisCounters(storage.storage) if settings.shared_limit_storage else None
        return cls(settings.rate_limit_key_prefix, shared, settings.rate_limit_on_storage_error == "open")


class TokenLedger(CounterLedger):
    def _keys(self, policy: CallerPolicy, now: float) -> tuple[list[str], list[int], list[int]]:
        keys, limits, ttls = [], [], []
        for counter, limit in policy.token_limits:
            label, remaining = window_of(counter, now)
            keys.append(f"{self.prefix}:tokens:{policy.key_id}:{counter}:{label}")
            limits.append(limit)
            ttls.append(remaining + 60)
        return keys, limits, ttls

    def reserve(self, policy: CallerPolicy, amount: int, minimum: int | None = None) -> Reservation:
        """Hold ``amount`` tokens on every counter of the caller, or refuse.

        ``minimum`` (default: ``amount``): when less than ``amount`` is left on a counter,
        hold what is left if that is at least ``minimum``; :attr:`Reservation.amount` says
        what was held. Checked and held on every counter at once, atomically.

        :raises InsufficientQuota: a counter would pass its limit (429, with ``Retry-After``).
        :raises LimitStorageUnavailable: the store is down and the policy is closed (503).
        """
        if not policy.token_limits:
            return NO_RESERVATION
        now = time.time()
        keys, limits, ttls = self._keys(policy, now)
        least = amount if minimum is None else max(1, min(minimum, amount))
        local: TokenCounters = self.local
        backend, held = on_store(self._shared, local, self._fail_open, lambda store: store.reserve(keys, limits, ttls, amount, least))
        if held < 0:
            counter, limit = policy.token_limits[-held - 1]
            resets_in = window_of(counter, now)[1]
            needed = f"{amount} tokens: prompt plus max_tokens" if least == amount else f"{least} tokens: prompt plus a minimal answer"
            raise InsufficientQuota(
                f"This key's {counter.replace('_', ' ')} ({limit} tokens) does not leave room for this request "
                f"(about {needed}). It resets in {resets_in} s.",
                headers={"Retry-After": str(max(1, resets_in)), "X-RateLimit-Reset-Tokens": f"{resets_in}s"},
            )
        return Reservation(self, backend, keys, held)

    def remaining(self, policy: CallerPolicy) -> dict[str, dict[str, int] | None]:
        """Each counter's limit, remaining tokens and seconds to reset (for ``/api/usage``);
        ``None`` for a counter whose store does not answer."""
        now = time.time()
        keys, limits, _ = self._keys(policy, now)
        backend: Any = self._shared or self.local
        figures: dict[str, dict[str, int] | None] = {}
        for (counter, limit), key in zip(policy.token_limits, keys, strict=True):
            try:
                used = backend.used(key)
            except Exception:  # the store is down: say so rather than show this process's count
                figures[counter] = None
                continue
            figures[counter] = {"limit": limit, "remaining": max(0, limit - used), "resets_in": window_of(counter, now)[1]}
        return figures
