"""usage_daily: usage summed per UTC day, key, model and operation, filled from the rows already stored.

From this revision on the usage writer adds every batch to it in the batch's own
transaction (:mod:`gateway.store.usage_daily`). The backfill below sums the ``usage`` rows
present when the upgrade runs, in the upgrade's transaction; rows that a gateway older than
this revision writes afterwards are not added, so upgrade with the old gateways stopped
(as every upgrade is done: the new gateway refuses to start on an older schema).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The tables as this revision knows them (the code's tables.py may move on).
_usage = sa.table(
    "usage",
    sa.column("ts", sa.DateTime(timezone=True)),
    sa.column("key_id", sa.String),
    sa.column("operation", sa.String),
    sa.column("model", sa.String),
    sa.column("status", sa.Integer),
    sa.column("prompt_tokens", sa.BigInteger),
    sa.column("completion_tokens", sa.BigInteger),
    sa.column("total_tokens", sa.BigInteger),
    sa.column("reasoning_tokens", sa.BigInteger),
    sa.column("cached_tokens", sa.BigInteger),
    sa.column("tokens_estimated", sa.Boolean),
    sa.column("cost_usd", sa.Numeric(24, 12)),
)
_SUMMED = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "estimated_requests",
    "cost_usd",
    "unpriced_requests",
)


def _backfill() -> None:
    bind = op.get_bind()
    ts = _usage.c.ts
    # The UTC calendar day: SQLite keeps ts as UTC text; PostgreSQL would cut days at the
    # session's time zone unless the timestamptz is first turned into UTC wall time.
    day = sa.func.date(ts) if bind.dialect.name == "sqlite" else sa.cast(sa.func.timezone("UTC", ts), sa.Date)
    u = _usage.c
    unpriced = u.cost_usd.is_(None) & (sa.func.coalesce(u.prompt_tokens, 0) + sa.func.coalesce(u.completion_tokens, 0) > 0)
    sums = [  # in the order of _SUMMED
        sa.func.count(),
        sa.func.count().filter(u.status >= 400),
        sa.func.coalesce(sa.func.sum(u.prompt_tokens), 0),
        sa.func.coalesce(sa.func.sum(u.completion_tokens), 0),
        sa.func.coalesce(sa.func.sum(u.total_tokens), 0),
        sa.func.coalesce(sa.func.sum(u.reasoning_tokens), 0),
        sa.func.coalesce(sa.func.sum(u.cached_tokens), 0),
        sa.func.count().filter(u.tokens_estimated == sa.true()),
        sa.func.sum(u.cost_usd),
        sa.func.count().filter(unpriced),
    ]
    query = sa.select(
        day,
        u.key_id,
        sa.func.coalesce(u.model, ""),
        u.model.is_not(None),
        u.operation,
        *sums,
    ).group_by(day, u.key_id, u.model, u.operation)
    daily = sa.table("usage_daily", *(sa.column(name) for name in ("day", "key_id", "model", "has_model", "operation", *_SUMMED)))
    op.execute(daily.insert().from_select(["day", "key_id", "model", "has_model", "operation", *_SUMMED], query))


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("has_model", sa.Boolean(), nullable=False),
        sa.Column("operation", sa.String(40), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("estimated_requests", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(24, 12, asdecimal=False), nullable=True),
        sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "key_id", "model", "has_model", "operation", name="pk_usage_daily"),
    )
    _backfill()


def downgrade() -> None:
    # Only sums of the usage rows, which stay: nothing is lost by dropping them.
    op.drop_table("usage_daily")
