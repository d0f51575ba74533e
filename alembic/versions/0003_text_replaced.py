"""Rows whose text held code points no database stores: the replaced text is marked.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add `text_replaced` (false in rows journaled before)."""
    with op.batch_alter_table("kodify_journal") as table:  # batch: SQLite can't add columns with constraints
        table.add_column(sa.Column("text_replaced", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    """Drop it again."""
    with op.batch_alter_table("kodify_journal") as table:
        table.drop_column("text_replaced")
