"""The quota store's outage policy (``RATE_LIMIT_ON_STORAGE_ERROR``) for our own counters.

gateway.limits applies the policy to the request quotas (on flask-limiter's fallback
strategy); the concurrency slots (:mod:`gateway.inflight`) and token counters
(:mod:`gateway.quotas`) apply it here:
try the shared store; if it fails, ``closed`` answers 503 and ``open`` uses the
process's own counters instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from gateway.errors import LimitStorageUnavailable

B = TypeVar("B")
R = TypeVar("R")


def on_store(shared: B | None, local: B, fail_open: bool, call: Callable[[B], R]) -> tuple[B, R]:
    """Run ``call`` on the shared store (or the local one when there is none).

    :returns: the backend that answered, and its answer.
    :raises LimitStorageUnavailable: the shared store failed and the policy is closed (503).
    """
    if shared is None:
        return local, call(local)
    try:
        return shared, call(shared)
    except Exception:  # any client error: connection, timeout, script, ...
        if not fail_open:
            raise LimitStorageUnavailable() from None
        return local, call(local)
