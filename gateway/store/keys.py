"""The ``api_keys`` table: rows in, :class:`KeyRecord` out.

Only the HMAC of a secret is ever stored (:mod:`gateway.auth.keys` computes it);
this module never sees a secret. Keys are never deleted: revoking sets
``revoked_at`` and keeps the row, so usage stays attributable.

A key id that is not storable text (``/admin/keys/key_%00``) names no key: it is
answered as unknown without a query, which PostgreSQL would refuse with an error
that looks like a database outage.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, Row, insert, select, update

from gateway.payload import is_storable_text
from gateway.store.tables import api_keys

KEY_ID_PREFIX = "key_"


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
    """Queries on ``api_keys``. Every method is one short transaction.

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

    def list_all(self) -> list[KeyRecord]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)).all()
        return [KeyRecord.from_row(row) for row in rows]

    def create(self, *, key_id: str, prefix: str, secret_hash: str, created_at: datetime, fields: dict[str, Any]) -> KeyRecord:
        """Insert a key; ``fields`` come from :func:`gateway.store.key_fields.parse_changes`."""
        values = {"id": key_id, "prefix": prefix, "secret_hash": secret_hash, "created_at": created_at, **fields}
        with self.engine.begin() as connection:
            connection.execute(insert(api_keys).values(values))
        record = self.get(key_id)
        assert record is not None
        return record

    def update(self, key_id: str, fields: dict[str, Any]) -> KeyRecord | None:
        """Change settable fields; ``None`` when there is no such key."""
        if not is_storable_text(key_id):
            return None
        if fields:
            with self.engine.begin() as connection:
                connection.execute(update(api_keys).where(api_keys.c.id == key_id).values(fields))
        return self.get(key_id)

    def revoke(self, key_id: str, now: datetime) -> KeyRecord | None:
        """Set ``revoked_at`` once (revoking again keeps the first time); ``None`` if unknown."""
        if not is_storable_text(key_id):
            return None
        with self.engine.begin() as connection:
            connection.execute(update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now))
        return self.get(key_id)

    def replace_secret(self, key_id: str, *, prefix: str, secret_hash: str) -> bool:
        """Give a key that is not revoked a new secret; ``False`` if unknown or revoked."""
        if not is_storable_text(key_id):
            return False
        with self.engine.begin() as connection:
            result = connection.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(prefix=prefix, secret_hash=secret_hash)
            )
        return result.rowcount == 1
