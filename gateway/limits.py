"""Quotas: flask-limiter's store and strategy, applied per request by our own hook.

- ``RATE_LIMIT_GENERAL``: one application-wide bucket per caller, every endpoint but
  the probes and scrapes in :data:`gateway.auth.endpoints.QUOTA_EXEMPT_ENDPOINTS`
  (``/health``, ``/health/ready``, ``/metrics``) and CORS preflights.
- ``RATE_LIMIT_AI``: one more bucket per caller shared by every AI endpoint, counting
  only the requests the gateway sends upstream (see :meth:`Quotas.hold`).
- ``RATE_LIMIT_AUTH_FAILURES``: failed ``POST /auth/token`` attempts per client address.
- ``RATE_LIMIT_CONCURRENT``: in-flight AI requests per caller (:mod:`gateway.inflight`).

The key is the caller's identity (a key id; a token's subject is the key that
minted it, so both share a quota), or the client address where nobody is
authenticated. The address is the socket's unless ``TRUSTED_PROXY_COUNT`` is set
(see :mod:`gateway.edge`), so a client-sent ``X-Forwarded-For`` never resets a quota.

Counters live where ``RATE_LIMIT_STORAGE_URI`` says: ``memory://`` (one process) or
Redis (shared by every worker of every instance). When the store fails,
``RATE_LIMIT_ON_STORAGE_ERROR`` decides: ``closed`` answers 503; ``open`` serves,
counting per process until the store is back, and reports it on ``/health/ready``.

flask-limiter builds the store and the window strategy from those settings, keeps
the per-process fallback strategy, and checks the auth-failure limit on
``/auth/token`` (its ``deduct_when``). The per-caller quotas every other request pays
for are hit by :func:`_hold_to_quotas` directly on flask-limiter's strategy
(``limiter.limiter``), and flask-limiter's own request hooks run only for the
auth blueprint (:func:`_scope_hooks_to_blueprint`): its per-request work of finding
which limits apply (blueprints, exemption scopes, dynamic limit providers parsed
again each time) cost about 0.3 ms per request, several times the counting itself,
and its hooks still cost about 0.02 ms with nothing left to check.
The counters, their keys and the strategies are the same.

The AI quota protects the backend, so it counts the requests sent to it, a failed
upstream call included. On AI endpoints the relay view calls :meth:`Quotas.hold`
itself, once it knows: with ``ai=True`` just before the upstream call (the body was
read and validated, the token reservation and the concurrency slot were granted),
or with ``ai=False`` when the request is refused before that (malformed, too large,
not JSON, a model the key may not use, ...): such a request counts against the
general quota only. Either way it is one count, one round trip. On Redis with the moving
window, :mod:`gateway.redis_windows` counts all of a request's quotas and reads their
windows for the headers in one round trip instead of two per quota. While the store is down
(``open``), :meth:`Quotas.strategy` probes it with a growing interval (0.5 s up to
30 s; ``/health/ready`` probes at once) and moves counting back when it answers.

Only an outage (:func:`gateway.outage.is_outage`: connection, timeout, a server that
cannot serve anyone) moves every caller's counting to the process. A command the store
refuses for one caller's counters (``WRONGTYPE``, an expiry out of range from a limit
stored before limits had bounds) gets the policy for that request alone: ``closed``
answers it 503, ``open`` counts it in the process (:attr:`Quotas.refused_fallback`);
every other caller keeps its exact count in the store. Such refusals are logged at most
once per :data:`REFUSAL_LOG_INTERVAL_SECONDS`, with their count.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.strategies import STRATEGIES, RateLimiter

from gateway import auth, quotas, response_headers
from gateway.auth.endpoints import AI_BLUEPRINT, AUTH_FAILURE_BLUEPRINT, QUOTA_EXEMPT_ENDPOINTS
from gateway.auth.views import blueprint as auth_blueprint
from gateway.config import Settings
from gateway.errors import GatewayError, LimitStorageUnavailable
from gateway.exchange import current
from gateway.inflight import InFlight
from gateway.outage import is_outage
from gateway.redis_windows import RedisWindows, Window

log = logging.getLogger(__name__)

GENERAL_SCOPE = "global"
AI_SCOPE = "ai"
AUTH_FAILURE_SCOPE = "auth-failures"
GENERAL_POLICY = "general"
PROBE_MIN_SECONDS = 0.5
PROBE_MAX_SECONDS = 30.0
REFUSAL_LOG_INTERVAL_SECONDS = 60.0
EXPOSED_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After",
                   "RateLimit", "RateLimit-Policy")


class RateLimited(GatewayError):
    code = 429
    error_type = "rate_limit_error"
    error_code = "gateway_rate_limited"
    description = "Rate limit exceeded. Retry after the time in Retry-After."


def _failed_attempt(response: Response) -> bool:
    return response.status_code == 401


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
    found = [(GENERAL_POLICY, general, GENERAL_SCOPE)]
    if ai is not None:
        found.append((AI_SCOPE, ai, AI_SCOPE))
    return found


@dataclass(slots=True)
class Counted:
    """One quota counter a request was held to, for the headers."""

    policy: str  # the name the headers show: general, ai or auth-failures
    item: RateLimitItem
    args: tuple[str, ...]  # the counter's key parts (prefix, caller, scope)
    breached: bool
    window: Window | None = None  # what RedisWindows read while counting; else read for the headers


class Quotas:
    """The app's quota state: flask-limiter's limiter, the store's health, exemptions."""

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
        if self.limiter._storage_dead:  # flask-limiter's flag: its fallback strategy is in use
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
        self.limiter._storage_dead = False
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
            raise RateLimited(f"Rate limit exceeded: {breached.item} ({breached.policy}). "
                              "Retry after the time in Retry-After.")

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
        log.error("rate limit storage refused a command (%s); the outage policy applied to that request only",
                  type(error.storage_error).__name__,
                  extra={"fields": {"refused": self._refusals, "key_id": caller.id if caller else None}})
        self._refusals = 0
        self._next_refusal_log = now + REFUSAL_LOG_INTERVAL_SECONDS

    def store_failed(self) -> None:
        """The store raised: log the outage once; with ``open``, count in the process
        until a timed probe (or ``/health/ready``) finds it back."""
        self.health.failed()
        if self.fail_open:
            self.limiter._storage_dead = True  # flask-limiter's switch to its fallback strategy
            # Not back before the next probe, even if the store answers a ping: it may
            # answer PING and still fail our commands.
            self._next_probe = time.monotonic() + self._probe_interval


