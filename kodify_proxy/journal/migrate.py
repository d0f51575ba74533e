"""The journal's Alembic migrations (alembic/ at the repo root): where they are, their head, what a database has
applied, upgrade and downgrade. `kodify-proxy migrate`, RUN_MIGRATIONS=1 and `kodify-proxy check` all use these."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from kodify_proxy.database import reason, render_url, short_lived_engine, sqlite_file
from kodify_proxy.journal.database import journal_url
from kodify_proxy.journal.models import VERSION_TABLE
from kodify_proxy.settings import SettingsError, load_settings

# alembic.ini sits at the root of the source tree: next to the package in a checkout (editable install), else in
# the working directory (the Docker image installs the package and keeps the source as its WORKDIR), else where
# the guide's Kubernetes init container finds it. One order, for `migrate` and `check` alike.
ALEMBIC_INI_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "alembic.ini",
    Path("alembic.ini"),
    Path("/vllm-workspace/middleware/gpt_logger/alembic.ini"),
)
CONNECT_TIMEOUT = 10


class MigrationError(Exception):
    """Migrations could not run; the message names the database and the cause."""


def url_from_environment() -> URL:
    """The journal URL the way `kodify-proxy serve` finds it (for `alembic -c alembic.ini …`)."""
    try:
        return journal_url(load_settings())
    except (SettingsError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


def find_alembic_ini() -> Path:
    """The first alembic.ini of ALEMBIC_INI_CANDIDATES whose alembic/ folder holds the journal's migrations."""
    for candidate in ALEMBIC_INI_CANDIDATES:
        if candidate.is_file() and (candidate.parent / "alembic" / "env.py").is_file():
            return candidate.resolve()
    raise MigrationError(
        f"alembic.ini not found in {' or '.join(str(c.resolve().parent) for c in ALEMBIC_INI_CANDIDATES)}: the "
        "migrations ship with the source tree (alembic/, alembic.ini); run from the source directory (the image's "
        "working directory)"
    )


def alembic_config(url: URL | None = None) -> Config:
    """Alembic's config from the repo's alembic.ini, pointed at `url`, leaving our logging alone."""
    config = Config(str(find_alembic_ini()))
    if url is not None:
        config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    return config


def head_revisions() -> tuple[str, ...]:
    """The head revision(s) of the migrations in alembic/versions."""
    return tuple(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))


def head_revision() -> str | None:
    """The newest migration in alembic/versions."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def migration_engine(url: URL) -> Engine:
    """A short-lived engine without a pool, for Alembic (an SQLite file's folder is created)."""
    file = sqlite_file(url)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
    return short_lived_engine(url, CONNECT_TIMEOUT)


def applied_revisions(url: URL, timeout: float = CONNECT_TIMEOUT) -> tuple[str, ...] | None:
    """The revisions in the journal's version table; None when the table does not exist. Creates nothing; a
    database error is raised as is (SQLAlchemyError)."""
    engine = short_lived_engine(url, timeout)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            return tuple(sorted(str(row[0]) for row in rows))
    finally:
        engine.dispose()


def current_revision(url: URL) -> str | None:
    """The revision recorded in kodify_alembic_version; None for a database never migrated."""
    engine = migration_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
    except SQLAlchemyError as exc:
        raise MigrationError(_unreachable(url, exc)) from None
    finally:
        engine.dispose()


def upgrade(url: URL, revision: str = "head") -> str | None:
    """Upgrade the journal schema; the revision the database is at afterwards."""
    try:
        command.upgrade(alembic_config(url), revision)
    except SQLAlchemyError as exc:
        raise MigrationError(_unreachable(url, exc)) from None
    return current_revision(url)


def downgrade(url: URL, revision: str = "base") -> str | None:
    """Downgrade the journal schema (base drops the journal table)."""
    try:
        command.downgrade(alembic_config(url), revision)
    except SQLAlchemyError as exc:
        raise MigrationError(_unreachable(url, exc)) from None
    return current_revision(url)


def _unreachable(url: URL, exc: SQLAlchemyError) -> str:
    return (
        f"journal database {render_url(url)}: {reason(exc)}. Check KODIFY_JOURNAL_URL or LOGS_DB_HOST/PORT/NAME/"
        "USERNAME/PASSWORD and that the server is running"
    )
