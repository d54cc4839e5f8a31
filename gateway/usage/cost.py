"""What a usage row costs, in USD: the config file's price table applied when the row is made.

One formula, per million tokens, with the price of the request's public model name
(:meth:`gateway.backends.model.GatewayConfig.price_for`: exact name, then globs in file order)::

    cost_usd = ((prompt_tokens - cached_tokens) * input
                + cached_tokens * cached_input
                + completion_tokens * output) / 1,000,000

``cached_tokens`` are part of ``prompt_tokens`` and ``reasoning_tokens`` part of
``completion_tokens`` (OpenAI's accounting, :mod:`gateway.upstream.accounting`), so
every token is priced exactly once: reasoning tokens at the output price, within
``completion_tokens``. The sum is exact (decimals) and rounded half-even to
:data:`~gateway.store.tables.COST_SCALE` decimal places.

- The price is the one in force when the row is made; it is stored with the row, so a
  later price change never rewrites history.
- Estimated usage (the upstream reported nothing) is priced the same way.
- No usage at all (a request refused or failed before an answer): cost ``None``.
- A model without a price: cost ``None``, never a made-up one. When the file has a price
  table, the first such row of each model (that used tokens) is logged as a WARNING,
  once per process, for at most :data:`MAX_WARNED_MODELS` names (model names come from
  clients). Without a price table every cost is ``None`` and nothing is logged.
- A cost too large for the column (absurd token counts) is ``None``, logged the same way.
"""

from __future__ import annotations

import logging
import threading
from decimal import ROUND_HALF_EVEN, Decimal

from gateway.backends.model import PER_TOKENS, GatewayConfig, Price
from gateway.payload import storable_text
from gateway.store.tables import COST_PRECISION, COST_SCALE
from gateway.upstream.accounting import TokenUsage

log = logging.getLogger(__name__)

MAX_WARNED_MODELS = 100
_QUANTUM = Decimal(1).scaleb(-COST_SCALE)
_LIMIT = Decimal(10) ** (COST_PRECISION - COST_SCALE)


def cost_of(usage: TokenUsage, price: Price) -> Decimal:
    """The exact cost of ``usage`` at ``price`` (see the module's formula), rounded to the column's scale."""
    cached = min(max(usage.cached_tokens, 0), usage.prompt_tokens)
    total = (usage.prompt_tokens - cached) * price.input + cached * price.cached_input + usage.completion_tokens * price.output
    return (total / PER_TOKENS).quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)


class Pricer:
    """Costs rows with one configuration's price table (one per app: a new file comes with new workers)."""

    def __init__(self, config: GatewayConfig, *, warn: bool = True) -> None:
        self.config = config
        self.warn = warn  # log a model without a price (once per model); off for a second pricer
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def cost(self, model: str | None, usage: TokenUsage | None) -> Decimal | None:
        """A row's ``cost_usd``: ``None`` without usage, without a price table, or without a price for ``model``."""
        if usage is None or not self.config.prices:
            return None
        price = self.config.price_for(model)
        if price is None:
            if usage.prompt_tokens or usage.completion_tokens:
                self._warn(model, "has no price in the config file's prices: its usage rows have no cost")
            return None
        cost = cost_of(usage, price)
        if not -_LIMIT < cost < _LIMIT:
            self._warn(model, "used more tokens than a cost can record: the row has no cost")
            return None
        return cost

    def _warn(self, model: str | None, what: str) -> None:
        if not self.warn:
            return
        name = storable_text(model[:200]) if model else ""
        with self._lock:
            if name in self._warned or len(self._warned) > MAX_WARNED_MODELS:
                return
            self._warned.add(name)
            full = len(self._warned) > MAX_WARNED_MODELS
        if full:  # one last line, then silence: model names come from clients
            log.warning("more models have no price or cost; not logged (at most %d per process)", MAX_WARNED_MODELS)
            return
        shown = repr(name) if name else "(none named)"
        log.warning("model %s %s", shown, what, extra={"fields": {"model": name or None}})
