"""Where the journal lives: its URL (KODIFY_JOURNAL_URL, else LOGS_DB_*, else an SQLite file), spools and engine."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import URL, Engine

from kodify_proxy import database
from kodify_proxy.instance import Instance
from kodify_proxy.settings import Settings

SQLITE_NAME = "journal.sqlite3"
SPOOL_NAME = "journal-spool"


def journal_url(settings: Settings) -> URL:
    """KODIFY_JOURNAL_URL, else PostgreSQL from LOGS_DB_*, else `<state dir>/journal.sqlite3`."""
    if settings.journal_url is not None:
        return database.parse_url(settings.journal_url.get_secret_value(), "KODIFY_JOURNAL_URL")
    if settings.logs_db_host:
        password = settings.logs_db_password.get_secret_value() if settings.logs_db_password else None
        return URL.create(
            "postgresql+psycopg",
            username=settings.logs_db_username,
            password=password,
            host=settings.logs_db_host,
            port=settings.logs_db_port,
            database=settings.logs_db_name,
        )
    return URL.create("sqlite", database=str(settings.resolved_state_dir() / SQLITE_NAME))


def spool_dir(settings: Settings, worker: int = 0, *, instance: Instance) -> Path:
    """KODIFY_JOURNAL_SPOOL_DIR, else `journal-spool` in the server's instance directory (each server on a machine
    has its own); worker N > 0 of `serve --workers` has its own `worker-N` inside it (each spool is one process's)."""
    base = Path(settings.journal_spool_dir) if settings.journal_spool_dir else instance.directory / SPOOL_NAME
    return base / f"worker-{worker}" if worker else base


def legacy_spool_dir(settings: Settings) -> Path | None:
    """Where releases before per-server instance directories spooled by default (`<state dir>/journal-spool`, its
    `worker-N` inside), so rows left there are adopted; None when KODIFY_JOURNAL_SPOOL_DIR names the spool."""
    return None if settings.journal_spool_dir else settings.resolved_state_dir() / SPOOL_NAME


def journal_engine(url: URL, timeout: float = 5.0) -> Engine:
    """An engine for the writer or the report: one pooled connection (one more under load), bounded waits."""
    return database.create_engine(url, timeout=timeout, pool_size=1, application_name="kodify-proxy-journal")
