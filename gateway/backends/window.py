"""Counts over a sliding window of time, in a fixed number of buckets. Pure code, no lock.

The window is cut into ``buckets`` equal slices; each slice keeps one total per field.
:meth:`SlidingCounts.totals` sums the slices of the last ``window`` seconds, the current
(partly elapsed) slice included, so what it covers is between ``window * (buckets - 1) /
buckets`` and ``window`` seconds long. Memory is the same whatever the traffic. The owner
(:class:`~gateway.backends.state.DeploymentState`, :class:`~gateway.backends.budget.RetryBudget`)
holds the lock.
"""

from __future__ import annotations

# The epoch of a slice that has never been written: far before any clock's reading.
_NEVER = -(2**62)


class SlidingCounts:
    """``fields`` counters over the last ``window`` seconds of a monotonic clock."""

    __slots__ = ("window", "_width", "_buckets", "_fields", "_epochs", "_counts")

    def __init__(self, window: float, fields: int, buckets: int = 10) -> None:
        if window <= 0 or buckets < 1 or fields < 1:
            raise ValueError("window must be > 0, buckets and fields >= 1")
        self.window = window
        self._width = window / buckets
        self._buckets = buckets
        self._fields = fields
        self._epochs = [_NEVER] * buckets  # the slice number each bucket now holds
        self._counts = [[0] * fields for _ in range(buckets)]

    def add(self, now: float, field: int, amount: int = 1) -> None:
        """Count ``amount`` on ``field`` at time ``now``."""
        epoch = int(now // self._width)
        slot = epoch % self._buckets
        if self._epochs[slot] != epoch:  # a slice that fell out of the window: reuse it
            self._epochs[slot] = epoch
            self._counts[slot] = [0] * self._fields
        self._counts[slot][field] += amount

    def totals(self, now: float) -> list[int]:
        """Each field's total over the window ending at ``now``."""
        epoch = int(now // self._width)
        oldest = epoch - self._buckets + 1
        sums = [0] * self._fields
        for slot_epoch, counts in zip(self._epochs, self._counts, strict=True):
            if oldest <= slot_epoch <= epoch:
                for field, count in enumerate(counts):
                    sums[field] += count
        return sums

    def clear(self) -> None:
        self._epochs = [_NEVER] * self._buckets
        self._counts = [[0] * self._fields for _ in range(self._buckets)]
