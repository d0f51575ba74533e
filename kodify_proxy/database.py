"""The databases kodify-proxy uses — the users table (DB_URL) and the journal (KODIFY_JOURNAL_URL or LOGS_DB_*).

One set of rules for both: how a URL is read (the guide's `postgresql://…` means the psycopg 3 driver installed with
kodify-proxy; an SQLite database must be a file), how it is shown (password hidden), how an engine is made (bounded
waits everywhere) and how a driver error becomes a one-line reason. This module never imports LiteLLM.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import URL, Engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

_POSTGRES_DRIVERS = frozenset(
    {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2", "postgresql+asyncpg"}
)
_SQLITE_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite", "sqlite+aiosqlite"})
URL_FORMS = "postgresql://USER:PASSWORD@HOST:5432/DB or sqlite:////absolute/path.db"


class DatabaseUrlError(ValueError):
    """A database URL that can't be used: `VARIABLE: problem`, never the password."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def parse_url(raw: str, variable: str = "URL") -> URL:
    """`raw` (the value of `variable`) as a URL for our drivers: PostgreSQL via psycopg 3, or an SQLite file."""
    try:
        url = make_url(raw.strip())
    except ArgumentError:
        raise DatabaseUrlError(variable, f"not a database URL; use {URL_FORMS}") from None
    if url.drivername in _POSTGRES_DRIVERS:
        if not url.database:
            raise DatabaseUrlError(variable, "the PostgreSQL URL names no database; end it with /DBNAME")
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in _SQLITE_DRIVERS:
        if not url.database or url.database == ":memory:":
            raise DatabaseUrlError(
                variable, "SQLite needs a file, not memory: sqlite:///relative.db or sqlite:////absolute/path.db"
            )
        return url.set(drivername="sqlite")
    raise DatabaseUrlError(variable, f"database {url.drivername!r} is not supported; use {URL_FORMS}")


def render_url(url: URL) -> str:
    """The URL with its password hidden, for messages, logs and /health."""
    return url.render_as_string(hide_password=True)


def reason(exc: BaseException) -> str:
    """A short reason from a driver error: its first line, without SQLAlchemy's [SQL: …] tail."""
    inner = getattr(exc, "orig", None) or exc
    return (str(inner).strip().splitlines() or [type(inner).__name__])[0]


def sqlite_file(url: URL) -> Path | None:
    """The file of an SQLite URL; None for PostgreSQL."""
    return Path(url.database or "").expanduser() if url.get_backend_name() == "sqlite" else None


def _postgresql_connect_args(url: URL, timeout: float, application_name: str) -> dict[str, Any]:
    millis = int(timeout * 1000)
    # Server-side limits so a slow database gives up instead of holding the caller; tcp_user_timeout and keepalives
    # notice a peer that vanished without closing the connection.
    options = " ".join(
        filter(None, [str(url.query.get("options", "")), f"-c statement_timeout={millis} -c lock_timeout={millis}"])
    )
    return {
        "connect_timeout": max(1, math.ceil(timeout)),
        "options": options,
        "tcp_user_timeout": millis,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
        "application_name": application_name,
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(url: URL, *, timeout: float, pool_size: int, application_name: str) -> Engine:
    """A pooled engine whose every wait (connect, pool, statement, lock) is bounded by `timeout` seconds."""
    file = sqlite_file(url)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        engine = sqlalchemy.create_engine(url, connect_args={"timeout": timeout})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sqlalchemy.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=timeout,
        connect_args=_postgresql_connect_args(url, timeout, application_name),
    )


def short_lived_engine(url: URL, timeout: float, **options: Any) -> Engine:
    """An engine without a pool for one-off work (checks, migrations, creating a database); connecting is bounded."""
    connect_args = {"timeout": timeout} if sqlite_file(url) else {"connect_timeout": max(1, math.ceil(timeout))}
    return sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args, **options)


def connect_error(url: URL, timeout: float) -> str | None:
    """Why connecting to `url` and running SELECT 1 fails (the driver's first line), or None when it works."""
    engine = short_lived_engine(url, timeout)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return reason(exc)
    finally:
        engine.dispose()
    return None
