"""Budgets in currency per key (``budget_usd``), held before the call and settled to its cost.

A key with ``budget_usd`` has one spend counter per window (:mod:`gateway.quotas.periods`),
in integer nano-dollars, on the token counters' machinery
(:class:`~gateway.quotas.tokens.TokenCounters`): in the process, or in Redis where one
Lua script checks and adds at once, so the budget is exact across workers and instances;
a store outage follows ``RATE_LIMIT_ON_STORAGE_ERROR`` as the token counters do.

Before the call (:func:`hold_call`), after its tokens are held, the call holds the most it
can cost: its prompt's bound at the dearer prompt price plus its completion limit (the
client's ``max_tokens``, or what it holds on the token counters beyond the prompt's
bound, or the key's cap, or 1024) at the output price, with the price of the request's
public model (:meth:`gateway.backends.model.GatewayConfig.price_for`, as its usage row is priced).

- A call that names its own limit holds all of that, or is refused (429
  ``insufficient_quota``, ``Retry-After``: seconds until the window ends).
- A completion, chat or Responses call that names none holds that, or what is left when
  less is left, and is refused only when not even its prompt and
  :data:`~gateway.quotas.policy.MIN_COMPLETION_TOKENS` fit. Its upstream limit is the
  completion that fits in what it holds (the smaller of the token plan's and the
  budget's, set even when the key has no token counters), and what it holds beyond that,
  in tokens and in money, is given back at once.
- A budgeted key's call to a model without a price is refused with 400
  ``model_not_priced``: a budgeted key never makes an unmetered call.

When the call ends, :meth:`CallHold.settle` settles both holds at once: the tokens to the
tokens used, the money to :func:`gateway.usage.cost.cost_of` of the same usage (the
figure its usage row stores), rounded up to a nano-dollar. So the counter is never below
the recorded spend, and never passes the budget unless an upstream reports more than it
was allowed to produce.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway import extensions
from gateway.backends.model import Price
from gateway.errors import BadRequest, InsufficientQuota
from gateway.exchange import current
from gateway.quotas.outage import on_store
from gateway.quotas.periods import Budget, completion_fitting, most_cost, nano, usd
from gateway.quotas.policy import CallerPolicy, TokenPlan, caller_policy
from gateway.quotas.tokens import NO_RESERVATION, CounterLedger, Reservation, TokenCounters
from gateway.upstream.accounting import TokenUsage
from gateway.usage.cost import cost_of

log = logging.getLogger(__name__)

# Counters outlive their window by this much, so a call that ends after it still settles
# on its own window's counter (the counter is never read again once its window is over).
SETTLE_GRACE_SECONDS = 3600
_MOST_NANO = 2**62  # a settled amount never overflows Redis's 64-bit counters


class SpendReservation:
    """Nano-dollars held for one call on its key's spend counter until :meth:`settle`."""

    def __init__(self, backend: TokenCounters, key: str, amount: int, price: Price) -> None:
        self._backend: TokenCounters | None = backend
        self._key = key
        self.amount = amount
        self.price = price

    def _adjust(self, change: int) -> None:
        if change == 0 or self._backend is None:
            return
        try:
            self._backend.adjust([self._key], change)
        except Exception:
            log.warning("could not settle a spend reservation; the counter keeps the estimate")

    def give_back(self, amount: int) -> None:
        """Hold ``amount`` less from now on."""
        self._adjust(-amount)
        self.amount -= amount

    def settle(self, usage: TokenUsage | None) -> None:
        """Replace what is held by the cost of ``usage`` (nothing without usage); twice does nothing."""
        cost = min(nano(cost_of(usage, self.price)), _MOST_NANO) if usage is not None else 0
        self._adjust(cost - self.amount)
        self._backend = None


@dataclass(slots=True)
class CallHold:
    """What one call holds on its key's counters: tokens and, with a budget, money; and the
    completion limit the gateway sets upstream (``None``: the body goes as written)."""

    tokens: Reservation
    spend: SpendReservation | None = None
    upstream_limit: int | None = None

    def settle(self, usage: TokenUsage | None) -> None:
        """Settle both to what the call used (``None``: nothing); settling twice does nothing."""
        self.tokens.settle(usage.total_tokens if usage is not None else 0)
        if self.spend is not None:
            self.spend.settle(usage)


NOTHING_HELD = CallHold(NO_RESERVATION)


