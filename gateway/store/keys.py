"""The ``api_keys`` table: rows in, :class:`KeyRecord` out.

Only the HMAC of a secret is ever stored (:mod:`gateway.auth.keys` computes it);
this module never sees a secret. Every change is audited in its own transaction
(:mod:`gateway.store.audit`). Keys are never deleted: revoking sets
``revoked_at`` and keeps the row, so usage stays attributable.

A key id that is not storable text (``/admin/keys/key_%00``) names no key: it is
answered as unknown without a query, which PostgreSQL would refuse with an error
that looks like a database outage.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, select, update

from gateway.payload import is_storable_text
from gateway.store import audit
from gateway.store.audit import Actor
from gateway.store.tables import api_keys

KEY_ID_PREFIX = "key_"
# Execution option of a transaction that writes after reading (a change and its audit row):
# SQLite must then take its write lock at BEGIN (``BEGIN IMMEDIATE``, see gateway.store), or a
# commit by another connection (the usage writer's) between the read and the write makes the
# write fail as "database is locked". PostgreSQL locks the key's row instead (FOR UPDATE).
WRITE_LOCK_OPTION = "gateway_write_lock"


def new_key_id() -> str:
    """``key_`` and 16 hex digits: safe in URLs and logs (it is not a secret)."""
    return KEY_ID_PREFIX + secrets.token_hex(8)


@dataclass(frozen=True)
class KeyRecord:
    """One managed key. ``None`` in a limit field means the gateway's default."""

    id: str
    name: str
    prefix: str
    secret_hash: str = field(repr=False)
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    allowed_models: list[str] | None
    rate_limit_general: str | None
    rate_limit_ai: str | None
    tokens_per_minute: int | None
    tokens_per_day: int | None
    budget_tokens_day: int | None
    budget_tokens_month: int | None
    max_tokens_cap: int | None
    budget_usd: Decimal | None = None  # None: no budget in currency
    budget_period: str | None = None  # day, week, month; None: month
    budget_reset: str | None = None  # calendar, rolling; None: calendar

    @classmethod
    def from_row(cls, row: Row[Any]) -> KeyRecord:
        return cls(**row._asdict())

    def status(self, now: datetime) -> str:
        """``revoked``, ``expired`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def is_active(self, now: datetime) -> bool:
        return self.status(now) == "active"

    def public(self, now: datetime) -> dict[str, Any]:
        """What the admin API and CLI show: everything but the hash."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "status": self.status(now),
            "metadata": self.metadata,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "allowed_models": self.allowed_models,
            "rate_limit_general": self.rate_limit_general,
            "rate_limit_ai": self.rate_limit_ai,
            "tokens_per_minute": self.tokens_per_minute,
            "tokens_per_day": self.tokens_per_day,
            "budget_tokens_day": self.budget_tokens_day,
            "budget_tokens_month": self.budget_tokens_month,
            "max_tokens_cap": self.max_tokens_cap,
            "budget_usd": float(self.budget_usd) if self.budget_usd is not None else None,  # exact: 15 digits at most
            "budget_period": self.budget_period,
            "budget_reset": self.budget_reset,
        }


class KeyStore:
    """Queries on ``api_keys``. Every method is one short transaction; each write also
    inserts its :mod:`audit row <gateway.store.audit>` in that transaction.

    :raises sqlalchemy.exc.SQLAlchemyError: when the database fails (callers decide
        whether that is a 503 or a CLI error).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _one(self, query: Any) -> KeyRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return KeyRecord.from_row(row) if row is not None else None

    def get(self, key_id: str) -> KeyRecord | None:
        if not is_storable_text(key_id):
            return None
        return self._one(select(api_keys).where(api_keys.c.id == key_id))

    def find_by_hash(self, secret_hash: str) -> KeyRecord | None:
        """The key whose secret hashes to ``secret_hash`` (an indexed equality lookup)."""
        return self._one(select(api_keys).where(api_keys.c.secret_hash == secret_hash))

    def find_by_name(self, name: str) -> list[KeyRecord]:
        """Every key named ``name``, revoked ones included (names are not unique)."""
        if not is_storable_text(name):
            return []
        with self.engine.connect() as connection:
            rows = connection.execute(select(api_keys).where(api_keys.c.name == name).order_by(api_keys.c.created_at)).all()
        return [KeyRecord.from_row(row) for row in rows]

    def list_all(self) -> list[KeyRecord]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)).all()
        return [KeyRecord.from_row(row) for row in rows]

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One write transaction, holding the write lock from its start (see :data:`WRITE_LOCK_OPTION`)."""
        with self.engine.connect() as connection:
            connection.execution_options(**{WRITE_LOCK_OPTION: True})
            with connection.begin():
                yield connection

    def _locked(self, connection: Connection, key_id: str) -> KeyRecord | None:
        """The key's row, locked until the transaction ends (PostgreSQL; SQLite has one writer)."""
        row = connection.execute(select(api_keys).where(api_keys.c.id == key_id).with_for_update()).first()
        return KeyRecord.from_row(row) if row is not None else None

    def create(
        self, *, key_id: str, prefix: str, secret_hash: str, created_at: datetime, fields: dict[str, Any], actor: Actor
    ) -> KeyRecord:
        """Insert a key and its audit row; ``fields`` come from :func:`gateway.store.key_fields.parse_changes`."""
        values = {"id": key_id, "prefix": prefix, "secret_hash": secret_hash, "created_at": created_at, **fields}
        with self._writing() as connection:
            connection.execute(insert(api_keys).values(values))
            audit.record(connection, action="create", key_id=key_id, actor=actor, ts=created_at, before=None, after=fields)
        record = self.get(key_id)
        assert record is not None
        return record

    def update(self, key_id: str, fields: dict[str, Any], *, actor: Actor, now: datetime) -> KeyRecord | None:
        """Change settable fields, with an audit row of those whose value changed; ``None`` when there is no such key."""
        if not is_storable_text(key_id):
            return None
        with self._writing() as connection:
            old = self._locked(connection, key_id)
            if old is None:
                return None
            changed = {name: value for name, value in fields.items() if getattr(old, name) != value}
            if changed:
                connection.execute(update(api_keys).where(api_keys.c.id == key_id).values(changed))
            before = {name: getattr(old, name) for name in changed}
            audit.record(connection, action="update", key_id=key_id, actor=actor, ts=now, before=before, after=changed)
        return self.get(key_id)

    def revoke(self, key_id: str, now: datetime, *, actor: Actor) -> KeyRecord | None:
        """Set ``revoked_at`` once (revoking again keeps the first time), with an audit row; ``None`` if unknown."""
        if not is_storable_text(key_id):
            return None
        with self._writing() as connection:
            old = self._locked(connection, key_id)
            if old is None:
                return None
            before: dict[str, Any] = {}
            after: dict[str, Any] = {}
            if old.revoked_at is None:
                connection.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=now))
                before, after = {"revoked_at": None}, {"revoked_at": now}
            audit.record(connection, action="revoke", key_id=key_id, actor=actor, ts=now, before=before, after=after)
        return self.get(key_id)

    def replace_secret(self, key_id: str, *, prefix: str, secret_hash: str, actor: Actor, now: datetime) -> bool:
        """Give a key that is not revoked a new secret, with an audit row; ``False`` if unknown or revoked."""
        if not is_storable_text(key_id):
            return False
        with self._writing() as connection:
            result = connection.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(prefix=prefix, secret_hash=secret_hash)
            )
            if result.rowcount != 1:
                return False
            audit.record(connection, action="rotate", key_id=key_id, actor=actor, ts=now, before=None, after=None)
        return True
