"""Per-key policy: allowed models, the ``max_tokens`` cap, and token quotas and budgets.

A key's unset fields fall back to the gateway's defaults; the master key has only
the defaults (it is not a way around the limits).

Token quotas are enforced before the call, atomically: a request reserves an
estimate (its prompt size plus ``max_tokens``, or the key's cap, or
:data:`DEFAULT_COMPLETION_RESERVE`) against every token counter of its key at once,
and is refused if any counter would pass its limit. When the answer is complete the
reservation is settled to the tokens actually used. Without ``max_tokens`` the
estimate is a guess, so such a request holds what is left when less is left, and
is refused only when nothing is. So concurrent requests can
overshoot a limit by no more than one request's reservation (only when a request
uses more than it reserved), never by the number of requests in flight.

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
import fnmatch
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import current_app

from gateway.auth.keys import MASTER_KEY_ID
from gateway.config import Settings
from gateway.errors import BadRequest, Forbidden, GatewayError
from gateway.exchange import current
from gateway.outage import on_store
from gateway.store.keys import KeyRecord

log = logging.getLogger(__name__)

DEFAULT_COMPLETION_RESERVE = 1024
TOKEN_COUNTERS = ("tokens_per_minute", "tokens_per_day", "budget_tokens_day", "budget_tokens_month")


class InsufficientQuota(GatewayError):
    code = 429
    error_type = "insufficient_quota"
    error_code = "insufficient_quota"
    description = "This key's token quota is used up."


@dataclass(frozen=True)
class CallerPolicy:
    """What applies to one caller, defaults filled in."""

    key_id: str
    rate_limit_general: str
    rate_limit_ai: str
    allowed_models: tuple[str, ...] | None
    max_tokens_cap: int | None
    token_limits: tuple[tuple[str, int], ...]  # (counter field, limit), set ones only

    @classmethod
    def build(cls, key_id: str, record: KeyRecord | None, settings: Settings) -> CallerPolicy:
        def pick(name: str) -> Any:
            return getattr(record, name) if record is not None else None

        models = pick("allowed_models")
        return cls(
            key_id=key_id,
            rate_limit_general=pick("rate_limit_general") or settings.rate_limit_general,
            rate_limit_ai=pick("rate_limit_ai") or settings.rate_limit_ai,
            allowed_models=tuple(models) if models else None,
            max_tokens_cap=pick("max_tokens_cap"),
            token_limits=tuple((name, pick(name)) for name in TOKEN_COUNTERS if pick(name) is not None),
        )

    def allows_model(self, model: str) -> bool:
        if self.allowed_models is None:
            return True
        return any(model == pattern or fnmatch.fnmatchcase(model, pattern) for pattern in self.allowed_models)


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


# KEYS: counter keys. ARGV[1]: amount, ARGV[2]: 1 if the amount may shrink to what is
# left; then per counter: limit, ttl seconds. Returns the amount added to every
# counter, or minus the index of the first counter that refused.
_RESERVE = """
local amount = tonumber(ARGV[1])
local flexible = ARGV[2] == '1'
for i, key in ipairs(KEYS) do
  local room = tonumber(ARGV[2 * i + 1]) - tonumber(redis.call('GET', key) or '0')
  if flexible and room < amount then amount = room end
  if room < 1 or amount > room then return -i end
end
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, amount)
  redis.call('EXPIRE', key, tonumber(ARGV[2 * i + 2]))
