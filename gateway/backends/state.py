"""One deployment's live state in this worker process: in flight, circuit, cooldown, health figures.

A deployment (a backend serving one model under one route) is *available* when

- its circuit admits a request (:mod:`gateway.backends.breaker`: closed, or half-open
  with the one trial slot free);
- it is not inside a ``Retry-After`` cooldown;
- fewer than ``max_concurrent`` requests are in flight to it (``0``: no cap).

:meth:`DeploymentState.available` only looks (cheap, no lock: the balancer asks it of every
deployment); :meth:`DeploymentState.start` decides under the lock and returns an
:class:`Attempt`, or ``None`` when the deployment stopped being available meanwhile (two
requests racing for one half-open trial: one gets it). Every attempt ends exactly once,
with one of:

==========================  ==========================================================
``succeeded(latency_s)``    the backend answered (a client-caused 4xx other than 408 and
                            429 is a success too: the backend is healthy).
``failed(kind, after)``     ``kind`` in :data:`FAILURE_KINDS`. ``status_429`` puts the
                            deployment in a cooldown of ``after`` seconds
                            (:data:`THROTTLE_COOLDOWN` when the answer gave none) and is
                            *not* a circuit failure: the backend is alive, only busy.
                            Every other kind counts against the circuit; when one carries
                            a ``Retry-After`` (a 503, say) it sets the cooldown as well.
                            Callers cap ``after`` (``retry_after_max``).
``released()``              no outcome (the client went away before the answer): the
                            in-flight slot and a half-open trial are freed, nothing counted.
==========================  ==========================================================

Later calls on an ended attempt do nothing, so ``finally: attempt.released()`` is safe.
One :class:`threading.Lock` per deployment (a gevent lock once monkey-patched).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, Literal, get_args

from gateway.backends.breaker import NO_BREAKER, BreakerPolicy, Circuit
from gateway.backends.window import SlidingCounts

FailureKind = Literal["connect", "timeout", "status_5xx", "status_429", "status_408", "broke_off"]
FAILURE_KINDS: Final[frozenset[str]] = frozenset(get_args(FailureKind))

THROTTLE_COOLDOWN: Final = 1.0  # seconds a 429 without a usable Retry-After keeps a deployment aside
LATENCY_WEIGHT: Final = 0.2  # weight of the newest sample in the latency's moving average

_OK, _FAILED, _THROTTLED = 0, 1, 2  # fields of the health window


class DeploymentState:
    """One deployment's state (see the module). ``key`` is unique within a route, e.g. ``"backend/model"``."""

    __slots__ = (
        "key",
        "backend",
        "model",
        "weight",
        "priority",
        "max_concurrent",
        "clock",
        "_lock",
        "_in_flight",
        "_cooldown_until",
        "_circuit",
        "_health",
        "_latency",
    )

    def __init__(
        self,
        key: str,
        backend: str,
        model: str | None,
        weight: float = 1.0,
        priority: int = 0,
        max_concurrent: int = 0,
        breaker: BreakerPolicy = NO_BREAKER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if weight <= 0 or priority < 0 or max_concurrent < 0:
            raise ValueError("weight must be > 0, priority and max_concurrent >= 0")
        self.key = key
        self.backend = backend
        self.model = model
        self.weight = weight
        self.priority = priority
        self.max_concurrent = max_concurrent
        self.clock = clock  # monotonic seconds; tests pass a fake one
        self._lock = threading.Lock()
        self._in_flight = 0
        self._cooldown_until = float("-inf")
        self._circuit = Circuit(breaker)
        self._health = SlidingCounts(breaker.window, fields=3)
        self._latency: float | None = None

    def __repr__(self) -> str:
        return f"<DeploymentState {self.key} {self.circuit} in_flight={self._in_flight}>"

    # --- looking (no lock) -------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def load(self) -> float:
        """Requests in flight per unit of weight: the balancer prefers the lower."""
        return self._in_flight / self.weight

    @property
    def circuit(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        return self._circuit.state(self.clock())

    def available(self, now: float | None = None) -> bool:
        """Whether :meth:`start` would admit a request now (see the module). Changes nothing."""
        if now is None:
            now = self.clock()
        return (
            now >= self._cooldown_until
            and (self.max_concurrent == 0 or self._in_flight < self.max_concurrent)
            and self._circuit.admits(now)
        )

    @property
    def breaker_enabled(self) -> bool:
        return self._circuit.policy.enabled

    def paused_for(self, now: float | None = None) -> float | None:
        """Seconds left of a ``Retry-After`` pause when that pause is all that keeps this
        deployment unavailable (its circuit admits and it is under its cap); else ``None``."""
        if now is None:
            now = self.clock()
        if now >= self._cooldown_until or not self._circuit.admits(now):
            return None
        if self.max_concurrent and self._in_flight >= self.max_concurrent:
            return None
        return self._cooldown_until - now

    # --- deciding (under the lock) -----------------------------------------------------
    def start(self, now: float | None = None) -> Attempt | None:
        """Admit one request: an :class:`Attempt` to end once, or ``None`` when not available."""
        with self._lock:
            if now is None:
                now = self.clock()
            if now < self._cooldown_until or (self.max_concurrent and self._in_flight >= self.max_concurrent):
                return None
            admitted = self._circuit.admit(now)
            if admitted is None:
                return None
            self._in_flight += 1
            return Attempt(self, now, *admitted)

    def finish(self, attempt: Attempt, kind: str | None, latency_s: float | None, retry_after: float | None) -> None:
        """Called by :class:`Attempt` (use its methods): ``kind`` is ``"ok"``, a failure kind, or ``None`` (no outcome)."""
        with self._lock:
            now = self.clock()
            self._in_flight -= 1
            circuit = self._circuit
            if kind == "ok":
                circuit.success(now, attempt.generation, attempt.trial)
                self._health.add(now, _OK)
                sample = now - attempt.started_at if latency_s is None else latency_s
                self._latency = sample if self._latency is None else self._latency + LATENCY_WEIGHT * (sample - self._latency)
                return
            if kind is None:
                circuit.neutral(attempt.generation, attempt.trial)
                return
            if retry_after is not None or kind == "status_429":
                pause = THROTTLE_COOLDOWN if retry_after is None else max(0.0, retry_after)
                self._cooldown_until = max(self._cooldown_until, now + pause)
            if kind == "status_429":
                circuit.neutral(attempt.generation, attempt.trial)
                self._health.add(now, _THROTTLED)
            else:
                circuit.failure(now, attempt.generation, attempt.trial)
                self._health.add(now, _FAILED)

    # --- reporting ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, object]:
        """The figures ``GET /admin/backends`` shows; ratios over the breaker's window."""
        with self._lock:
            now = self.clock()
            ok, failed, throttled = self._health.totals(now)
            return {
                "key": self.key,
                "backend": self.backend,
                "model": self.model,
                "priority": self.priority,
                "weight": self.weight,
                "circuit": self._circuit.state(now),
                "in_flight": self._in_flight,
                "max_concurrent": self.max_concurrent,
                "error_ratio": failed / (ok + failed) if ok + failed else 0.0,
                "throttled": throttled,
                "recent_outcomes": ok + failed + throttled,
                "latency_s": self._latency,
                "cooldown_s": max(0.0, self._cooldown_until - now),
                "consecutive_failures": self._circuit.consecutive_failures,
                "circuit_opened": self._circuit.opened,
            }


class Attempt:
    """One request admitted to a deployment; end it exactly once (see the module)."""

    __slots__ = ("state", "started_at", "generation", "trial", "_ended")

    def __init__(self, state: DeploymentState, started_at: float, generation: int, trial: bool) -> None:
        self.state = state
        self.started_at = started_at
        self.generation = generation
        self.trial = trial  # the one half-open trial request
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    def succeeded(self, latency_s: float | None = None) -> None:
        """The backend answered; ``latency_s`` defaults to the time since :meth:`DeploymentState.start`."""
        self._finish("ok", latency_s, None)

    def failed(self, kind: FailureKind, retry_after: float | None = None) -> None:
        """The backend failed; ``retry_after``: its ``Retry-After`` in seconds, already capped."""
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}")
        self._finish(kind, None, retry_after)

    def released(self) -> None:
        """No outcome: frees the slot (and the trial), counts nothing."""
        self._finish(None, None, None)

    def _finish(self, kind: str | None, latency_s: float | None, retry_after: float | None) -> None:
        if self._ended:
            return
        self._ended = True
        self.state.finish(self, kind, latency_s, retry_after)
