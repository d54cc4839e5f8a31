"""Managing keys: the actions behind both ``/admin/keys`` and ``flask keys``.

One implementation, so the HTTP API and the command line validate the same way,
write the same audit rows (:mod:`gateway.store.audit`: in the change's own
transaction, who and from where as the caller's :class:`~gateway.store.audit.Actor`)
and log the same lines (action and key id: never a secret or its prefix).
A secret exists in memory only long enough to be returned once by
:meth:`KeyAdmin.create` or :meth:`KeyAdmin.rotate`.

Changes apply at once in this process (its cache is dropped) and within
``KEY_CACHE_SECONDS`` in every other worker and instance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gateway.auth.keys import KeyRing, utcnow
from gateway.store.audit import Actor
from gateway.store.key_fields import parse_changes
from gateway.store.keys import KeyRecord, KeyStore, new_key_id

log = logging.getLogger(__name__)


class KeyNotFound(LookupError):
    """No key has this id."""


class KeyRevoked(ValueError):
    """The key is revoked; it cannot be rotated (create a new key instead)."""


class KeyAdmin:
    """Create, list, show, change, revoke and rotate managed keys.

    :raises gateway.store.key_fields.FieldError: invalid fields (create, update).
    :raises KeyNotFound: unknown id (show, update, revoke, rotate).
    :raises sqlalchemy.exc.SQLAlchemyError: the database failed.
    """

    def __init__(self, ring: KeyRing, store: KeyStore, *, now: Callable[[], datetime] = utcnow) -> None:
        self.ring = ring
        self.store = store
        self.now = now

    def _log(self, action: str, key_id: str, actor: Actor) -> None:
        log.info("key %s", action, extra={"fields": {"key_id": key_id, "by": actor.name, "via": actor.via}})

    def create(self, document: dict[str, Any], *, actor: Actor) -> tuple[KeyRecord, str]:
        """Create a key; returns it and its secret (shown once, never stored)."""
        now = self.now()
        fields = parse_changes(document, creating=True, now=now)
        secret, prefix, secret_hash = self.ring.issue_secret()
        record = self.store.create(
            key_id=new_key_id(), prefix=prefix, secret_hash=secret_hash, created_at=now, fields=fields, actor=actor
        )
        self.ring.forget()  # a failed lookup of this secret may be cached as "unknown"
        self._log("created", record.id, actor)
        return record, secret

    def list(self) -> list[KeyRecord]:
        return self.store.list_all()

    def get(self, key_id: str) -> KeyRecord:
        record = self.store.get(key_id)
        if record is None:
            raise KeyNotFound(key_id)
        return record

    def update(self, key_id: str, document: dict[str, Any], *, actor: Actor) -> KeyRecord:
        """Change settable fields; ``null`` resets one to the gateway's default."""
        now = self.now()
        fields = parse_changes(document, creating=False, now=now)
        record = self.store.update(key_id, fields, actor=actor, now=now)
        if record is None:
            raise KeyNotFound(key_id)
        self.ring.forget()
        self._log("updated", key_id, actor)
        return record

    def revoke(self, key_id: str, *, actor: Actor) -> KeyRecord:
        """Revoke a key (idempotent: the first revocation time is kept). The row stays."""
        record = self.store.revoke(key_id, self.now(), actor=actor)
        if record is None:
            raise KeyNotFound(key_id)
        self.ring.forget()
        self._log("revoked", key_id, actor)
        return record

    def rotate(self, key_id: str, *, actor: Actor) -> tuple[KeyRecord, str]:
        """Give a key a new secret; same id and settings. The old secret stops working.

        :raises KeyRevoked: the key is revoked.
        """
        secret, prefix, secret_hash = self.ring.issue_secret()
        if not self.store.replace_secret(key_id, prefix=prefix, secret_hash=secret_hash, actor=actor, now=self.now()):
            self.get(key_id)  # raises KeyNotFound when there is no such key
            raise KeyRevoked(key_id)
        self.ring.forget()
        self._log("rotated", key_id, actor)
        return self.get(key_id), secret
