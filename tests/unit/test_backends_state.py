"""A deployment's state: circuit breaker, Retry-After cooldown, concurrency cap, health figures.

A fake clock moves time; nothing sleeps.
"""

from __future__ import annotations

import threading

import pytest

from gateway.backends.breaker import NO_BREAKER, BreakerPolicy
from gateway.backends.state import FAILURE_KINDS, THROTTLE_COOLDOWN, Attempt, DeploymentState


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


BREAKER = BreakerPolicy(failures=3, failure_ratio=0.5, window=10.0, min_requests=10, cooldown=5.0)


def deployment(clock: Clock, breaker: BreakerPolicy = BREAKER, max_concurrent: int = 0, key: str = "a/m") -> DeploymentState:
    return DeploymentState(
        key, key.split("/")[0], "m", weight=1.0, priority=0, max_concurrent=max_concurrent, breaker=breaker, clock=clock
    )


def started(state: DeploymentState) -> Attempt:
    attempt = state.start()
    assert attempt is not None, f"{state!r} refused a request"
    return attempt


def fail_times(state: DeploymentState, count: int, kind: str = "connect") -> None:
    for _ in range(count):
        started(state).failed(kind)  # type: ignore[arg-type]  # kinds come as plain strings in parametrised tests


def test_a_new_deployment_is_closed_and_available() -> None:
    state = deployment(Clock())
    assert state.circuit == "closed" and state.available() and state.in_flight == 0


def test_consecutive_failures_open_the_circuit_and_an_open_circuit_admits_nothing() -> None:
    clock = Clock()
    state = deployment(clock)
    fail_times(state, 2)
    assert state.circuit == "closed"
    fail_times(state, 1)
    assert state.circuit == "open"
    assert not state.available() and state.start() is None
    clock.now += 4.9
    assert state.start() is None


def test_a_success_resets_the_consecutive_count() -> None:
    state = deployment(Clock())
    for _ in range(3):
        fail_times(state, 2)
        started(state).succeeded(0.1)
    assert state.circuit == "closed"


@pytest.mark.parametrize("kind", sorted(FAILURE_KINDS - {"status_429"}))
def test_every_failure_kind_but_429_counts_against_the_circuit(kind: str) -> None:
    state = deployment(Clock())
    fail_times(state, 3, kind)
    assert state.circuit == "open"


def test_an_unknown_failure_kind_is_a_programming_error() -> None:
    attempt = started(deployment(Clock()))
    with pytest.raises(ValueError, match="status_400"):
        attempt.failed("status_400")  # type: ignore[arg-type]  # the point: not a FailureKind


def test_after_the_cooldown_exactly_one_trial_goes_through() -> None:
    clock = Clock()
    state = deployment(clock)
    fail_times(state, 3)
    clock.now += 5.0
    assert state.circuit == "half_open" and state.available()
    trial = started(state)
    assert trial.trial
    assert [state.start() for _ in range(50)] == [None] * 50
    assert not state.available()
    clock.now += 60.0  # however long the trial takes, it stays the only one
    assert state.start() is None


def test_concurrent_starts_in_half_open_admit_one() -> None:
    clock = Clock()
    state = deployment(clock)
    fail_times(state, 3)
    clock.now += 5.0
    barrier = threading.Barrier(8)
    admitted: list[Attempt] = []

    def race() -> None:
        barrier.wait()
        for _ in range(100):
            attempt = state.start()
            if attempt is not None:
                admitted.append(attempt)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 1 and state.in_flight == 1


def test_a_trial_success_closes_the_circuit_and_starts_the_counts_afresh() -> None:
    clock = Clock()
    state = deployment(clock)
    fail_times(state, 3)
    clock.now += 5.0
    started(state).succeeded(0.2)
    assert state.circuit == "closed"
    assert state.snapshot()["consecutive_failures"] == 0
    fail_times(state, 2)  # the three before the trial are forgotten
    assert state.circuit == "closed" and state.available()


