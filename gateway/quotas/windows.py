"""Request windows: per-caller request quotas counted on flask-limiter's strategy.

:class:`RequestWindows` (:func:`gateway.extensions.request_windows`) counts a request against the
caller's general quota, and on AI endpoints the AI quota too, in one step
(:meth:`RequestWindows.hold`), on flask-limiter's storage and window strategy. The counter key
is the caller's identity (:func:`gateway.auth.caller_key`). On Redis with the moving
window, :mod:`gateway.quotas.redis_script` counts all of a request's quotas and reads
their windows for the headers in one round trip instead of two per quota.

Store outages (:mod:`gateway.quotas.outage`): with ``RATE_LIMIT_ON_STORAGE_ERROR=closed``
the request is answered 503; with ``open`` counting moves to flask-limiter's
per-process fallback strategy, and :meth:`RequestWindows.strategy` probes the store with a
growing interval (:data:`PROBE_MIN_SECONDS` up to :data:`PROBE_MAX_SECONDS`;
``/health/ready`` probes at once), moving counting back when it answers. Only an
outage (connection, timeout, a server that cannot serve anyone) moves every caller's
counting; a command the store refuses for one caller's counters (``WRONGTYPE``, an
expiry out of range) gets the policy for that request alone (``open``:
:attr:`RequestWindows.refused_fallback`), logged at most once per
:data:`REFUSAL_LOG_INTERVAL_SECONDS` with the count.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from flask_limiter import Limiter
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.strategies import STRATEGIES, RateLimiter

from gateway import auth, compat, extensions
from gateway.config import Settings
from gateway.errors import LimitStorageUnavailable, RateLimited
from gateway.exchange import current
from gateway.quotas.outage import is_outage
from gateway.quotas.policy import CallerPolicy, caller_policy
from gateway.quotas.redis_script import RedisWindows, Window

log = logging.getLogger(__name__)

# Each request quota by the name the RateLimit headers and metrics show it. The general
# quota's counters are keyed "global" (its name before it had one), so counters already
# in the store keep counting; the others are keyed by their name.
GENERAL_QUOTA = "general"
GENERAL_COUNTER_SCOPE = "global"
AI_QUOTA = "ai"
AUTH_FAILURE_QUOTA = "auth-failures"
PROBE_MIN_SECONDS = 0.5
PROBE_MAX_SECONDS = 30.0
REFUSAL_LOG_INTERVAL_SECONDS = 60.0


def storage_options(settings: Settings) -> dict[str, Any]:
    """Options for the limits storage: short socket timeouts, no client-side retries.

    An unreachable Redis then costs a request at most ``RATE_LIMIT_STORAGE_TIMEOUT``
    before the outage policy applies, instead of redis-py's default retries.
    """
    if not settings.shared_limit_storage:
        return {}
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeout = settings.rate_limit_storage_timeout
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "wrap_exceptions": True,
    }


class StorageHealth:
    """Tracks whether the quota store answers, logging one line per outage."""

    def __init__(self) -> None:
        self.down_since: float | None = None

    def failed(self) -> None:
        if self.down_since is None:
            self.down_since = time.time()
            log.error("rate limit storage unreachable; outage policy applies until it answers again")

    def recovered(self) -> None:
        if self.down_since is not None:
            log.warning("rate limit storage answers again after %.1f s", time.time() - self.down_since)
            self.down_since = None


@functools.lru_cache(maxsize=1024)
def _items(text: str) -> tuple[RateLimitItem, ...]:
    """A limit string (``"20 per 15 minutes; 5 per second"``) parsed once, not per request."""
    return tuple(parse_many(text))


def request_quotas(general: str, ai: str | None) -> list[tuple[str, str, str]]:
    """(name in the headers, limit string, counter scope) of the request quotas a caller is
    held to: the ``general`` one, and the ``ai`` one when given (on AI endpoints)."""
    found = [(GENERAL_QUOTA, general, GENERAL_COUNTER_SCOPE)]
    if ai is not None:
        found.append((AI_QUOTA, ai, AI_QUOTA))
    return found


@dataclass(slots=True)
class Counted:
    """One quota counter a request was held to, for the headers."""

    policy: str  # the name the headers show: general, ai or auth-failures
    item: RateLimitItem
    args: tuple[str, ...]  # the counter's key parts (prefix, caller, scope)
    breached: bool
    window: Window | None = None  # what RedisWindows read while counting; else read for the headers


class RequestWindows:
    """The app's request windows: flask-limiter's limiter and strategies, the store's health."""

    def __init__(self, limiter: Limiter, settings: Settings) -> None:
        self.limiter = limiter
        self.health = StorageHealth()
        self.fail_open = settings.rate_limit_on_storage_error == "open"
        self.prefix: tuple[str, ...] = (settings.rate_limit_key_prefix,) if settings.rate_limit_key_prefix else ()
        # Every request quota in one Redis round trip, where that is exact (moving window, not a cluster).
        self.windows = RedisWindows.for_strategy(limiter.limiter)
        self._probe_interval = PROBE_MIN_SECONDS
        self._next_probe = 0.0
        self._strategy_name = settings.rate_limit_strategy
        self._refused_fallback: RateLimiter | None = None
        self._refusals = 0
        self._next_refusal_log = 0.0

    @property
    def strategy(self) -> RateLimiter:
        """The store's strategy, or the per-process fallback while the store is down (open)."""
        if compat.limiter_storage_dead(self.limiter):  # its fallback strategy is in use
            self._probe()
        return self.limiter.limiter

    def _probe(self) -> None:
        now = time.monotonic()
        if now < self._next_probe:
            return
        self._next_probe = now + self._probe_interval
        self._probe_interval = min(self._probe_interval * 2, PROBE_MAX_SECONDS)
        try:
            answers = bool(self.limiter.storage.check())  # bounded by the store's socket timeout
        except Exception:
            answers = False
        if answers:
            self.back()

    def back(self) -> None:
        """The store answers again: count there from now on."""
        compat.set_limiter_storage_dead(self.limiter, False)
        self._probe_interval = PROBE_MIN_SECONDS
        self._next_probe = 0.0

    def hold(self, ai: bool) -> None:
        """Count the current request against the caller's general quota, and with ``ai``
        against the AI quota too, in one step (one Redis round trip on the fast path).

        :raises RateLimited: a quota is full (the request was not counted on it).
        :raises StorageError: the store failed and the outage policy is ``closed``.
        """
        if not self.limiter.enabled:  # flask-limiter's switch (RATELIMIT_ENABLED)
            return
        key = auth.caller_key()
        try:
            counted = _hit_all(self, self.strategy, ai, key)
        except StorageError as error:
            if not is_outage(error):  # this caller's command only: the store stays in use for everyone
                self.command_refused(error)
                if not self.fail_open:
                    raise LimitStorageUnavailable(headers={"Retry-After": "1"}) from None
                counted = _hit_all(self, self.refused_fallback, ai, key)
            else:
                self.store_failed()
                if not self.fail_open:
                    raise  # errors.py answers 503
                counted = _hit_all(self, self.strategy, ai, key)
        exchange = current()
        exchange.quotas_counted = counted
        if counted and counted[-1].breached:
            breached = counted[-1]
            exchange.quota_refused = breached.policy
            raise RateLimited(f"Rate limit exceeded: {breached.item} ({breached.policy}). Retry after the time in Retry-After.")

    @property
    def refused_fallback(self) -> RateLimiter:
        """Counts in the process the requests whose own command the store refused (``open``),
        apart from flask-limiter's fallback, which would move every caller. Made when first needed."""
        if self._refused_fallback is None:
            self._refused_fallback = STRATEGIES[self._strategy_name](MemoryStorage())
        return self._refused_fallback

    def command_refused(self, error: StorageError) -> None:
        """The store refused one caller's command (not an outage): log it, at most once per
        :data:`REFUSAL_LOG_INTERVAL_SECONDS` with how many there were; the store's state is unchanged."""
        self._refusals += 1
        now = time.monotonic()
        if now < self._next_refusal_log:
            return
        caller = auth.current_caller()
        log.error(
            "rate limit storage refused a command (%s); the outage policy applied to that request only",
            type(error.storage_error).__name__,
            extra={"fields": {"refused": self._refusals, "key_id": caller.id if caller else None}},
        )
        self._refusals = 0
        self._next_refusal_log = now + REFUSAL_LOG_INTERVAL_SECONDS

    def store_failed(self) -> None:
        """The store raised: log the outage once; with ``open``, count in the process
        until a timed probe (or ``/health/ready``) finds it back."""
        self.health.failed()
        if self.fail_open:
            compat.set_limiter_storage_dead(self.limiter, True)  # flask-limiter's fallback strategy
            # Not back before the next probe, even if the store answers a ping: it may
            # answer PING and still fail our commands.
            self._next_probe = time.monotonic() + self._probe_interval


