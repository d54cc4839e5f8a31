"""The quota store's outage policy (``RATE_LIMIT_ON_STORAGE_ERROR``) for our own counters.

gateway.quotas.windows applies the policy to the request quotas (on flask-limiter's fallback
strategy); the concurrency slots (:mod:`gateway.quotas.slots`) and token counters
(:mod:`gateway.quotas.tokens`) apply it here:
try the shared store; if it fails, ``closed`` answers 503 and ``open`` uses the
process's own counters instead.

:func:`is_outage` tells a store that is down from one command it refused: only the
first may switch every caller's counting to the process (gateway.quotas.windows); a refused
command (one key's counters holding the wrong type, an expiry Redis will not take)
gets the policy for that one request and leaves everyone else counting in the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from limits.errors import StorageError
from redis import exceptions as redis_errors

from gateway.errors import LimitStorageUnavailable

# Replies that refuse a command but mean the whole server cannot serve right now.
_SERVER_WIDE_REPLIES = (
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
)


def is_outage(error: BaseException) -> bool:
    """Whether a store error means the store is unavailable to every caller.

    ``False`` only for a command the server (or redis-py) refused for its own sake: a
    ``ResponseError`` reply such as ``WRONGTYPE`` or ``invalid expire time``, or a
    redis-py ``DataError``. Connection errors, timeouts, protocol errors, replies that
    say the server as a whole cannot serve (read-only replica, out of memory, cluster
    down) and errors of any other kind are outages, as before. A limits
    ``StorageError`` is judged by the error it wraps.
    """
    cause = error.storage_error if isinstance(error, StorageError) else error
    if isinstance(cause, _SERVER_WIDE_REPLIES):
        return True
    return not isinstance(cause, redis_errors.ResponseError | redis_errors.DataError)


B = TypeVar("B")
R = TypeVar("R")


def on_store(shared: B | None, local: B, fail_open: bool, call: Callable[[B], R]) -> tuple[B, R]:
    """Run ``call`` on the shared store (or the local one when there is none).

    Any failure gets the policy for this call only, an outage or one refused command alike:
    nothing here switches other calls away from the shared store.

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
