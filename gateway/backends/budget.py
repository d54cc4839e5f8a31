"""The retry budget: retries stay a bounded fraction of the requests, so an outage does not
multiply the load on the backends.

Every client request is noted (:meth:`RetryBudget.note_request`); time is cut into
``buckets`` slices per ``window``. A retry is allowed (:meth:`RetryBudget.try_retry`, which
then counts it) only while, for *every* span of slices ending with the current one and at
most ``window`` long,

    retries in the span + 1 <= ratio * requests in the span + min_retries

Checking every such span, not only the whole window, is what makes the bound hold over
every window of ``window`` seconds that starts on a slice boundary, the ones to come
included: ``retries <= ratio * requests + min_retries``, however many attempts each request
is configured for. (Checking the whole window alone would let a burst of requests that is
about to leave the window pay for retries in the next one.) The price: a retry draws only
on requests at least as recent as the span under check, so right after a quiet spell only
``min_retries`` fit. ``min_retries`` also lets a trickle of traffic retry at all.

Memory is fixed (:class:`~gateway.backends.window.SlidingCounts`); one lock per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from gateway.backends.window import SlidingCounts

_REQUESTS, _RETRIES = 0, 1  # SlidingCounts fields


class RetryBudget:
    """Retries allowed per window: ``ratio`` of the requests plus ``min_retries`` (see the module)."""

    __slots__ = ("ratio", "min_retries", "clock", "exhausted", "_lock", "_counts")

    def __init__(
        self,
        ratio: float = 0.2,
        window: float = 10.0,
        min_retries: int = 3,
        clock: Callable[[], float] = time.monotonic,
        buckets: int = 10,
    ) -> None:
        if ratio < 0 or min_retries < 0:
            raise ValueError("ratio and min_retries must be >= 0")
        self.ratio = ratio
        self.min_retries = min_retries
        self.clock = clock  # monotonic seconds; tests pass a fake one
        self.exhausted = 0  # retries refused since start, for a counter
        self._lock = threading.Lock()
        self._counts = SlidingCounts(window, fields=2, buckets=buckets)

    def note_request(self) -> None:
        """Count one client request (not its retries)."""
        with self._lock:
            self._counts.add(self.clock(), _REQUESTS)

    def try_retry(self) -> bool:
        """Whether one more retry fits the budget; if so it is counted."""
        with self._lock:
            now = self.clock()
            requests = retries = 0
            for counts in self._counts.newest_first(now):
                requests += counts[_REQUESTS]
                retries += counts[_RETRIES]
                if retries + 1 > self.ratio * requests + self.min_retries:
                    self.exhausted += 1
                    return False
            self._counts.add(now, _RETRIES)
            return True

    def snapshot(self) -> dict[str, int]:
        """Requests and retries over the window, and refusals since start."""
        with self._lock:
            requests, retries = self._counts.totals(self.clock())
            return {"requests": requests, "retries": retries, "exhausted": self.exhausted}