class SpendLedger(CounterLedger):
    """The spend counters: Redis when the quota store is Redis, else this process's."""

    def counter_key(self, key_id: str, budget: Budget, start: int) -> str:
        return f"{self.prefix}:spend:{key_id}:{budget.label(start)}"

    def reserve(self, key_id: str, budget: Budget, amount: int, minimum: int, price: Price) -> SpendReservation:
        """Hold ``amount`` nano-dollars, or what is left if that is at least ``minimum``.

        :raises InsufficientQuota: not even ``minimum`` is left (429, ``Retry-After``: until the window ends).
        :raises LimitStorageUnavailable: the store is down and the policy is closed (503).
        """
        now = time.time()
        start, end = budget.window(now)
        key = self.counter_key(key_id, budget, start)
        ttl = math.ceil(end - now) + SETTLE_GRACE_SECONDS
        least = max(1, min(minimum, amount))
        local: TokenCounters = self.local

        def hold(store: TokenCounters) -> int:
            return store.reserve([key], [budget.limit], [ttl], amount, least)

        backend, held = on_store(self._shared, local, self._fail_open, hold)
        if held < 0:
            resets_in = max(1, math.ceil(end - now))
            needed = "prompt plus max_tokens" if least == amount else "prompt plus a minimal answer"
            raise InsufficientQuota(
                f"This key's budget ({budget.usd.normalize():f} USD per {budget.period}) does not leave room for this "
                f"request (at most {usd(least):.9f} USD: {needed}). It resets in {resets_in} s.",
                headers={"Retry-After": str(resets_in)},
            )
        return SpendReservation(backend, key, held, price)

    def status(self, policy: CallerPolicy) -> dict[str, Any] | None:
        """The caller's budget now, for ``GET /api/usage`` (OpenRouter's ``GET /v1/key`` names):
        ``usage`` (spent in this window, held by calls in flight included) and ``limit_remaining``
        are ``null`` when the store does not answer. ``None`` without a budget."""
        budget = policy.budget
        if budget is None:
            return None
        now = time.time()
        start, end = budget.window(now)
        backend: TokenCounters = self._shared or self.local
        try:
            used: int | None = backend.used(self.counter_key(policy.key_id, budget, start))
        except Exception:  # the store is down: say so rather than show this process's count
            used = None
        return {
            "usage": usd(used) if used is not None else None,
            "limit": float(budget.usd),
            "limit_remaining": usd(max(0, budget.limit - used)) if used is not None else None,
            "limit_reset": budget.period,
            "reset": budget.reset,
            "currency": "USD",
            "window_start": datetime.fromtimestamp(start, UTC).isoformat(),
            "resets_at": datetime.fromtimestamp(end, UTC).isoformat(),
            "resets_in": max(1, math.ceil(end - now)),
        }


def _price(model: str | None) -> Price:
    """:raises 400: no price for ``model`` (``model_not_priced``)."""
    price = extensions.backends_config().price_for(model)
    if price is None:
        raise BadRequest(
            f"This key has a budget in USD and the model {model!r} has no price in the gateway's price table, "
            "so its calls could not be counted against it.",
            param="model",
            error_code="model_not_priced",
        )
    return price


def _hold_spend(policy: CallerPolicy, budget: Budget, plan: TokenPlan, price: Price, tokens: Reservation) -> CallHold:
    prompt = plan.prompt_estimate
    completion = (tokens.amount or plan.reserve) - prompt
    amount = most_cost(price, prompt, completion)
    if amount <= 0:  # a free model: nothing to hold
        return CallHold(tokens, None, plan.upstream_limit(tokens.amount))
    least = most_cost(price, prompt, max(0, min(plan.minimum, prompt + completion) - prompt))
    ledger: SpendLedger = extensions.spend_ledger()
    spend = ledger.reserve(policy.key_id, budget, amount, least, price)
    if plan.limit_field is None:  # the client's own limit (held whole), or no text generated
        return CallHold(tokens, spend, None)
    fitting = completion_fitting(price, prompt, spend.amount)
    allowed = completion if fitting is None else min(completion, fitting)
    if allowed < completion and tokens.amount > 0:
        tokens.give_back(completion - allowed)
    spend.give_back(spend.amount - most_cost(price, prompt, allowed))
    return CallHold(tokens, spend, allowed)


def hold_call(plan: TokenPlan) -> CallHold:
    """Hold the call's tokens (:meth:`~gateway.quotas.tokens.TokenLedger.reserve`) and, on a key
    with a budget, its most cost (see the module).

    :raises 400: a budgeted key names a model without a price (``model_not_priced``).
    :raises 429: a token counter or the budget has no room (``insufficient_quota``).
    """
    policy = caller_policy()
    ledger = extensions.token_ledger()
    budget = policy.budget
    if budget is None:
        tokens = ledger.reserve(policy, plan.reserve, plan.minimum)
        limit = plan.upstream_limit(tokens.amount)
        if tokens is NO_RESERVATION and limit is None:  # nothing counted, nothing set: no allocation
            return NOTHING_HELD
        return CallHold(tokens, None, limit)
    price = _price(current().model)
    tokens = ledger.reserve(policy, plan.reserve, plan.minimum)
    try:
        return _hold_spend(policy, budget, plan, price, tokens)
    except BaseException:
        tokens.settle(0)
        raise
