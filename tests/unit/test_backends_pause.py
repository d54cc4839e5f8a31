"""A deployment's Retry-After pause, as the dispatcher asks about it (waits only pauses out)."""

from __future__ import annotations

import pytest

from gateway.backends.breaker import NO_BREAKER, BreakerPolicy
from tests.unit.test_backends_state import Clock, deployment, started


def test_paused_for_tells_how_long_a_retry_after_pause_lasts_and_nothing_else() -> None:
    clock = Clock()
    state = deployment(clock)
    assert state.paused_for() is None  # not paused
    started(state).failed("status_429", retry_after=2.0)
    assert state.paused_for() == pytest.approx(2.0)
    clock.now += 1.5
    assert state.paused_for() == pytest.approx(0.5)
    clock.now += 0.5
    assert state.paused_for() is None and state.available()


def test_paused_for_is_none_while_the_circuit_is_open() -> None:
    clock = Clock()
    state = deployment(clock, breaker=BreakerPolicy(failures=1, cooldown=5.0))
    started(state).failed("status_5xx", retry_after=1.0)  # a 503 with Retry-After: paused and open
    assert state.circuit == "open"
    assert state.paused_for() is None
    assert state.breaker_enabled and not deployment(clock, breaker=NO_BREAKER).breaker_enabled
