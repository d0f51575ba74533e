"""Where the journal lives: its URL (KODIFY_JOURNAL_URL, else LOGS_DB_*, else an SQLite file) and its engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError

from kodify_proxy.settings import Settings

SQLITE_NAME = "journal.sqlite3"


class JournalUrlError(ValueError):
    """KODIFY_JOURNAL_URL can't be used; the message says why."""


def journal_url(settings: Settings) -> URL:
    """KODIFY_JOURNAL_URL, else PostgreSQL from LOGS_DB_*, else `<state dir>/journal.sqlite3`."""
    if settings.journal_url is not None:
        return parse_url(settings.journal_url.get_secret_value())
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


def parse_url(text: str) -> URL:
    """A PostgreSQL or SQLite URL; `postgresql://` means the psycopg 3 driver installed with kodify-proxy."""
    try:
        url = make_url(text)
    except ArgumentError:
        raise JournalUrlError(
            "KODIFY_JOURNAL_URL is not a database URL; use postgresql://USER:PASS@HOST:5432/DB or "
            "sqlite:////path/journal.db"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("postgresql", "sqlite"):
        raise JournalUrlError(
            f"KODIFY_JOURNAL_URL uses {url.get_backend_name()!r}; the journal supports postgresql and sqlite"
        )
    return url


def spool_dir(settings: Settings) -> Path:
    """KODIFY_JOURNAL_SPOOL_DIR, else `<state dir>/journal-spool`."""
    return (
        Path(settings.journal_spool_dir)
        if settings.journal_spool_dir
        else (settings.resolved_state_dir() / "journal-spool")
    )


def _postgresql_connect_args(url: URL, timeout: float) -> dict[str, Any]:
    millis = int(timeout * 1000)
    # Server-side limits so a slow database gives up instead of holding the writer; tcp_user_timeout and
    # keepalives notice a peer that vanished without closing the connection.
    options = " ".join(
        filter(None, [str(url.query.get("options", "")), f"-c statement_timeout={millis} -c lock_timeout={millis}"])
    )
    return {
        "connect_timeout": max(2, round(timeout)),
        "options": options,
        "tcp_user_timeout": millis,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
        "application_name": "kodify-proxy-journal",
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_journal_engine(url: URL, timeout: float = 5.0) -> Engine:
    """An engine for the writer or the report: one pooled connection, bounded waits."""
    if url.get_backend_name() == "sqlite":
        if url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": timeout})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_size=1,
        max_overflow=1,
        pool_pre_ping=True,
        pool_timeout=timeout,
        connect_args=_postgresql_connect_args(url, timeout),
    )


def render_url(url: URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    return url.render_as_string(hide_password=True)
