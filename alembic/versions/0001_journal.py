"""Create the request journal table kodify_journal.

Revision ID: 0001
Revises:
Create Date: 2025-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create kodify_journal and its indexes (time, user, model)."""
    op.create_table(
        "kodify_journal",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("key_alias", sa.String(255), nullable=True),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("route", sa.String(512), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("upstream", sa.String(512), nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error_type", sa.String(128), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("n", sa.Integer, nullable=True),
        sa.Column("request_bytes", sa.Integer, nullable=False),
        sa.Column("request_body", sa.Text, nullable=True),
        sa.Column("request_body_truncated", sa.Boolean, nullable=False),
        sa.Column("response_bytes", sa.Integer, nullable=False),
        sa.Column("response_body", sa.Text, nullable=True),
        sa.Column("response_body_truncated", sa.Boolean, nullable=False),
    )
    op.create_index("ix_kodify_journal_started_at", "kodify_journal", ["started_at"])
    op.create_index("ix_kodify_journal_user_id", "kodify_journal", ["user_id"])
    op.create_index("ix_kodify_journal_model", "kodify_journal", ["model"])


def downgrade() -> None:
    """Drop kodify_journal (and with it every journaled request)."""
    op.drop_index("ix_kodify_journal_model", table_name="kodify_journal")
    op.drop_index("ix_kodify_journal_user_id", table_name="kodify_journal")
    op.drop_index("ix_kodify_journal_started_at", table_name="kodify_journal")
    op.drop_table("kodify_journal")
