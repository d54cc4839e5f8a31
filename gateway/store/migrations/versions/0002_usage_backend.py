"""Usage rows say which backend answered, with which model name, after how many attempts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("backend", sa.String(100), nullable=True))
        batch.add_column(sa.Column("upstream_model", sa.String(200), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("attempts")
        batch.drop_column("upstream_model")
        batch.drop_column("backend")