def test_a_trial_success_forgets_the_failure_ratio_too() -> None:
    clock = Clock()
    state = deployment(clock, BreakerPolicy(failures=1000, failure_ratio=0.5, window=10.0, min_requests=4, cooldown=5.0))
    fail_times(state, 4)
    assert state.circuit == "open"
    clock.now += 5.0
    started(state).succeeded(0.1)
    fail_times(state, 1)
    assert state.circuit == "closed"


def test_a_trial_failure_reopens_for_another_full_cooldown() -> None:
    clock = Clock()
    state = deployment(clock)
    fail_times(state, 3)
    clock.now += 5.0
    clock.now += 1.5  # the trial took a while to fail
    started(state).failed("timeout")
    assert state.circuit == "open"
    clock.now += 4.9
    assert state.start() is None
    clock.now += 0.1
    assert started(state).trial


@pytest.mark.parametrize("end", ["released", "status_429"])
def test_a_trial_without_a_verdict_frees_the_slot_for_the_next_trial(end: str) -> None:
    clock = Clock()
    state = deployment(clock)
    fail_times(state, 3)
    clock.now += 5.0
    trial = started(state)
    if end == "released":
        trial.released()
    else:
        trial.failed("status_429", retry_after=0.0)
    assert state.circuit == "half_open"
    assert started(state).trial


def test_requests_in_flight_when_it_opened_neither_extend_the_cooldown_nor_close_it() -> None:
    clock = Clock()
    state = deployment(clock)
    stragglers = [started(state) for _ in range(4)]
    fail_times(state, 3)
    clock.now += 3.0
    stragglers[0].failed("connect")
    stragglers[1].failed("connect")
    clock.now += 2.0  # 5 s after it opened, not after the late failures
    trial = started(state)
    stragglers[2].succeeded(0.1)  # an old success is not the trial's verdict
    assert state.circuit == "half_open" and state.start() is None
    trial.failed("connect")
    stragglers[3].succeeded(0.1)
    assert state.circuit == "open"


def test_requests_from_before_it_opened_do_not_count_once_it_closed_again() -> None:
    clock = Clock()
    state = deployment(clock)
    stragglers = [started(state) for _ in range(3)]
    fail_times(state, 3)
    clock.now += 5.0
    started(state).succeeded(0.1)
    for straggler in stragglers:
        straggler.failed("timeout")
    assert state.circuit == "closed"


def test_the_failure_ratio_opens_the_circuit_only_with_enough_outcomes() -> None:
    clock = Clock()
    ratio_only = BreakerPolicy(failures=1000, failure_ratio=0.5, window=10.0, min_requests=10, cooldown=5.0)
    state = deployment(clock, ratio_only)
    for _ in range(4):
        fail_times(state, 1)
        started(state).succeeded(0.1)
    fail_times(state, 1)
    assert state.circuit == "closed"  # 5 of 9: over the ratio, under min_requests
    fail_times(state, 1)
    assert state.circuit == "open"  # 6 of 10


def test_the_failure_ratio_looks_only_at_the_window() -> None:
    clock = Clock()
    state = deployment(clock, BreakerPolicy(failures=1000, failure_ratio=0.5, window=10.0, min_requests=10, cooldown=5.0))
    fail_times(state, 9)
    clock.now += 11.0  # those nine left the window
    for _ in range(6):
        started(state).succeeded(0.1)
    fail_times(state, 4)
    assert state.circuit == "closed"  # 4 of 10 in the window
    fail_times(state, 2)
    assert state.circuit == "open"  # 6 of 12


def test_a_429_sets_a_cooldown_and_is_not_a_circuit_failure() -> None:
    clock = Clock()
    state = deployment(clock, BreakerPolicy(failures=1, cooldown=5.0))
    started(state).failed("status_429", retry_after=2.0)
    assert state.circuit == "closed"
    assert not state.available() and state.start() is None
    assert state.snapshot()["cooldown_s"] == pytest.approx(2.0)
    clock.now += 1.9
    assert not state.available()
    clock.now += 0.1
    for _ in range(5):
        started(state).failed("status_429", retry_after=0.0)
    assert state.circuit == "closed" and state.available()