AI_ENDPOINT_PREFIX = f"{AI_BLUEPRINT}."


def _state() -> Quotas:
    return current_app.extensions["gateway.quotas"]


@dataclass(frozen=True, slots=True)
class Counters:
    """The counters one caller's request is held to, shortest window first (flask-limiter's order)."""

    named: tuple[tuple[str, RateLimitItem, tuple[str, ...]], ...]  # (policy name, limit, counter key parts)
    keyed: tuple[tuple[RateLimitItem, str], ...]  # (limit, limits' own key) for RedisWindows


@functools.lru_cache(maxsize=4096)
def _counters(prefix: tuple[str, ...], key: str, general: str, ai: str | None) -> Counters:
    """The counters of a caller and its limits, worked out once, not per request."""
    found = sorted(((name, item, (*prefix, key, scope))
                    for name, text, scope in request_quotas(general, ai)
                    for item in _items(text)), key=lambda each: each[1])
    return Counters(tuple(found), tuple((item, item.key_for(*args)) for _, item, args in found))


def _hit_all(state: Quotas, strategy: RateLimiter, with_ai: bool, key: str) -> list[Counted]:
    policy = quotas.caller_policy()
    ai = policy.rate_limit_ai if with_ai else None
    counters = _counters(state.prefix, key, policy.rate_limit_general, ai)
    windows = state.windows
    if windows is not None and strategy.storage is windows.storage:  # not the outage fallback
        return [Counted(name, item, args, window.breached, window)
                for (name, item, args), window in zip(counters.named, windows.hit(counters.keyed), strict=False)]
    counted: list[Counted] = []
    # No further counting after a breach, like flask-limiter.
    for name, item, args in counters.named:
        breached = not strategy.hit(item, *args)
        counted.append(Counted(name, item, args, breached))
        if breached:
            break
    return counted


def _hold_to_quotas() -> None:
    """``before_request``: count the request against the caller's general quota. AI
    endpoints are left to their view, which calls :meth:`Quotas.hold` once it knows
    whether the request goes upstream."""
    endpoint = request.endpoint
    if not endpoint or auth.is_preflight() or endpoint.startswith(AI_ENDPOINT_PREFIX):
        return
    if endpoint in QUOTA_EXEMPT_ENDPOINTS:
        return
    _state().hold(ai=False)


def remaining_requests(policy: quotas.CallerPolicy) -> dict[str, dict[str, int] | None]:
    """Per request quota (``general``, ``ai``) of the current caller: the limit, requests
    remaining and seconds until the window frees one; ``None`` while the store is down.
    With several limits in one string, the last one is shown."""
    state = _state()
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
            found[name] = {"limit": item.amount, "remaining": left,
                           "resets_in": max(0, min(item.get_expiry(), int(reset - now) + 1))}
    return found


def _window(strategy: RateLimiter, each: Counted) -> tuple[int, int]:
    """(remaining, reset_at) of a counter."""
    if each.window is not None:
        return each.window.remaining, each.window.reset_at
    reset, remaining = strategy.get_window_stats(each.item, *each.args)
    return (0 if each.breached else remaining), int(reset + 1)