def app_windows() -> RequestWindows:
    """The app's :class:`RequestWindows`."""
    return extensions.request_windows()


@dataclass(frozen=True, slots=True)
class Counters:
    """The counters one caller's request is held to, shortest window first (flask-limiter's order)."""

    named: tuple[tuple[str, RateLimitItem, tuple[str, ...]], ...]  # (policy name, limit, counter key parts)
    keyed: tuple[tuple[RateLimitItem, str], ...]  # (limit, limits' own key) for RedisWindows


@functools.lru_cache(maxsize=4096)
def _counters(prefix: tuple[str, ...], key: str, general: str, ai: str | None) -> Counters:
    """The counters of a caller and its limits, worked out once, not per request."""
    found = sorted(
        ((name, item, (*prefix, key, scope)) for name, text, scope in request_quotas(general, ai) for item in _items(text)),
        key=lambda each: each[1],
    )
    return Counters(tuple(found), tuple((item, item.key_for(*args)) for _, item, args in found))


def _hit_all(state: RequestWindows, strategy: RateLimiter, with_ai: bool, key: str) -> list[Counted]:
    policy = caller_policy()
    ai = policy.rate_limit_ai if with_ai else None
    counters = _counters(state.prefix, key, policy.rate_limit_general, ai)
    windows = state.windows
    if windows is not None and strategy.storage is windows.storage:  # not the outage fallback
        return [
            Counted(name, item, args, window.breached, window)
            for (name, item, args), window in zip(counters.named, windows.hit(counters.keyed), strict=False)
        ]
    counted: list[Counted] = []
    # No further counting after a breach, like flask-limiter.
    for name, item, args in counters.named:
        breached = not strategy.hit(item, *args)
        counted.append(Counted(name, item, args, breached))
        if breached:
            break
    return counted


