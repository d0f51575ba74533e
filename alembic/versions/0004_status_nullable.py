"""A row may have no status: a request in flight in a worker that died before its response started.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """`status` takes NULL (the client got no status line)."""
    with op.batch_alter_table("kodify_journal") as table:  # batch: SQLite can't alter a column in place
        table.alter_column("status", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    """`status` NOT NULL again; rows without one get 0, which no HTTP response has."""
    op.execute("UPDATE kodify_journal SET status = 0 WHERE status IS NULL")
    with op.batch_alter_table("kodify_journal") as table:
        table.alter_column("status", existing_type=sa.Integer(), nullable=False)