def _rate_limit_headers(response: Response) -> Response:
    state = _state()
    limiter = state.limiter
    # flask-limiter switches to its in-memory fallback (open policy) by setting this flag.
    if getattr(limiter, "_storage_dead", False):
        state.health.failed()
    elif state.health.down_since is not None and response.status_code != 503:
        state.health.recovered()
    exchange = current()
    counted: list[Counted] = list(exchange.quotas_counted or ())
    if request.blueprint == AUTH_FAILURE_BLUEPRINT:  # the auth-failure limit, checked by flask-limiter there
        for limit in limiter.current_limits:
            counted.append(Counted(AUTH_FAILURE_SCOPE, limit.limit, tuple(limit.request_args), limit.breached))
            if limit.breached:
                exchange.quota_refused = AUTH_FAILURE_SCOPE
    if not counted:
        return response
    strategy = state.strategy
    try:
        windows = [_window(strategy, each) for each in counted]
    except StorageError:
        return response
    # The counter closest to running out (a breached one first).
    index = min(range(len(counted)), key=lambda i: (not counted[i].breached, windows[i][0]))
    tightest = counted[index]
    remaining, reset_at = windows[index]
    window = tightest.item.get_expiry()
    seconds_left = max(0, min(window, reset_at - int(time.time())))
    headers = response.headers
    fields = [
        ("X-RateLimit-Limit", str(tightest.item.amount)),
        ("X-RateLimit-Remaining", str(remaining)),
        ("X-RateLimit-Reset", str(reset_at)),
        ("RateLimit-Policy", ", ".join(
            f'"{each.policy}";q={each.item.amount};w={each.item.get_expiry()}' for each in counted)),
        ("RateLimit", f'"{tightest.policy}";r={remaining};t={seconds_left}'),
    ]
    if response.status_code == 429 and "Retry-After" not in headers:
        fields.append(("Retry-After", str(max(1, seconds_left))))
    response_headers.put(headers, fields)
    return response


def describe(endpoint: str) -> list[str]:
    """The quotas that apply to an endpoint, for ``GET /``."""
    settings = current_app.config["GATEWAY"]
    if endpoint in QUOTA_EXEMPT_ENDPOINTS:
        return []
    described = [f"{settings.rate_limit_general} per caller (all endpoints; a key may have its own)"]
    if endpoint.startswith(AI_ENDPOINT_PREFIX):
        described.append(f"{settings.rate_limit_ai} per caller (all AI endpoints; requests sent upstream only; "
                         "a key may have its own)")
        if settings.rate_limit_concurrent:
            described.append(f"{settings.rate_limit_concurrent} concurrent requests per caller")
    if endpoint.startswith(f"{AUTH_FAILURE_BLUEPRINT}."):
        described.append(f"{settings.rate_limit_auth_failures} failed attempts per client address")
    return described


def storage_ready() -> bool:
    """Whether the quota store answers now (for ``/health/ready``)."""
    state = _state()
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


def _scope_hooks_to_blueprint(app: Flask, limiter: Limiter, blueprint: str) -> None:
    """Run the request hooks ``limiter.init_app`` registered for the whole app only for
    ``blueprint``'s requests: the only limit flask-limiter checks is there, and its
    hooks cost about 0.02 ms on every other request even with nothing to check.
    Flask keeps hooks per blueprint in these public registries (``None``: the app)."""
    def registered_by_limiter(hook: Any) -> bool:
        return getattr(hook, "__self__", None) is limiter or limiter in getattr(hook, "args", ())

    for registry in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs):
        app_hooks = registry.get(None, [])
        ours = [hook for hook in app_hooks if registered_by_limiter(hook)]
        for hook in ours:
            app_hooks.remove(hook)
        registry.setdefault(blueprint, []).extend(ours)


def init_app(app: Flask) -> None:
    settings: Settings = app.config["GATEWAY"]
    limiter = Limiter(
        key_func=auth.caller_key,
        storage_uri=settings.rate_limit_storage_uri,
        storage_options=storage_options(settings),
        strategy=settings.rate_limit_strategy,
        headers_enabled=False,  # _rate_limit_headers names the tightest limit instead
        key_prefix=settings.rate_limit_key_prefix,
        in_memory_fallback_enabled=settings.rate_limit_on_storage_error == "open",
        swallow_errors=False,
    )
    limiter.init_app(app)
    # flask-limiter checks only the auth-failure limit; _hold_to_quotas does the rest.
    _scope_hooks_to_blueprint(app, limiter, AUTH_FAILURE_BLUEPRINT)
    limiter.request_filter(auth.is_preflight)
    app.extensions["gateway.limiter"] = limiter
    state = app.extensions["gateway.quotas"] = Quotas(limiter, settings)
    app.extensions["gateway.limits.health"] = state.health
    app.before_request(_hold_to_quotas)
    limiter.limit(
        settings.rate_limit_auth_failures,
        key_func=auth.client_address,
        scope=AUTH_FAILURE_SCOPE,
        deduct_when=_failed_attempt,
        override_defaults=False,
    )(auth_blueprint)
    app.after_request(_rate_limit_headers)
    app.extensions["gateway.inflight"] = InFlight.from_settings(settings, limiter.storage)
    app.extensions["gateway.tokens_ledger"] = quotas.TokenLedger.from_settings(settings, limiter.storage)