def test_a_429_without_retry_after_cools_down_briefly() -> None:
    clock = Clock()
    state = deployment(clock)
    started(state).failed("status_429")
    clock.now += THROTTLE_COOLDOWN - 0.01
    assert not state.available()
    clock.now += 0.01
    assert state.available()


def test_a_shorter_retry_after_does_not_cut_a_longer_cooldown() -> None:
    clock = Clock()
    state = deployment(clock)
    first, second = started(state), started(state)
    first.failed("status_429", retry_after=3.0)
    second.failed("status_429", retry_after=0.5)
    clock.now += 2.0
    assert not state.available()


def test_a_503_with_retry_after_cools_down_and_counts_as_a_failure() -> None:
    clock = Clock()
    state = deployment(clock)
    started(state).failed("status_5xx", retry_after=2.0)
    assert not state.available()
    assert state.snapshot()["consecutive_failures"] == 1


def test_failures_zero_disables_the_breaker() -> None:
    clock = Clock()
    state = deployment(clock, NO_BREAKER)
    for kind in sorted(FAILURE_KINDS - {"status_429"}):
        fail_times(state, 200, kind)
    assert state.circuit == "closed" and state.available()
    assert state.snapshot()["circuit_opened"] == 0
    assert state.snapshot()["error_ratio"] == 1.0  # still reported


def test_max_concurrent_caps_requests_in_flight() -> None:
    state = deployment(Clock(), max_concurrent=2)
    first, second = started(state), started(state)
    assert not state.available() and state.start() is None
    first.succeeded(0.1)
    assert state.available()
    second.released()
    assert state.in_flight == 0


def test_no_cap_when_max_concurrent_is_zero() -> None:
    state = deployment(Clock(), max_concurrent=0)
    attempts = [started(state) for _ in range(1000)]
    assert state.in_flight == 1000 and state.available()
    for attempt in attempts:
        attempt.released()


def test_an_attempt_ends_once() -> None:
    state = deployment(Clock())
    attempt = started(state)
    attempt.failed("connect")
    attempt.released()
    attempt.succeeded(0.1)
    attempt.failed("connect")
    assert attempt.ended and state.in_flight == 0
    assert state.snapshot()["consecutive_failures"] == 1


def test_snapshot_reports_health() -> None:
    clock = Clock()
    state = deployment(clock)
    started(state).succeeded(1.0)
    started(state).succeeded(2.0)
    attempt = started(state)
    clock.now += 0.5
    attempt.succeeded()  # measured since start
    started(state).failed("status_5xx")
    busy = started(state)
    started(state).failed("status_429")
    snapshot = state.snapshot()
    assert snapshot["key"] == "a/m" and snapshot["backend"] == "a" and snapshot["model"] == "m"
    assert snapshot["circuit"] == "closed" and snapshot["in_flight"] == 1
    assert snapshot["error_ratio"] == pytest.approx(1 / 4)
    assert snapshot["throttled"] == 1 and snapshot["recent_outcomes"] == 5
    assert snapshot["latency_s"] == pytest.approx(1.0 + 0.2 * (2.0 - 1.0) + 0.2 * (0.5 - 1.2))
    assert snapshot["cooldown_s"] == pytest.approx(THROTTLE_COOLDOWN)
    busy.released()
    clock.now += 60.0
    assert state.snapshot()["recent_outcomes"] == 0 and state.snapshot()["error_ratio"] == 0.0


@pytest.mark.parametrize(
    "fields",
    [{"failures": -1}, {"failure_ratio": 0.0}, {"failure_ratio": 1.5}, {"window": 0.0}, {"cooldown": -1.0}, {"min_requests": -1}],
)
def test_breaker_policy_rejects_nonsense(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**fields)  # type: ignore[arg-type]  # the values are the point


def test_deployment_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        DeploymentState("a/m", "a", "m", weight=0.0)
    with pytest.raises(ValueError):
        DeploymentState("a/m", "a", "m", max_concurrent=-1)
