"""Tabby completions and their view/select/dismiss events: the fields acceptance is counted from.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS: tuple[tuple[str, sa.types.TypeEngine[object]], ...] = (
    ("completion_id", sa.String(64)),
    ("language", sa.String(64)),
    ("event_type", sa.String(16)),
    ("choice_index", sa.Integer()),
    ("select_kind", sa.String(32)),
    ("view_id", sa.String(128)),
    ("elapsed_ms", sa.Integer()),
)


def upgrade() -> None:
    """Add the event and completion columns (NULL in rows journaled before) and an index on completion_id."""
    with op.batch_alter_table("kodify_journal") as table:  # batch: SQLite can't add columns with constraints
        for name, kind in COLUMNS:
            table.add_column(sa.Column(name, kind, nullable=True))
    op.create_index("ix_kodify_journal_completion_id", "kodify_journal", ["completion_id"])


def downgrade() -> None:
    """Drop them again (the events' fields are lost; their rows stay)."""
    op.drop_index("ix_kodify_journal_completion_id", table_name="kodify_journal")
    with op.batch_alter_table("kodify_journal") as table:
        for name, _ in reversed(COLUMNS):
            table.drop_column(name)
