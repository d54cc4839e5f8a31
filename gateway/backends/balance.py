"""Which deployment serves the next attempt: priority tiers, then weighted power of two choices.

:func:`pick` looks only at available deployments (:meth:`DeploymentState.available`):

1. Deployments this request already tried (``excluded``) are left aside when any other one
   is available, in any tier: a retry goes to another deployment when one exists (the
   fallback order), else back to a tried one (the caller backs off first).
2. Of those, the lowest ``priority`` number with any available deployment: a higher
   number is a fallback, used only when every lower one is unavailable or tried.
3. Within that tier, two distinct candidates drawn with probability proportional to
   their weight; the one with fewer requests in flight per unit of weight wins, the
   first drawn on a tie. So with equal load traffic follows the weights, and a slow or
   busy deployment sheds load to its peers (Mitzenmacher's power of two choices).

``None`` means nothing is available; the caller fails fast with a clear error rather
than wait. :func:`start_attempt` picks and admits atomically enough for threads: if the
picked deployment stopped being available before :meth:`DeploymentState.start` took its
lock (another request took the half-open trial), it picks again without it.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from gateway.backends.state import Attempt, DeploymentState

_RNG = random.Random()  # callers that want repeatable draws (tests) pass their own


def pick(
    states: Sequence[DeploymentState],
    excluded: Collection[str] = frozenset(),
    rng: random.Random = _RNG,
    now: float | None = None,
) -> DeploymentState | None:
    """The deployment for the next attempt (see the module), or ``None`` when none is available.

    :param excluded: keys of the deployments this request already tried.
    :param now: the clock's reading (each state's own clock when ``None``).
    """
    available = [state for state in states if state.available(now)]
    if not available:
        return None
    untried = [state for state in available if state.key not in excluded]
    pool = untried or available
    tier = min(state.priority for state in pool)
    tiered = [state for state in pool if state.priority == tier]
    if len(tiered) == 1:
        return tiered[0]
    first = _weighted_draw(tiered, rng.random())
    second = _weighted_draw([state for state in tiered if state is not first], rng.random())
    return second if second.load < first.load else first


def start_attempt(
    states: Sequence[DeploymentState],
    excluded: Collection[str] = frozenset(),
    rng: random.Random = _RNG,
    now: float | None = None,
) -> Attempt | None:
    """:func:`pick`, then :meth:`DeploymentState.start` on it: an admitted attempt, or ``None``."""
    remaining = list(states)
    while (chosen := pick(remaining, excluded, rng, now)) is not None:
        attempt = chosen.start(now)
        if attempt is not None:
            return attempt
        remaining.remove(chosen)  # it stopped being available meanwhile
    return None


def _weighted_draw(states: Sequence[DeploymentState], uniform: float) -> DeploymentState:
    """The state ``uniform`` (in [0, 1)) falls on when each state spans a share of its weight."""
    target = uniform * sum(state.weight for state in states)
    for state in states:
        target -= state.weight
        if target < 0:
            return state
    return states[-1]  # rounding left the target at the very end
