"""A caller's request quotas counted in Redis in one round trip (the moving window).

With the ``limits`` library each quota costs two round trips on Redis: one to count
the request (``hit``) and one to read what is left for the headers
(``get_window_stats``). A request on an AI endpoint is held to two quotas, so four
round trips, each costing redis-py's own CPU (measured in bench/results/profile.md).

:class:`RedisWindows` does the same in one script call: for each counter in turn it
runs the steps of limits' ``acquire_moving_window.lua`` (stop at the first counter
that is full, as flask-limiter does) and of its ``moving_window.lua`` (the count and
the oldest entry still in the window), on limits' own keys and list layout, with
limits' own key names. So the counters stay readable and clearable by limits and
flask-limiter, the per-process fallback during an outage is unchanged, and switching
between this and the library's path loses no count.

Used only where it is exact: the moving-window strategy on one Redis server (or a
Sentinel-managed one). A Redis Cluster keeps the library's path, one counter per
call, because one script may only touch keys of one hash slot.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from limits import RateLimitItem
from limits.errors import StorageError
from limits.storage import RedisClusterStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter, RateLimiter

# KEYS: the counters' lists (newest entry first). ARGV[1]: now; then per counter:
# limit, window seconds. Returns one {counted (1 or 0), entries in the window,
# oldest entry in the window as a string} per counter looked at.
_HIT = """
local now = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local expiry = tonumber(ARGV[2 * i + 1])
  local since = now - expiry
  local last = redis.call('LINDEX', key, limit - 1)
  local counted = not (last and tonumber(last) >= since)
  if counted then
    redis.call('LPUSH', key, now)
    redis.call('LTRIM', key, 0, limit - 1)
    redis.call('EXPIRE', key, expiry)
  end
  local low, high, found = 0, limit - 1, nil
  while low <= high do
    local mid = math.floor((low + high) / 2)
    local value = tonumber(redis.call('LINDEX', key, mid))
    if value and value >= since then
      found = mid
      low = mid + 1
    else
      high = mid - 1
    end
  end
  if found then
    out[i] = {counted and 1 or 0, found + 1, tostring(redis.call('LINDEX', key, found))}
  else
    out[i] = {counted and 1 or 0, 0, tostring(now)}
  end
  if not counted then
    return out
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Window:
    """One counter after the request was counted (or refused) on it."""

    breached: bool
    remaining: int
    reset_at: int  # epoch seconds when the oldest entry leaves the window


class RedisWindows:
    """The moving-window counters of one limits Redis storage, hit in one script call."""

    def __init__(self, storage: RedisStorage) -> None:
        self.storage = storage
        self._script = storage.storage.register_script(_HIT)

    @classmethod
    def for_strategy(cls, strategy: RateLimiter) -> RedisWindows | None:
        """The fast path for ``strategy``, or ``None`` where only the library's path is exact."""
        storage = strategy.storage
        if (
            isinstance(strategy, MovingWindowRateLimiter)
            and isinstance(storage, RedisStorage)
            and not isinstance(storage, RedisClusterStorage)
        ):
            return cls(storage)
        return None

    def hit(self, counters: Sequence[tuple[RateLimitItem, str]]) -> list[Window]:
        """Count one request on each ``(limit, limits key)`` in turn, stopping at the
        first that is full; one :class:`Window` per counter looked at.

        :raises StorageError: Redis failed (as the limits storage raises it).
        """
        keys = [self.storage.prefixed_key(key) for _, key in counters]
        args: list[float | int] = [time.time()]
        for item, _ in counters:
            args += [item.amount, item.get_expiry()]
        try:
            rows = self._script(keys=keys, args=args)
        except self.storage.base_exceptions as error:
            raise StorageError(error) from error
        return [
            Window(not counted, 0 if not counted else item.amount - count, int(float(oldest) + item.get_expiry() + 1))
            for (item, _), (counted, count, oldest) in zip(counters, rows, strict=False)
        ]
