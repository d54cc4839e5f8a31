"""API keys the gateway accepts.

For now there is one: ``MASTER_API_KEY``, whose caller identity is ``master``. The
identity, never the secret, is what quotas, logs and tokens carry.
"""

from __future__ import annotations

import hmac

MASTER_KEY_ID = "master"


class KeyRing:
    def __init__(self, master_api_key: str) -> None:
        self._master = master_api_key.encode("utf-8")

    def identify(self, presented: str) -> str | None:
        """Return the key id for a presented secret, comparing in constant time."""
        candidate = presented.encode("utf-8", "surrogateescape")
        if self._master and hmac.compare_digest(candidate, self._master):
            return MASTER_KEY_ID
        return None

    def is_active(self, key_id: str) -> bool:
        """Whether tokens minted for ``key_id`` are still honoured."""
        return key_id == MASTER_KEY_ID
