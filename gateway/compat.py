"""Every reach into another library's private names, one function each, with the library version it was written against."""

from __future__ import annotations

from flask_limiter import Limiter

# --- flask-limiter (written against flask-limiter 4.1.1) --------------------------------
# The request windows (gateway.quotas.windows) count on flask-limiter's strategy
# themselves, outside flask-limiter's own request check, so its switch to the
# per-process fallback strategy (its ``_storage_dead`` flag, which also makes
# ``limiter.limiter`` return the fallback) is the one flag both share: while the store is
# down, the auth-failure limit flask-limiter checks and the gateway's own quotas count in
# the same fallback, and move back to the store together. flask-limiter has no public
# API for reading or setting it. tests/unit/test_compat.py fails, naming flask-limiter,
# when an upgrade removes it.
LIMITER_STORAGE_DEAD = "_storage_dead"


def limiter_storage_dead(limiter: Limiter) -> bool:
    """Whether flask-limiter counts in its per-process fallback (the store failed)."""
    return bool(getattr(limiter, LIMITER_STORAGE_DEAD))


def set_limiter_storage_dead(limiter: Limiter, dead: bool) -> None:
    """Move flask-limiter's counting to its per-process fallback (``True``) or back to the store."""
    setattr(limiter, LIMITER_STORAGE_DEAD, dead)
