"""Budget windows (calendar and rolling, at their boundaries) and the money arithmetic of a hold."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from gateway.backends.model import Price
from gateway.errors import InsufficientQuota, LimitStorageUnavailable
from gateway.quotas.periods import Budget, completion_fitting, most_cost, nano, usd
from gateway.quotas.policy import CallerPolicy
from gateway.quotas.spend import SpendLedger
from gateway.upstream.accounting import TokenUsage
from gateway.usage.cost import cost_of


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _window(budget: Budget, moment: str) -> tuple[datetime, datetime]:
    start, end = budget.window(_at(moment).timestamp())
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)


CREATED = _at("2026-11-03T14:05:09.750")


@pytest.mark.parametrize(
    ("period", "moment", "start", "end"),
    [
        ("day", "2026-11-27T00:00:00", "2026-11-27T00:00:00", "2026-11-28T00:00:00"),  # the boundary opens the new day
        ("day", "2026-11-27T23:59:59.999", "2026-11-27T00:00:00", "2026-11-28T00:00:00"),
        ("day", "2026-12-31T12:00:00", "2026-12-31T00:00:00", "2027-01-01T00:00:00"),
        # 2026-11-30 is a Monday.
        ("week", "2026-11-30T00:00:00", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),
        ("week", "2026-11-29T23:59:59", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),  # Sunday night
        ("week", "2026-12-03T10:00:00", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),
        ("week", "1970-01-01T00:00:00", "1969-12-29T00:00:00", "1970-01-05T00:00:00"),  # the epoch was a Thursday
        ("month", "2026-11-30T23:59:59", "2026-11-01T00:00:00", "2026-12-01T00:00:00"),
        ("month", "2026-12-01T00:00:00", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("month", "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),  # across the year
        ("month", "2028-02-29T12:00:00", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),  # a leap February
    ],
)
def test_calendar_windows_are_utc_days_weeks_from_monday_and_months_from_the_first(period, moment, start, end) -> None:
    budget = Budget.of(Decimal(1), period, "calendar", CREATED)
    assert _window(budget, moment) == (_at(start), _at(end))
    assert _at(start).weekday() == 0 or period != "week"


@pytest.mark.parametrize(("period", "days"), [("day", 1), ("week", 7), ("month", 30)])
def test_rolling_windows_start_at_the_keys_creation_and_last_1_7_or_30_days(period, days) -> None:
    budget = Budget.of(Decimal(1), period, "rolling", CREATED)
    anchor = CREATED.replace(microsecond=0)  # whole seconds
    length = timedelta(days=days)
    assert _window(budget, anchor.isoformat()[:19]) == (anchor, anchor + length)  # opened at creation
    just_before = (anchor + length - timedelta(microseconds=1)).isoformat()[:26]
    assert _window(budget, just_before) == (anchor, anchor + length)
    assert _window(budget, (anchor + length).isoformat()[:19]) == (anchor + length, anchor + 2 * length)  # the boundary
    later = anchor + 5 * length + timedelta(hours=3)
    assert _window(budget, later.isoformat()[:19]) == (anchor + 5 * length, anchor + 6 * length)
    # A clock behind the creation time still finds a whole window.
    assert _window(budget, (anchor - timedelta(seconds=1)).isoformat()[:19]) == (anchor - length, anchor)


def test_the_defaults_are_a_calendar_month() -> None:
    budget = Budget.of(Decimal("0.01"), None, None, CREATED)
    assert (budget.period, budget.reset, budget.limit) == ("month", "calendar", 10_000_000)
    assert budget.label(1) != Budget.of(Decimal("0.01"), "month", "rolling", CREATED).label(1)  # a changed kind: a new counter


PRICE = Price("m", input=Decimal("2.5"), cached_input=Decimal("1.25"), output=Decimal(10))


def test_most_cost_prices_the_prompt_at_the_dearer_input_and_rounds_up() -> None:
    # 10 x 2.5 + 20 x 10 = 225 USD per million tokens = 225,000 nano-dollars
    assert most_cost(PRICE, 10, 20) == 225_000
    dear_cache = Price("m", input=Decimal(1), cached_input=Decimal(3), output=Decimal(0))
    assert most_cost(dear_cache, 10, 1000) == 30_000
    odd = Price("m", input=Decimal("0.0001"), cached_input=Decimal("0.0001"), output=Decimal("0.0003"))
    assert most_cost(odd, 1, 1) == 1  # 0.4 nano-dollars, rounded up


def test_completion_fitting_is_the_most_that_fits_beside_the_prompt() -> None:
    assert completion_fitting(PRICE, 10, 225_000) == 20
    assert completion_fitting(PRICE, 10, 224_999) == 19
    assert completion_fitting(PRICE, 10, 20_000) == 0  # not even the prompt
    for amount in range(25_000, 60_000, 777):
        fitting = completion_fitting(PRICE, 10, amount)
        assert fitting is not None and most_cost(PRICE, 10, fitting) <= amount < most_cost(PRICE, 10, fitting + 1)
    assert completion_fitting(Price("m", Decimal(1), Decimal(1), Decimal(0)), 10, 5) is None  # free output


def test_a_settled_cost_is_never_below_the_recorded_one() -> None:
    usage = TokenUsage(prompt_tokens=9, completion_tokens=6, total_tokens=15, cached_tokens=4)
    cost = cost_of(usage, PRICE)  # what the usage row stores
    assert cost == Decimal("0.0000775")
    assert nano(cost) == 77_500 and nano(Decimal("0.0000000001")) == 1 and usd(77_500) == 0.0000775


def _policy(budget: Budget) -> CallerPolicy:
    return CallerPolicy("key_x", "1 per minute", "1 per minute", None, None, (), budget)


@pytest.mark.parametrize(
    ("period", "reset", "start", "boundary"),
    [
        ("day", "calendar", "2026-11-27T23:59:58", "2026-11-28T00:00:00"),
        ("week", "calendar", "2026-11-29T23:59:58", "2026-11-30T00:00:00"),
        ("month", "calendar", "2026-11-30T23:59:58", "2026-12-01T00:00:00"),
        ("day", "rolling", "2026-11-04T14:05:07", "2026-11-04T14:05:09"),
        ("week", "rolling", "2026-11-10T14:05:07", "2026-11-10T14:05:09"),
        ("month", "rolling", "2026-12-03T14:05:07", "2026-12-03T14:05:09"),
    ],
)
def test_a_spent_budget_starts_again_at_its_boundary(period, reset, start, boundary) -> None:
    budget = Budget.of(Decimal("0.01"), period, reset, CREATED)
    ledger = SpendLedger("p", None, fail_open=True)
    with time_machine.travel(_at(start), tick=False) as traveller:
        held = ledger.reserve("key_x", budget, 10_000_000, 1, PRICE)
        assert held.amount == budget.limit
        status = ledger.status(_policy(budget))
        assert status is not None and status["limit_remaining"] == 0.0 and status["usage"] == 0.01
        assert status["resets_at"] == _at(boundary).isoformat() and status["resets_in"] == 2
        with pytest.raises(InsufficientQuota) as refused:
            ledger.reserve("key_x", budget, 1, 1, PRICE)
        assert refused.value.extra_headers == {"Retry-After": "2"}
        traveller.shift(1)
        with pytest.raises(InsufficientQuota):
            ledger.reserve("key_x", budget, 1, 1, PRICE)
        traveller.shift(1)  # the boundary instant
        assert ledger.reserve("key_x", budget, 4_000_000, 1, PRICE).amount == 4_000_000
        status = ledger.status(_policy(budget))
        assert status is not None and status["usage"] == 0.004 and status["limit_remaining"] == 0.006
        assert status["window_start"] == _at(boundary).isoformat()


class _Down:
    """A shared store that does not answer."""

    def reserve(self, *args: object) -> int:
        raise ConnectionError("down")

    def adjust(self, *args: object) -> None:
        raise ConnectionError("down")

    def used(self, key: str) -> int:
        raise ConnectionError("down")


def test_a_store_outage_follows_the_quota_stores_policy() -> None:
    budget = Budget.of(Decimal("0.01"), None, None, CREATED)
    closed = SpendLedger("p", _Down(), fail_open=False)  # type: ignore[arg-type]
    with pytest.raises(LimitStorageUnavailable):
        closed.reserve("key_x", budget, 5_000_000, 1, PRICE)
    status = closed.status(_policy(budget))
    assert status is not None and status["usage"] is None and status["limit_remaining"] is None and status["limit"] == 0.01
    opened = SpendLedger("p", _Down(), fail_open=True)  # type: ignore[arg-type]
    held = opened.reserve("key_x", budget, 6_000_000, 1, PRICE)  # counted in the process
    assert held.amount == 6_000_000 and opened.reserve("key_x", budget, 6_000_000, 1, PRICE).amount == 4_000_000
    held.settle(TokenUsage(prompt_tokens=9, completion_tokens=6, total_tokens=15))  # settled where it was held
    assert (
        opened.local.used(opened.counter_key("key_x", budget, budget.window(time.time())[0])) == 4_000_000 + 82_500
    )  # 9 x 2.5 + 6 x 10 per million
