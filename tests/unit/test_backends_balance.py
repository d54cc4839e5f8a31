"""Picking a deployment: weights, fewer in flight, priority tiers, tried ones left aside.

Seeded random draws and a fake clock: the statistics are the same on every run.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.backends.balance import pick, start_attempt
from gateway.backends.breaker import BreakerPolicy
from gateway.backends.state import Attempt, DeploymentState

BREAKER = BreakerPolicy(failures=1, cooldown=5.0)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def deployments(clock: Clock, *specs: tuple[str, float, int], max_concurrent: int = 0) -> list[DeploymentState]:
    """(key, weight, priority) each."""
    return [
        DeploymentState(key, key, "m", weight=weight, priority=priority, max_concurrent=max_concurrent, breaker=BREAKER, clock=clock)
        for key, weight, priority in specs
    ]


def occupy(state: DeploymentState, count: int) -> list[Attempt]:
    attempts = [state.start() for _ in range(count)]
    assert None not in attempts
    return [attempt for attempt in attempts if attempt is not None]


def open_circuit(state: DeploymentState) -> None:
    attempt = state.start()
    assert attempt is not None
    attempt.failed("connect")
    assert state.circuit == "open"


def picks(states: list[DeploymentState], count: int, excluded: frozenset[str] = frozenset(), seed: int = 7) -> Counter[str | None]:
    rng = random.Random(seed)
    return Counter(chosen.key if (chosen := pick(states, excluded, rng)) else None for _ in range(count))


def test_weights_are_followed_when_the_load_is_equal() -> None:
    states = deployments(Clock(), ("a", 2.0, 0), ("b", 1.0, 0))
    counts = picks(states, 10_000)
    assert counts["a"] / counts["b"] == pytest.approx(2.0, rel=0.08)


def test_three_weights_are_followed() -> None:
    states = deployments(Clock(), ("a", 3.0, 0), ("b", 2.0, 0), ("c", 1.0, 0))
    counts = picks(states, 12_000)
    for key, share in (("a", 3 / 6), ("b", 2 / 6), ("c", 1 / 6)):
        assert counts[key] / 12_000 == pytest.approx(share, abs=0.02)


def test_fewer_in_flight_wins() -> None:
    states = deployments(Clock(), ("a", 1.0, 0), ("b", 1.0, 0))
    occupy(states[0], 3)
    assert picks(states, 1000) == {"b": 1000}


def test_the_busiest_of_three_is_never_picked() -> None:
    states = deployments(Clock(), ("a", 1.0, 0), ("b", 1.0, 0), ("c", 1.0, 0))
    occupy(states[0], 1)
    occupy(states[2], 2)
    counts = picks(states, 3000)
    assert counts["c"] == 0 and counts["b"] > counts["a"] > 0


def test_in_flight_is_weighed() -> None:
    states = deployments(Clock(), ("big", 4.0, 0), ("small", 1.0, 0))
    occupy(states[0], 2)  # 0.5 per unit of weight
    occupy(states[1], 1)  # 1 per unit
    assert picks(states, 1000) == {"big": 1000}


def test_a_single_candidate_is_picked() -> None:
    (only,) = deployments(Clock(), ("a", 1.0, 0))
    occupy(only, 10)
    assert picks([only], 10) == {"a": 10}


def test_the_fallback_tier_is_used_only_when_the_first_has_none_available() -> None:
    clock = Clock()
    states = deployments(clock, ("primary-1", 1.0, 0), ("primary-2", 1.0, 0), ("fallback", 5.0, 1))
    occupy(states[0], 50)
    occupy(states[1], 50)  # busy, but available: no fallback
    assert picks(states, 1000)["fallback"] == 0
    open_circuit(states[0])
    assert picks(states, 1000)["fallback"] == 0
    open_circuit(states[1])
    assert picks(states, 100) == {"fallback": 100}
    clock.now += 5.0  # half-open: the primaries' trials come first
    assert picks(states, 1)["fallback"] == 0


def test_a_full_tier_falls_back() -> None:
    states = deployments(Clock(), ("primary", 1.0, 0), ("fallback", 1.0, 1), max_concurrent=1)
    occupy(states[0], 1)
    assert picks(states, 10) == {"fallback": 10}


def test_a_cooling_deployment_is_passed_over() -> None:
    clock = Clock()
    states = deployments(clock, ("a", 1.0, 0), ("b", 1.0, 0))
    attempt = states[0].start()
    assert attempt is not None
    attempt.failed("status_429", retry_after=1.0)
    assert picks(states, 100) == {"b": 100}
    clock.now += 1.0
    assert picks(states, 1000)["a"] > 400


def test_an_open_circuit_gets_nothing() -> None:
    states = deployments(Clock(), ("a", 1.0, 0), ("b", 1.0, 0))
    open_circuit(states[0])
    assert picks(states, 1000) == {"b": 1000}
    open_circuit(states[1])
    assert picks(states, 10) == {None: 10}


def test_nothing_to_pick_from() -> None:
    assert pick([], set(), random.Random(1)) is None
    assert start_attempt([], set(), random.Random(1)) is None


def test_tried_deployments_are_avoided() -> None:
    states = deployments(Clock(), ("a", 1.0, 0), ("b", 1.0, 0), ("c", 1.0, 0))
    counts = picks(states, 1000, excluded=frozenset({"a"}))
    assert counts["a"] == 0 and counts["b"] > 400 and counts["c"] > 400


def test_an_untried_fallback_comes_before_a_tried_primary() -> None:
    states = deployments(Clock(), ("primary", 1.0, 0), ("fallback", 1.0, 1))
    assert picks(states, 10, excluded=frozenset({"primary"})) == {"fallback": 10}


def test_when_every_available_one_was_tried_a_tried_one_is_retried() -> None:
    states = deployments(Clock(), ("primary", 1.0, 0), ("fallback", 1.0, 1), ("dead", 1.0, 0))
    open_circuit(states[2])
    assert picks(states, 10, excluded=frozenset({"primary", "fallback"})) == {"primary": 10}


def test_start_attempt_admits_one_trial_among_many_requests() -> None:
    clock = Clock()
    (state,) = deployments(clock, ("a", 1.0, 0))
    open_circuit(state)
    clock.now += 5.0
    rng = random.Random(3)
    attempts = [start_attempt([state], set(), rng) for _ in range(100)]
    admitted = [attempt for attempt in attempts if attempt is not None]
    assert len(admitted) == 1 and admitted[0].trial


def test_start_attempt_picks_again_when_the_pick_was_taken_meanwhile() -> None:
    clock = Clock()
    primaries = deployments(clock, ("primary-1", 1.0, 0), ("primary-2", 1.0, 0))
    (fallback,) = deployments(clock, ("fallback", 1.0, 1))
    for state in primaries:
        open_circuit(state)
    clock.now += 5.0
    taken: list[Attempt | None] = []

    class TakenMeanwhile(random.Random):
        """Other requests take both primaries' trials between the pick and the start."""

        def random(self) -> float:
            if not taken:
                taken.extend(state.start() for state in primaries)
            return super().random()

    attempt = start_attempt([*primaries, fallback], set(), TakenMeanwhile(1))
    assert attempt is not None and attempt.state is fallback
    assert all(other is not None and other.trial for other in taken)


def test_start_attempt_counts_in_flight() -> None:
    states = deployments(Clock(), ("a", 1.0, 0), ("b", 1.0, 0))
    rng = random.Random(5)
    attempts = [start_attempt(states, set(), rng) for _ in range(100)]
    assert [state.in_flight for state in states] == [50, 50]  # fewer in flight wins, so they alternate
    for attempt in attempts:
        assert attempt is not None
        attempt.succeeded(0.1)
    assert [state.in_flight for state in states] == [0, 0]
