"""Budgets in currency: their windows and what a call may cost. Pure code: no Flask, no I/O.

A key's ``budget_usd`` applies per window of its ``budget_period``, in one of two kinds
(``budget_reset``):

==========  ==========================================  ===============================
period      ``calendar`` (UTC)                          ``rolling`` (from ``created_at``)
==========  ==========================================  ===============================
``day``     00:00 to 00:00                              1 day
``week``    Monday 00:00 to Monday 00:00                7 days
``month``   the 1st 00:00 to the next 1st 00:00         30 days
==========  ==========================================  ===============================

A rolling window starts at the key's creation and every whole length after it: a key
made on the 3rd at 14:05 with a rolling week spends from the 3rd 14:05 to the 10th 14:05,
then from the 10th 14:05, and so on. Windows are half-open: at the boundary instant the
new window has begun.

Amounts are counted in integer nano-dollars (:data:`NANO_PER_USD`), rounded up, so a sum
of counted amounts is never below the sum of the exact costs. Prices are per million
tokens (:class:`gateway.backends.model.Price`); what a call may cost at most
(:func:`most_cost`) prices every prompt token at the dearer of ``input`` and
``cached_input`` (which tokens the upstream's cache will serve is not known before).
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from gateway.backends.model import PER_TOKENS, Price

NANO_PER_USD = 10**9
_NANO_PER_PRICE_UNIT = NANO_PER_USD // PER_TOKENS  # nano-dollars per token at a price of 1 USD per million
DAY_SECONDS = 86400
ROLLING_DAYS = {"day": 1, "week": 7, "month": 30}
DEFAULT_PERIOD = "month"
DEFAULT_RESET = "calendar"
# 1970-01-01 was a Thursday: days since the epoch plus this, modulo 7, is the weekday (Monday 0).
_EPOCH_WEEKDAY = 3


@dataclass(frozen=True, slots=True)
class Budget:
    """A key's budget in currency: the amount per window, the window's period and kind."""

    usd: Decimal
    period: str = DEFAULT_PERIOD  # day, week, month
    reset: str = DEFAULT_RESET  # calendar, rolling
    anchor: int = 0  # rolling windows start here: the key's created_at, epoch seconds

    @classmethod
    def of(cls, usd: Decimal, period: str | None, reset: str | None, created_at: datetime) -> Budget:
        """A key's budget, its unset period and reset kind at their defaults."""
        return cls(usd, period or DEFAULT_PERIOD, reset or DEFAULT_RESET, math.floor(created_at.timestamp()))

    @property
    def limit(self) -> int:
        """The amount in nano-dollars."""
        return int(self.usd * NANO_PER_USD)

    def window(self, now: float) -> tuple[int, int]:
        """The window holding ``now``: its start and end, epoch seconds (the end excluded)."""
        if self.reset == "rolling":
            length = ROLLING_DAYS[self.period] * DAY_SECONDS
            start = self.anchor + math.floor((now - self.anchor) / length) * length
            return start, start + length
        days = math.floor(now / DAY_SECONDS)
        if self.period == "day":
            return days * DAY_SECONDS, (days + 1) * DAY_SECONDS
        if self.period == "week":
            monday = days - (days + _EPOCH_WEEKDAY) % 7
            return monday * DAY_SECONDS, (monday + 7) * DAY_SECONDS
        moment = datetime.fromtimestamp(now, UTC)
        year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        return calendar.timegm((moment.year, moment.month, 1, 0, 0, 0)), calendar.timegm((year, month, 1, 0, 0, 0))

    def label(self, start: int) -> str:
        """The window's name in counter keys: a changed period or kind starts a new counter."""
        return f"{self.period}-{self.reset}-{start}"


def most_cost(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """The most a call of this prompt bound and completion limit can cost, in nano-dollars (rounded up)."""
    units = prompt_tokens * max(price.input, price.cached_input) + completion_tokens * price.output
    return math.ceil(units * _NANO_PER_PRICE_UNIT)


def completion_fitting(price: Price, prompt_tokens: int, amount: int) -> int | None:
    """The most completion tokens that fit in ``amount`` nano-dollars beside the prompt
    (:func:`most_cost` of the two never above ``amount``); ``None`` when output is free."""
    if price.output <= 0:
        return None
    room = Decimal(amount) / _NANO_PER_PRICE_UNIT - prompt_tokens * max(price.input, price.cached_input)
    fitting = max(0, math.floor(room / price.output))
    while fitting > 0 and most_cost(price, prompt_tokens, fitting) > amount:  # a quotient rounded up to a whole number
        fitting -= 1
    return fitting


def nano(cost: Decimal) -> int:
    """A cost in USD as counted: nano-dollars, rounded up."""
    return math.ceil(cost * NANO_PER_USD)


def usd(amount: int) -> float:
    """Nano-dollars as a JSON number of dollars."""
    return float(Decimal(amount) / NANO_PER_USD)