end
return amount
"""


class LocalCounters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[str, tuple[int, float]] = {}  # key -> (tokens, expires at)

    def _get(self, key: str, now: float) -> int:
        used, expires = self._used.get(key, (0, 0.0))
        return used if expires > now else 0

    def reserve(self, keys: list[str], limits: list[int], ttls: list[int], amount: int, flexible: bool) -> int:
        now = time.time()
        with self._lock:
            for index, (key, limit) in enumerate(zip(keys, limits, strict=True), start=1):
                room = limit - self._get(key, now)
                if flexible:
                    amount = min(amount, room)
                if room < 1 or amount > room:
                    return -index
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

    def reserve(self, keys: list[str], limits: list[int], ttls: list[int], amount: int, flexible: bool) -> int:
        args: list[int] = [amount, 1 if flexible else 0]
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

    def settle(self, used: int) -> None:
        ledger, self._ledger = self._ledger, None
        if ledger is None or not self._keys or used == self.amount:
            return
        try:
            self._backend.adjust(self._keys, used - self.amount)
        except Exception:
            log.warning("could not settle a token reservation; the counters keep the estimate")


NO_RESERVATION = Reservation(None, None, [], 0)


class TokenLedger:
    def __init__(self, prefix: str, shared: RedisCounters | None, fail_open: bool) -> None:
        self.prefix = prefix
        self.local = LocalCounters()
        self._shared = shared
        self._fail_open = fail_open

    @classmethod
    def from_settings(cls, settings: Settings, storage: Any) -> TokenLedger:
        shared = RedisCounters(storage.storage) if settings.shared_limit_storage else None
        return cls(settings.rate_limit_key_prefix, shared, settings.rate_limit_on_storage_error == "open")

    def _keys(self, policy: CallerPolicy, now: float) -> tuple[list[str], list[int], list[int]]:
        keys, limits, ttls = [], [], []
        for counter, limit in policy.token_limits:
            label, remaining = window_of(counter, now)
            keys.append(f"{self.prefix}:tokens:{policy.key_id}:{counter}:{label}")
            limits.append(limit)
            ttls.append(remaining + 60)
        return keys, limits, ttls

    def reserve(self, policy: CallerPolicy, amount: int, flexible: bool = False) -> Reservation:
        """Hold ``amount`` tokens on every counter of the caller, or refuse.

        ``flexible``: the amount is a guess (no ``max_tokens``), so hold what is left when
        less than that is left; refuse only when nothing is.

        :raises InsufficientQuota: a counter would pass its limit (429, with ``Retry-After``).
        :raises LimitStorageUnavailable: the store is down and the policy is closed (503).
        """
        if not policy.token_limits:
            return NO_RESERVATION
        now = time.time()
        keys, limits, ttls = self._keys(policy, now)
        backend, held = on_store(self._shared, self.local, self._fail_open,
                                 lambda store: store.reserve(keys, limits, ttls, amount, flexible))
        if held < 0:
            counter, limit = policy.token_limits[-held - 1]
            resets_in = window_of(counter, now)[1]
            raise InsufficientQuota(
                f"This key's {counter.replace('_', ' ')} ({limit} tokens) does not leave room for this request "
                f"(about {amount} tokens: prompt plus max_tokens). It resets in {resets_in} s.",
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
            figures[counter] = {"limit": limit, "remaining": max(0, limit - used),
                                "resets_in": window_of(counter, now)[1]}
        return figures


# --- the request's policy ----------------------------------------------------------


def caller_policy() -> CallerPolicy:
    """The current caller's policy, worked out once per request."""
    exchange = current()
    policy = exchange.policy
    if policy is None:
        caller = exchange.caller
        settings: Settings = current_app.config["GATEWAY"]
        key_id = caller.id if caller else "anonymous"
        record = None
        if caller is not None and key_id != MASTER_KEY_ID:
            record = current_app.extensions["gateway.keys"].record(key_id)
        policy = CallerPolicy.build(key_id, record, settings)
        exchange.policy = policy
    return policy


def check_request(document: dict[str, Any], prompt_estimate: int) -> tuple[int, bool]:
    """Apply the key's model list and ``max_tokens`` cap; return the tokens to reserve and
    whether that is a guess (no ``max_tokens`` given) that may shrink to what is left.

    :raises 403: the model is not among the key's allowed models.
    :raises 400: ``max_tokens`` is above the key's cap, or not a positive integer.
    """
    policy = caller_policy()
    model = document.get("model")
    if policy.allowed_models is not None and not (isinstance(model, str) and policy.allows_model(model)):
        raise Forbidden(f"This key may not use the model {model!r}." if isinstance(model, str)
                        else "This key must name one of its allowed models.",
                        error_code="model_not_allowed", param="model")
    requested = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = document.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"'{name}' must be a positive integer.", param=name, error_code="invalid_type")
        if policy.max_tokens_cap is not None and value > policy.max_tokens_cap:
            raise BadRequest(f"'{name}' is above this key's cap of {policy.max_tokens_cap}.", param=name,
                             error_code="max_tokens_above_cap")
        requested = value if requested is None else max(requested, value)
    completion = requested or policy.max_tokens_cap or DEFAULT_COMPLETION_RESERVE
    return prompt_estimate + completion, requested is None


def reserve_tokens(amount: int, flexible: bool) -> Reservation:
    ledger: TokenLedger = current_app.extensions["gateway.tokens_ledger"]
    return ledger.reserve(caller_policy(), amount, flexible)


def remaining_for_caller() -> dict[str, Any]:
    """What the caller has left: request quotas and token counters (for ``GET /api/usage``).

    ``requests``: per policy (``general``, ``ai``) the limit, remaining requests and
    seconds until the window frees one; ``tokens``: per set token counter the limit,
    remaining tokens and seconds until it resets.
    """
    from gateway import limits  # limits builds on this module

    policy = caller_policy()
    requests = limits.remaining_requests(policy)
    ledger: TokenLedger = current_app.extensions["gateway.tokens_ledger"]
    return {"requests": requests, "tokens": ledger.remaining(policy)}
