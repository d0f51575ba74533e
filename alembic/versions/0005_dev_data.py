"""Continue's dev-data events beside Tabby's, and one acceptance count for both: the client, the event's schema and
JSON, Continue's request id, and whether a row counts as a suggestion shown or accepted.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS: tuple[tuple[str, sa.types.TypeEngine[object]], ...] = (
    ("client", sa.String(64)),
    ("client_version", sa.String(64)),
    ("event_schema", sa.String(32)),
    ("suggestion", sa.String(16)),
    ("shown", sa.Boolean()),
    ("accepted", sa.Boolean()),
    ("aborted", sa.Boolean()),
    ("response_id", sa.String(128)),
    ("event_data", sa.Text()),
)
# Tabby's events journaled before: a view is an autocompletion shown, a select one accepted (acceptance.py).
_TABBY_EVENTS = (
    "UPDATE kodify_journal SET client = 'Tabby', suggestion = 'autocomplete', "
    "shown = (event_type = 'view'), accepted = (event_type = 'select') WHERE event_type IN ('view', 'select')"
)


def upgrade() -> None:
    """Widen event_type to Continue's event names, add the columns (NULL in rows journaled before, but for Tabby's
    view and select events, counted as they were)."""
    with op.batch_alter_table("kodify_journal") as table:  # batch: SQLite can't alter or add with constraints
        table.alter_column("event_type", type_=sa.String(64), existing_type=sa.String(16), existing_nullable=True)
        for name, kind in COLUMNS:
            table.add_column(sa.Column(name, kind, nullable=True))
    op.execute(_TABBY_EVENTS)
    op.execute("UPDATE kodify_journal SET client = 'Tabby' WHERE event_type = 'dismiss'")


def downgrade() -> None:
    """Drop them again (Continue's event names are cut to 16 characters; the events' own fields are lost)."""
    op.execute("UPDATE kodify_journal SET event_type = substr(event_type, 1, 16) WHERE length(event_type) > 16")
    with op.batch_alter_table("kodify_journal") as table:
        for name, _ in reversed(COLUMNS):
            table.drop_column(name)
        table.alter_column("event_type", type_=sa.String(16), existing_type=sa.String(64), existing_nullable=True)
