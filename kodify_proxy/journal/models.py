"""The journal's SQLAlchemy table: one row per API request (Tabby's and Continue's events too); Alembic migrations
create it."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text, false

# Alembic's version table for our migrations; LiteLLM's own tables (Prisma, "LiteLLM_*") are never touched.
VERSION_TABLE = "kodify_alembic_version"
JOURNAL_TABLE = "kodify_journal"

metadata = MetaData()

journal = Table(
    JOURNAL_TABLE,
    metadata,
    Column("request_id", String(64), primary_key=True),  # = litellm_call_id = response header x-litellm-call-id
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("user_id", String(255)),
    Column("key_alias", String(255)),
    Column("method", String(16), nullable=False),
    Column("route", String(512), nullable=False),
    Column("model", String(255)),
    Column("upstream", String(512)),
    Column("status", Integer),  # NULL: no response had started (migration 0004; a worker died mid-request)
    Column("error_type", String(128)),
    Column("error_message", Text),
    Column("stream", Boolean, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("n", Integer),
    Column("request_bytes", Integer, nullable=False),
    Column("request_body", Text),
    Column("request_body_truncated", Boolean, nullable=False),
    Column("response_bytes", Integer, nullable=False),
    Column("response_body", Text),
    Column("response_body_truncated", Boolean, nullable=False),
    # Tabby completions and their events (migration 0002): a completion's id is the one its events name.
    Column("completion_id", String(64)),
    Column("language", String(64)),
    Column("event_type", String(64)),  # Tabby: view | select | dismiss; Continue: the event's name (0005: widened)
    Column("choice_index", Integer),
    Column("select_kind", String(32)),
    Column("view_id", String(128)),
    Column("elapsed_ms", Integer),
    # Migration 0003: the row's text held code points no database stores (lone surrogates); they were replaced.
    Column("text_replaced", Boolean, nullable=False, server_default=false()),
    # Migration 0005: Continue's dev-data events, and whether an event row counts as a suggestion shown or accepted
    # (acceptance.py, for Tabby's events and Continue's alike).
    Column("client", String(64)),  # Tabby, Continue, ...: from the User-Agent or the event's userAgent
    Column("client_version", String(64)),
    Column("event_schema", String(32)),  # Continue's data schema (0.1.0, 0.2.0); NULL for Tabby's events
    Column("suggestion", String(16)),  # autocomplete | next_edit; NULL for rows that are no suggestion's event
    Column("shown", Boolean),
    Column("accepted", Boolean),
    Column("aborted", Boolean),  # Continue's next edits: the suggestion shown was then aborted
    Column("response_id", String(128)),  # Continue's requestId: the id of our response the event is about
    Column("event_data", Text),  # the event's JSON without its code fields (dev_data.CODE_FIELDS)
    Index("ix_kodify_journal_started_at", "started_at"),
    Index("ix_kodify_journal_user_id", "user_id"),
    Index("ix_kodify_journal_model", "model"),
    Index("ix_kodify_journal_completion_id", "completion_id"),
)
