"""Usage rows keep reasoning and cached tokens and their cost in USD (priced when written).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("reasoning_tokens", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("cached_tokens", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("cost_usd", sa.Numeric(24, 12, asdecimal=False), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("cost_usd")
        batch.drop_column("cached_tokens")
        batch.drop_column("reasoning_tokens")
