"""The retry budget: retries stay a bounded fraction of the requests, so an outage does not
multiply the load on the backends.

Every client request is noted (:meth:`RetryBudget.note_request`); time is cut into
``buckets`` slices per ``window``. A retry is allowed (:meth:`RetryBudget.try_retry`, which
then counts it) only while, over the window that ends now (the current slice and the ones
before it, ``window`` seconds in all),

    retries in the window + 1 <= ratio * requests in the window + min_retries

So at every moment the retries of the last ``window`` seconds stay within ``ratio`` of that
window's requests plus ``min_retries``, however many attempts each request is configured
for: a total outage adds at most ``ratio`` to the load on the backends (plus
``min_retries``), and a trickle of traffic can still retry (``min_retries``).

Why the whole window and not also every shorter span ending now: a guarantee over every
window *to come* would have to draw only on the requests of the slice under way for the
windows starting there, so right after a slice begins only ``min_retries`` retries would
fit, however busy the gateway. A backend dying at that moment fails its requests in
flight (and the few sent to it before its circuit opens) all at once, and clients would
see errors a healthy fallback could have absorbed. The price of the whole-window check: a
window that starts after a burst of requests may hold retries those requests paid for,
so over an arbitrary window the bound is ``ratio`` times the requests of that window and
the one before it.

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
            requests, retries = self._counts.totals(now)
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
