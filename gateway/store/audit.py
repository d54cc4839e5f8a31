"""The ``audit_log`` table: one append-only row per change to a managed key.

Contract:

- :func:`record` is called by :class:`gateway.store.keys.KeyStore`'s write methods on the
  connection of the change itself, so the change and its row commit or roll back
  together: there is no change without its row, and no row without its change.
- A row says what (``action``: create, update, rotate, revoke; ``key_id``), who
  (``actor``: ``master`` for the master key or a JWT minted from it, the OS user for a
  ``flask keys`` command; ``via``: ``api_key``, ``jwt``, ``cli``, or ``console`` for the operator's console in the browser), from where
  (``address``: the client address as the app sees it, after ProxyFix; ``cli``), when
  (``ts``, UTC) and the request id.
- ``before`` and ``after`` hold the changed fields only, as JSON: ``before`` is null for
  a create, both are null for a rotate (the secret changed, and it is never shown), and
  an action that changed nothing (revoking a revoked key, a PATCH with the values already
  set) has two empty objects. Only settable fields and ``revoked_at`` ever reach them:
  the secret, its hash, its prefix and the pepper never do.
- Nothing in the gateway updates or deletes a row; :class:`AuditLog` only reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, insert, select

from gateway.payload import is_storable_text
from gateway.store.tables import ACTOR_LENGTH, ADDRESS_LENGTH, REQUEST_ID_LENGTH, audit_log

ACTIONS = ("create", "update", "rotate", "revoke")
VIAS = ("api_key", "jwt", "cli", "console")
MAX_PAGE = 1000


@dataclass(frozen=True)
class Actor:
    """Who makes a change, and from where (see the module)."""

    name: str
    via: str
    address: str
    request_id: str | None = None


def _text(value: str | None, length: int) -> str:
    """A value from outside (an OS user, a forwarded address) made storable and short enough."""
    if value is None or not value:
        return "unknown"
    if not is_storable_text(value):
        value = value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return value[:length]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):  # budget_usd: at most 15 significant digits, exact as a JSON number
        return float(value)
    return value


def _fields(values: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if values is None else {name: _jsonable(value) for name, value in values.items()}


def record(
    connection: Connection,
    *,
    action: str,
    key_id: str,
    actor: Actor,
    ts: datetime,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Insert one row on ``connection``, inside the caller's transaction."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    connection.execute(
        insert(audit_log).values(
            ts=ts,
            action=action,
            key_id=key_id,
            actor=_text(actor.name, ACTOR_LENGTH),
            via=actor.via,
            address=_text(actor.address, ADDRESS_LENGTH),
            request_id=actor.request_id[:REQUEST_ID_LENGTH] if actor.request_id else None,
            before=_fields(before),
            after=_fields(after),
        )
    )


@dataclass(frozen=True)
class AuditFilter:
    """Which rows to list. ``None`` means no condition; ``start`` is inclusive, ``end`` exclusive."""

    key_id: str | None = None
    action: str | None = None
    actor: str | None = None
    via: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        c = audit_log.c
        conditions: list[ColumnElement[bool]] = []
        for column, value in ((c.key_id, self.key_id), (c.action, self.action), (c.actor, self.actor), (c.via, self.via)):
            if value is not None:
                conditions.append(column == value)
        if self.start is not None:
            conditions.append(c.ts >= self.start)
        if self.end is not None:
            conditions.append(c.ts < self.end)
        return conditions


def _shown(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "audit.entry",
        "ts": row.ts.isoformat(),
        "action": row.action,
        "key_id": row.key_id,
        "actor": row.actor,
        "via": row.via,
        "address": row.address,
        "request_id": row.request_id,
        "before": row.before,
        "after": row.after,
    }


@dataclass(frozen=True)
class AuditPage:
    entries: list[dict[str, Any]]  # as ``GET /admin/audit`` shows them
    has_more: bool


class AuditLog:
    """Reads of ``audit_log``, in a stable order by id (the order rows were written in).

    :raises sqlalchemy.exc.SQLAlchemyError: when the database fails.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def page(self, where: AuditFilter, *, limit: int, after: int | None = None, descending: bool = False) -> AuditPage:
        """At most ``limit`` rows past the cursor ``after`` (an id), oldest first unless ``descending``."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1 to {MAX_PAGE}")
        c = audit_log.c
        query = select(audit_log).where(*where.conditions())
        if after is not None:
            query = query.where(c.id < after if descending else c.id > after)
        query = query.order_by(c.id.desc() if descending else c.id.asc()).limit(limit + 1)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return AuditPage([_shown(row) for row in rows[:limit]], has_more=len(rows) > limit)