def remaining_requests(policy: CallerPolicy) -> dict[str, dict[str, int] | None]:
    """Per request quota (``general``, ``ai``) of the current caller: the limit, requests
    remaining and seconds until the window frees one; ``None`` while the store is down.
    With several limits in one string, the last one is shown."""
    state = app_windows()
    key = auth.caller_key()
    now = time.time()
    found: dict[str, dict[str, int] | None] = {}
    for name, text, scope in request_quotas(policy.rate_limit_general, policy.rate_limit_ai):
        for item in _items(text):
            try:
                reset, left = state.strategy.get_window_stats(item, *state.prefix, key, scope)
            except Exception:  # the store is down: say so rather than guess
                found[name] = None
                break
            found[name] = {"limit": item.amount, "remaining": left, "resets_in": max(0, min(item.get_expiry(), int(reset - now) + 1))}
    return found


def storage_ready() -> bool:
    """Whether the quota store answers now (for ``/health/ready``)."""
    state = app_windows()
    try:
        answers = bool(state.limiter.storage.check())
    except Exception:  # any client error means "not answering"; check() has a short timeout
        answers = False
    if answers:
        state.health.recovered()
        # A store that answers a probe is back, so counting moves back to it now
        # rather than at the next timed probe.
        state.back()
    else:
        state.health.failed()
    return answers
