"""A deployment's circuit breaker: closed, open, half-open. Pure code, no lock, no clock of its own.

=============  ==============================================================================
``closed``     Traffic flows. It opens after ``failures`` failures in a row, or when the
               failures over the last ``window`` seconds are at least ``failure_ratio`` of
               the outcomes, once there were at least ``min_requests`` outcomes.
``open``       No traffic for ``cooldown`` seconds.
``half_open``  Once the cooldown has passed: exactly one trial request at a time. Its
               success closes the circuit (the counts start afresh); its failure opens it
               for another cooldown; an outcome that says nothing about the backend's
               health (a 429, a request the client abandoned) frees the trial for the next one.
=============  ==============================================================================

``failures == 0`` disables the breaker: always closed, nothing counted. That is the
one-backend default without a config file, so it behaves exactly as before.

Only outcomes of requests admitted under the current state count (:attr:`Circuit.generation`):
the requests still in flight to a backend when its circuit opened fail later, and must
neither extend the cooldown nor close the circuit in the trial's place.

The owner (:class:`~gateway.backends.state.DeploymentState`) holds the lock and passes
the time in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.backends.window import SlidingCounts

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

_OK, _FAILED = 0, 1  # SlidingCounts fields


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a deployment's circuit opens and for how long (seconds); see the module."""

    failures: int = 0  # consecutive failures that open it; 0 disables the breaker
    failure_ratio: float = 0.5
    window: float = 10.0
    min_requests: int = 10
    cooldown: float = 5.0

    def __post_init__(self) -> None:
        if self.failures < 0 or self.min_requests < 0:
            raise ValueError("failures and min_requests must be >= 0")
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if self.window <= 0 or self.cooldown < 0:
            raise ValueError("window must be > 0 and cooldown >= 0")

    @property
    def enabled(self) -> bool:
        return self.failures > 0


NO_BREAKER: Final = BreakerPolicy()


class Circuit:
    """One deployment's circuit state machine (see the module)."""

    __slots__ = ("policy", "generation", "opened", "_opened_at", "_trial_out", "_consecutive", "_outcomes")

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.generation = 0  # moves on every change of state; see admit()
        self.opened = 0  # how many times it opened, for a counter
        self._opened_at: float | None = None  # None: closed
        self._trial_out = False
        self._consecutive = 0
        self._outcomes = SlidingCounts(policy.window, fields=2)

    def state(self, now: float) -> str:
        if self._opened_at is None:
            return CLOSED
        return OPEN if now - self._opened_at < self.policy.cooldown else HALF_OPEN

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    def admits(self, now: float) -> bool:
        """Whether a request may go now (closed, or half-open with the trial free). Changes nothing."""
        if self._opened_at is None:
            return True
        return now - self._opened_at >= self.policy.cooldown and not self._trial_out

    def admit(self, now: float) -> tuple[int, bool] | None:
        """Let one request through: ``(generation, is_trial)`` to hand back with its outcome,
        or ``None`` when refused. In half-open, the one request let through is the trial."""
        if self._opened_at is None:
            return self.generation, False
        if now - self._opened_at < self.policy.cooldown or self._trial_out:
            return None
        self._trial_out = True
        return self.generation, True

    def success(self, now: float, generation: int, trial: bool) -> None:
        if not self.policy.enabled or generation != self.generation:
            return
        if trial:
            self._close()
        elif self._opened_at is None:
            self._consecutive = 0
            self._outcomes.add(now, _OK)

    def failure(self, now: float, generation: int, trial: bool) -> None:
        if not self.policy.enabled or generation != self.generation:
            return
        if trial:
            self._open(now)
            return
        if self._opened_at is not None:
            return
        self._consecutive += 1
        self._outcomes.add(now, _FAILED)
        ok, failed = self._outcomes.totals(now)
        policy = self.policy
        seen = ok + failed
        if self._consecutive >= policy.failures or (seen >= max(1, policy.min_requests) and failed >= policy.failure_ratio * seen):
            self._open(now)

    def neutral(self, generation: int, trial: bool) -> None:
        """An outcome that says nothing about health: a trial's slot is free again."""
        if trial and generation == self.generation:
            self._trial_out = False

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._trial_out = False
        self.generation += 1
        self.opened += 1

    def _close(self) -> None:
        self._opened_at = None
        self._trial_out = False
        self._consecutive = 0
        self._outcomes.clear()
        self.generation += 1
