"""Retry budget, backoff with full jitter, and reading Retry-After / retry-after-ms."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway.backends.backoff import backoff, retry_after_seconds
from gateway.backends.budget import RetryBudget


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the retry budget --------------------------------------------------------------------


def simulate_outage(budget: RetryBudget, clock: Clock, seconds: float, rate: float, attempts: int) -> list[tuple[float, str]]:
    """Every attempt fails; each request retries while the budget allows. The log: (time, "request" | "retry")."""
    log: list[tuple[float, str]] = []
    start = clock.now
    step = 1 / rate
    rng = random.Random(11)
    while clock.now < start + seconds:
        budget.note_request()
        log.append((clock.now, "request"))
        for _ in range(attempts - 1):
            clock.now += rng.uniform(0, step / 4)  # the retry comes a little later
            if not budget.try_retry():
                break
            log.append((clock.now, "retry"))
        clock.now += rng.uniform(0, 2 * step)
    return log


@pytest.mark.parametrize(("ratio", "min_retries", "rate"), [(0.2, 3, 50.0), (0.2, 3, 2.0), (0.5, 0, 20.0), (0.0, 2, 30.0)])
def test_the_budget_bound_holds_over_the_window_ending_at_every_retry_of_a_total_outage(
    ratio: float, min_retries: int, rate: float
) -> None:
    clock = Clock()
    window, buckets = 10.0, 10
    budget = RetryBudget(ratio=ratio, window=window, min_retries=min_retries, clock=clock, buckets=buckets)
    log = simulate_outage(budget, clock, seconds=60.0, rate=rate, attempts=3)
    width = window / buckets
    retried = 0
    for index, (at, what) in enumerate(log):
        if what != "retry":
            continue
        begin = (int(at // width) - buckets + 1) * width  # the window the budget looks at: its slices up to now
        so_far = [w for t, w in log[: index + 1] if t >= begin]
        requests, retries = so_far.count("request"), so_far.count("retry")
        assert retries <= ratio * requests + min_retries, f"window ending {at}: {retries} retries for {requests} requests"
        retried = max(retried, retries)
    assert retried > 0 and budget.exhausted > 0
    total_requests = sum(1 for _, what in log if what == "request")
    total_retries = sum(1 for _, what in log if what == "retry")
    assert total_retries <= total_requests * ratio + min_retries * (60 / window + 1)


def test_without_failures_a_request_spends_nothing() -> None:
    budget = RetryBudget(ratio=0.2, window=10.0, min_retries=0, clock=Clock())
    for _ in range(100):
        budget.note_request()
    assert budget.snapshot() == {"requests": 100, "retries": 0, "exhausted": 0}


def test_min_retries_lets_a_trickle_retry() -> None:
    budget = RetryBudget(ratio=0.2, window=10.0, min_retries=3, clock=Clock())
    budget.note_request()
    assert [budget.try_retry() for _ in range(5)] == [True, True, True, False, False]
    assert budget.exhausted == 2


def test_the_ratio_grows_the_budget_with_traffic() -> None:
    budget = RetryBudget(ratio=0.2, window=10.0, min_retries=0, clock=Clock())
    for _ in range(50):
        budget.note_request()
    assert sum(budget.try_retry() for _ in range(20)) == 10


def test_the_budget_refills_as_the_window_slides() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.0, window=10.0, min_retries=2, clock=clock)
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]
    clock.now += 5.0
    assert not budget.try_retry()
    clock.now += 5.0
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]


def test_a_burst_of_failures_as_a_slice_begins_draws_on_the_whole_window() -> None:
    # A backend dies just after a slice began: its requests in flight all fail at once.
    # The requests of the window's earlier slices pay for their retries (with a check of
    # the slice under way alone, only min_retries would fit and clients would see errors).
    clock = Clock()
    budget = RetryBudget(ratio=0.2, window=10.0, min_retries=3, clock=clock)
    for _ in range(100):
        clock.now += 0.05
        budget.note_request()
    clock.now = 1006.001  # a new slice (1 s wide) has just begun
    budget.note_request()
    assert sum(budget.try_retry() for _ in range(30)) == 23  # 0.2 * 101 + 3
    assert budget.exhausted == 7


@pytest.mark.parametrize("fields", [{"ratio": -0.1}, {"min_retries": -1}, {"window": 0.0}])
def test_budget_rejects_nonsense(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryBudget(**fields)  # type: ignore[arg-type]  # the values are the point


# --- backoff -------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "ceiling"), [(0, 0.1), (1, 0.2), (2, 0.4), (4, 1.6), (5, 2.0), (30, 2.0), (10_000, 2.0)])
def test_backoff_is_full_jitter_under_the_cap(attempt: int, ceiling: float) -> None:
    rng = random.Random(attempt)
    draws = [backoff(attempt, base=0.1, cap=2.0, rng=rng) for _ in range(2000)]
    assert all(0.0 <= draw <= ceiling for draw in draws)
    assert max(draws) > 0.95 * ceiling and min(draws) < 0.05 * ceiling
    assert sum(draws) / len(draws) == pytest.approx(ceiling / 2, rel=0.1)


def test_backoff_of_nothing() -> None:
    assert backoff(3, base=0.0, cap=2.0, rng=random.Random(1)) == 0.0
    assert backoff(3, base=0.1, cap=0.0, rng=random.Random(1)) == 0.0
    with pytest.raises(ValueError):
        backoff(-1, base=0.1, cap=2.0, rng=random.Random(1))


# --- Retry-After ---------------------------------------------------------------------------

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "20.5"}, 0.0205),
        ({"Retry-After-Ms": "0"}, 0.0),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": " 7 "}, 7.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "3", "retry-after-ms": "2500"}, 2.5),  # the finer one wins
        ({"Retry-After": "3", "retry-after-ms": "soon"}, 3.0),  # a bad one is ignored
        ({"Retry-After": "Sun, 30 Nov 2026 12:00:42 GMT"}, 42.0),
        ({"Retry-After": "Sunday, 30-Nov-26 12:00:42 GMT"}, 42.0),  # RFC 850, still allowed
        ({"Retry-After": "Sun Nov 30 12:00:42 2026"}, 42.0),  # asctime
        ({"Retry-After": "Sun, 30 Nov 2026 11:00:00 GMT"}, 0.0),  # past: now
    ],
)
def test_retry_after_is_read(headers: dict[str, str], seconds: float) -> None:
    assert retry_after_seconds(headers, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/json"},
        {"Retry-After": ""},
        {"Retry-After": "soon"},
        {"Retry-After": "-5"},
        {"Retry-After": "1e3"},
        {"Retry-After": "nan"},
        {"Retry-After": "inf"},
        {"Retry-After": "3 seconds"},
        {"Retry-After": "Sun, 31 Nov 2026 12:00:00 GMT"},
        {"Retry-After": "Sun, 30 Nov 99999 12:00:00 GMT"},
        {"retry-after-ms": "-100"},
        {"retry-after-ms": "1_000"},
    ],
)
def test_garbage_and_negatives_are_no_hint(headers: dict[str, str]) -> None:
    assert retry_after_seconds(headers, now=NOW) is None


def test_an_http_date_is_measured_from_the_wall_clock() -> None:
    in_a_minute = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 60, UTC)
    waited = retry_after_seconds({"Retry-After": format_datetime(in_a_minute, usegmt=True)})
    assert waited is not None and 55 <= waited <= 61
