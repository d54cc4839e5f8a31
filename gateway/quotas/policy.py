"""Per-key policy: allowed models, the ``max_tokens`` cap, and which limits apply.

A key's unset fields fall back to the gateway's defaults; the master key has only
the defaults (it is not a way around the limits). The token quotas and budgets a
policy names are counted by :mod:`gateway.quotas.tokens`.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Any

from flask import current_app

from gateway import extensions
from gateway.auth.keys import MASTER_KEY_ID
from gateway.config import Settings
from gateway.errors import BadRequest, Forbidden
from gateway.exchange import current
from gateway.quotas.periods import Budget
from gateway.store.keys import KeyRecord

log = logging.getLogger(__name__)

DEFAULT_COMPLETION_RESERVE = 1024  # completion tokens reserved when neither max_tokens nor a cap is set
# The fewest completion tokens a call without max_tokens is admitted with: with less left
# on a counter, a shorter answer is seldom of use and would still cost the whole prompt.
MIN_COMPLETION_TOKENS = 16
# On an answer whose completion limit the gateway set upstream: that limit.
CLAMPED_HEADER = "X-Gateway-Max-Tokens-Clamped"
# A request's completion limit: completions and chat; chat's newer name; the Responses API's.
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
TOKEN_COUNTERS = ("tokens_per_minute", "tokens_per_day", "budget_tokens_day", "budget_tokens_month")


@dataclass(frozen=True)
class CallerPolicy:
    """What applies to one caller, defaults filled in."""

    key_id: str
    rate_limit_general: str
    rate_limit_ai: str
    allowed_models: tuple[str, ...] | None
    max_tokens_cap: int | None
    token_limits: tuple[tuple[str, int], ...]  # (counter field, limit), set ones only
    budget: Budget | None = None  # the key's budget in USD (gateway.quotas.spend)

    @classmethod
    def build(cls, key_id: str, record: KeyRecord | None, settings: Settings) -> CallerPolicy:
        def pick(name: str) -> Any:
            return getattr(record, name) if record is not None else None

        models = pick("allowed_models")
        usd = pick("budget_usd")
        return cls(
            key_id=key_id,
            rate_limit_general=pick("rate_limit_general") or settings.rate_limit_general,
            rate_limit_ai=pick("rate_limit_ai") or settings.rate_limit_ai,
            allowed_models=tuple(models) if models else None,
            max_tokens_cap=pick("max_tokens_cap"),
            token_limits=tuple((name, pick(name)) for name in TOKEN_COUNTERS if pick(name) is not None),
            budget=None if usd is None else Budget.of(usd, pick("budget_period"), pick("budget_reset"), pick("created_at")),
        )

    def allows_model(self, model: str) -> bool:
        if self.allowed_models is None:
            return True
        return any(model == pattern or fnmatch.fnmatchcase(model, pattern) for pattern in self.allowed_models)


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
            record = extensions.keys().record(key_id)
        policy = CallerPolicy.build(key_id, record, settings)
        exchange.policy = policy
    return policy


@dataclass(frozen=True)
class TokenPlan:
    """What one call holds on its key's token counters, and the completion limit the gateway
    may have to give the upstream.

    ``reserve`` is the prompt estimate plus the completion: the client's ``max_tokens`` (or
    ``max_completion_tokens``), else the key's cap, else :data:`DEFAULT_COMPLETION_RESERVE`.
    ``minimum`` is the least that may be held: all of ``reserve`` when the client named its
    limit, else the prompt estimate plus :data:`MIN_COMPLETION_TOKENS` (or the cap, if smaller).
    ``limit_field`` is set when the gateway limits the completion itself: the client named no
    limit and the operation generates text.
    """

    prompt_estimate: int
    reserve: int
    minimum: int
    limit_field: str | None = None
    cap: int | None = None

    def upstream_limit(self, held: int) -> int | None:
        """The completion limit the gateway sets upstream, having held ``held`` tokens (0: the
        key has no token counters): what was held beyond the prompt's bound, so the answer
        can never use more than was held; without counters the key's cap; ``None``: the body
        goes as the client wrote it."""
        if self.limit_field is None:
            return None
        if held > 0:
            return held - self.prompt_estimate
        return self.cap


def check_request(document: dict[str, Any], prompt_estimate: int, limit_field: str | None = None) -> TokenPlan:
    """Apply the key's model list and ``max_tokens`` cap; return what the call reserves.

    ``limit_field``: the body field that limits the completion of this operation upstream
    (``None``: it generates no text, and nothing is set for it).

    :raises 403: the model is not among the key's allowed models.
    :raises 400: ``max_tokens`` (or another of :data:`MAX_TOKENS_FIELDS`) is above the key's cap, or not a positive integer.
    """
    policy = caller_policy()
    model = document.get("model")
    if policy.allowed_models is not None and not (isinstance(model, str) and policy.allows_model(model)):
        raise Forbidden(
            f"This key may not use the model {model!r}."
            if isinstance(model, str)
            else "This key must name one of its allowed models.",
            error_code="model_not_allowed",
            param="model",
        )
    requested = None
    for name in MAX_TOKENS_FIELDS:
        value = document.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"'{name}' must be a positive integer.", param=name, error_code="invalid_type")
        if policy.max_tokens_cap is not None and value > policy.max_tokens_cap:
            raise BadRequest(
                f"'{name}' is above this key's cap of {policy.max_tokens_cap}.", param=name, error_code="max_tokens_above_cap"
            )
        requested = value if requested is None else max(requested, value)
    if requested is not None:
        reserve = prompt_estimate + requested
        return TokenPlan(prompt_estimate, reserve, reserve)
    completion = policy.max_tokens_cap or DEFAULT_COMPLETION_RESERVE
    if limit_field is None:  # no text generated: only the prompt must fit
        return TokenPlan(prompt_estimate, prompt_estimate + completion, max(1, prompt_estimate))
    minimum = prompt_estimate + min(MIN_COMPLETION_TOKENS, completion)
    return TokenPlan(prompt_estimate, prompt_estimate + completion, minimum, limit_field, policy.max_tokens_cap)
