"""Alembic environment for the request journal: our tables and our version table only (never LiteLLM's)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import URL

from kodify_proxy.journal.migrate import migration_engine, url_from_environment
from kodify_proxy.journal.models import VERSION_TABLE, metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> URL:
    # `kodify-proxy migrate` passes the URL; `alembic -c alembic.ini …` reads the same environment it would.
    url = config.attributes.get("url")
    return url if isinstance(url, URL) else url_from_environment()


def run_offline() -> None:
    """Emit SQL (alembic upgrade head --sql) without a connection."""
    context.configure(url=_url(), target_metadata=metadata, version_table=VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate the database over one connection, in one transaction where the database allows it."""
    engine = migration_engine(_url())
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=metadata,
                version_table=VERSION_TABLE,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
