"""The journal's Alembic migrations (alembic/ at the repo root): upgrade, downgrade and the current revision."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, create_engine, pool
from sqlalchemy.exc import SQLAlchemyError

from kodify_proxy.journal.database import journal_url, render_url
from kodify_proxy.journal.models import VERSION_TABLE
from kodify_proxy.settings import SettingsError, load_settings

# alembic.ini sits at the root of the source tree: next to the package in a checkout (editable install), else in
# the working directory (the Docker image installs the package and keeps the source as its WORKDIR), else where
# the guide's Kubernetes init container finds it.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]
_GUIDE_ALEMBIC_INI = Path("/vllm-workspace/middleware/gpt_logger/alembic.ini")
CONNECT_TIMEOUT = 10


class MigrationError(Exception):
    """Migrations could not run; the message names the database and the cause."""


def url_from_environment() -> URL:
    """The journal URL the way `kodify-proxy serve` finds it (for `alembic -c alembic.ini …`)."""
    try:
        return journal_url(load_settings())
    except (SettingsError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


def migration_engine(url: URL) -> Engine:
    """A short-lived engine without a pool, for Alembic."""
    if url.get_backend_name() == "sqlite":
        if url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        return create_engine(url, poolclass=pool.NullPool)
    return create_engine(url, poolclass=pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT})


def find_alembic_ini() -> Path:
    """The alembic.ini whose alembic/ folder holds the journal's migrations."""
    candidates = [_SOURCE_ROOT / "alembic.ini", Path.cwd() / "alembic.ini", _GUIDE_ALEMBIC_INI]
    for candidate in candidates:
        if candidate.is_file() and (candidate.parent / "alembic" / "env.py").is_file():
            return candidate
    raise MigrationError(
        f"alembic.ini not found in {' or '.join(str(c.parent) for c in candidates)}: the migrations ship with the "
        "source tree (alembic/, alembic.ini); run from the source directory (the image's working directory)"
    )


def alembic_config(url: URL) -> Config:
    """Alembic's config from the repo's alembic.ini, pointed at `url`, leaving our logging alone."""
    config = Config(str(find_alembic_ini()))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    return config


def head_revision() -> str | None:
    """The newest migration in alembic/versions."""
    return ScriptDirectory.from_config(Config(str(find_alembic_ini()))).get_current_head()


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
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return (
        f"journal database {render_url(url)}: {first}. Check KODIFY_JOURNAL_URL or LOGS_DB_HOST/PORT/NAME/"
        "USERNAME/PASSWORD and that the server is running"
    )
