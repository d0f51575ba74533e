"""Alembic migrations of the journal, up and down from an empty database, with the exact resulting columns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from kodify_proxy.database import parse_url
from kodify_proxy.journal.migrate import current_revision, downgrade, head_revision, upgrade
from kodify_proxy.journal.models import VERSION_TABLE, metadata
from tests.journal_support import fresh_database
from tests.servers import REPO

# information_schema.columns: name, data_type, character_maximum_length, is_nullable, in table order.
EXPECTED_COLUMNS = [
    ("request_id", "character varying", 64, "NO"),
    ("started_at", "timestamp with time zone", None, "NO"),
    ("user_id", "character varying", 255, "YES"),
    ("key_alias", "character varying", 255, "YES"),
    ("method", "character varying", 16, "NO"),
    ("route", "character varying", 512, "NO"),
    ("model", "character varying", 255, "YES"),
    ("upstream", "character varying", 512, "YES"),
    ("status", "integer", None, "NO"),
    ("error_type", "character varying", 128, "YES"),
    ("error_message", "text", None, "YES"),
    ("stream", "boolean", None, "NO"),
    ("latency_ms", "double precision", None, "NO"),
    ("ttft_ms", "double precision", None, "YES"),
    ("prompt_tokens", "integer", None, "YES"),
    ("completion_tokens", "integer", None, "YES"),
    ("n", "integer", None, "YES"),
    ("request_bytes", "integer", None, "NO"),
    ("request_body", "text", None, "YES"),
    ("request_body_truncated", "boolean", None, "NO"),
    ("response_bytes", "integer", None, "NO"),
    ("response_body", "text", None, "YES"),
    ("response_body_truncated", "boolean", None, "NO"),
]
EVENT_COLUMNS = [  # added by 0002
    ("completion_id", "character varying", 64, "YES"),
    ("language", "character varying", 64, "YES"),
    ("event_type", "character varying", 16, "YES"),
    ("choice_index", "integer", None, "YES"),
    ("select_kind", "character varying", 32, "YES"),
    ("view_id", "character varying", 128, "YES"),
    ("elapsed_ms", "integer", None, "YES"),
]
TEXT_REPLACED_COLUMN = ("text_replaced", "boolean", None, "NO")  # added by 0003
DEV_DATA_COLUMNS = [  # added by 0005
    ("client", "character varying", 64, "YES"),
    ("client_version", "character varying", 64, "YES"),
    ("event_schema", "character varying", 32, "YES"),
    ("suggestion", "character varying", 16, "YES"),
    ("shown", "boolean", None, "YES"),
    ("accepted", "boolean", None, "YES"),
    ("aborted", "boolean", None, "YES"),
    ("response_id", "character varying", 128, "YES"),
    ("event_data", "text", None, "YES"),
]
COLUMNS_0003 = [*EXPECTED_COLUMNS, *EVENT_COLUMNS, TEXT_REPLACED_COLUMN]
# 0005 widened event_type to Continue's event names.
HEAD_EVENT_COLUMNS = [
    ("event_type", "character varying", 64, "YES") if c[0] == "event_type" else c for c in EVENT_COLUMNS
]
NULLABLE_STATUS = ("status", "integer", None, "YES")  # 0004: a worker died before the response started
HEAD_COLUMNS = [
    *(NULLABLE_STATUS if column[0] == "status" else column for column in EXPECTED_COLUMNS),
    *HEAD_EVENT_COLUMNS,
    TEXT_REPLACED_COLUMN,
    *DEV_DATA_COLUMNS,
]
_INDEX = "INDEX {} ON public.kodify_journal USING btree ({})"
EXPECTED_INDEXES = {
    "kodify_journal_pkey": "CREATE UNIQUE " + _INDEX.format("kodify_journal_pkey", "request_id"),
    "ix_kodify_journal_started_at": "CREATE " + _INDEX.format("ix_kodify_journal_started_at", "started_at"),
    "ix_kodify_journal_user_id": "CREATE " + _INDEX.format("ix_kodify_journal_user_id", "user_id"),
    "ix_kodify_journal_model": "CREATE " + _INDEX.format("ix_kodify_journal_model", "model"),
}
HEAD_INDEXES = {
    **EXPECTED_INDEXES,
    "ix_kodify_journal_completion_id": "CREATE " + _INDEX.format("ix_kodify_journal_completion_id", "completion_id"),
}
LITELLM_TABLE = '"LiteLLM_SpendLogs"'


@pytest.fixture()
def empty_db(database_url: str) -> Iterator[str]:
    """An empty database, except for a table standing in for LiteLLM's own, which must survive."""
    with fresh_database(database_url) as url:
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text(f"CREATE TABLE {LITELLM_TABLE} (request_id text PRIMARY KEY)"))
            connection.execute(sa.text(f"INSERT INTO {LITELLM_TABLE} VALUES ('keep-me')"))
        engine.dispose()
        yield url


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(sql))]
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    return {
        str(r[0]) for r in query(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    }


def columns(url: str) -> list[tuple[object, ...]]:
    return query(
        url,
        "SELECT column_name, data_type, character_maximum_length, is_nullable "
        "FROM information_schema.columns WHERE table_name = 'kodify_journal' ORDER BY ordinal_position",
    )


def test_upgrade_and_downgrade_from_an_empty_postgresql(empty_db: str) -> None:
    url = parse_url(empty_db)
    assert current_revision(url) is None
    assert upgrade(url) == head_revision() == "0005"
    assert tables(empty_db) == {"LiteLLM_SpendLogs", "kodify_journal", "kodify_alembic_version"}
    assert columns(empty_db) == HEAD_COLUMNS
    assert {
        row[0]: row[1]
        for row in query(empty_db, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'kodify_journal'")
    } == HEAD_INDEXES
    assert query(empty_db, "SELECT version_num FROM kodify_alembic_version") == [("0005",)]
    assert upgrade(url) == "0005"  # a second upgrade is a no-op

    assert downgrade(url) is None
    assert tables(empty_db) == {"LiteLLM_SpendLogs", "kodify_alembic_version"}
    assert query(empty_db, "SELECT count(*) FROM kodify_alembic_version") == [(0,)]
    assert query(empty_db, f"SELECT request_id FROM {LITELLM_TABLE}") == [("keep-me",)]
    assert upgrade(url) == "0005"  # and back up again
    assert columns(empty_db) == HEAD_COLUMNS


def test_0002_to_0005_from_the_first_head_keep_the_rows(empty_db: str) -> None:
    url = parse_url(empty_db)
    assert upgrade(url, "0001") == "0001"
    assert columns(empty_db) == EXPECTED_COLUMNS
    insert = (
        "INSERT INTO kodify_journal (request_id, started_at, method, route, status, stream, latency_ms, "
        "request_bytes, request_body_truncated, response_bytes, response_body_truncated) VALUES "
        "('old-row', now(), 'POST', '/v1/completions', 200, false, 1.5, 0, false, 0, false)"
    )
    engine = sa.create_engine(empty_db)
    with engine.begin() as connection:
        connection.execute(sa.text(insert))
    engine.dispose()
    assert upgrade(url) == "0005"
    assert columns(empty_db) == HEAD_COLUMNS
    names = ", ".join(name for name, *_ in [*EVENT_COLUMNS, TEXT_REPLACED_COLUMN, *DEV_DATA_COLUMNS])
    assert query(empty_db, f"SELECT request_id, {names} FROM kodify_journal") == [
        ("old-row", *[None] * 7, False, *[None] * 9)
    ]
    engine = sa.create_engine(empty_db)
    with engine.begin() as connection:
        connection.execute(sa.text(insert.replace("'old-row'", "'no-status'").replace(", 200,", ", NULL,")))
    engine.dispose()
    assert downgrade(url, "0003") == "0003"  # NOT NULL again: a row without a status gets 0
    assert query(empty_db, "SELECT request_id, status FROM kodify_journal ORDER BY 1") == [
        ("no-status", 0),
        ("old-row", 200),
    ]
    assert downgrade(url, "0001") == "0001"
    assert columns(empty_db) == EXPECTED_COLUMNS
    assert query(empty_db, "SELECT request_id, latency_ms FROM kodify_journal ORDER BY 1") == [
        ("no-status", 1.5),
        ("old-row", 1.5),
    ]


def _insert_events(url: str, events: list[tuple[str, str]]) -> None:
    values = ", ".join(
        f"('{rid}', now(), 'POST', '/v1/events', 200, false, 1.0, 0, false, 0, false, {event})" for rid, event in events
    )
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO kodify_journal (request_id, started_at, method, route, status, stream, latency_ms, "
                "request_bytes, request_body_truncated, response_bytes, response_body_truncated, event_type) "
                f"VALUES {values}"
            )
        )
    engine.dispose()


def test_0005_counts_the_tabby_events_journaled_before_and_goes_back_down(empty_db: str) -> None:
    url = parse_url(empty_db)
    assert upgrade(url, "0003") == "0003"
    assert columns(empty_db) == COLUMNS_0003
    _insert_events(empty_db, [("v", "'view'"), ("s", "'select'"), ("d", "'dismiss'"), ("c", "NULL")])
    assert upgrade(url) == "0005"
    assert query(
        empty_db, "SELECT request_id, client, suggestion, shown, accepted, aborted FROM kodify_journal ORDER BY 1"
    ) == [
        ("c", None, None, None, None, None),
        ("d", "Tabby", None, None, None, None),
        ("s", "Tabby", "autocomplete", False, True, None),
        ("v", "Tabby", "autocomplete", True, False, None),
    ]
    _insert_events(empty_db, [("n", "'nextEditWithHistory'")])  # 19 characters: a Continue event name
    assert downgrade(url, "0003") == "0003"
    assert columns(empty_db) == COLUMNS_0003
    assert query(empty_db, "SELECT event_type FROM kodify_journal WHERE request_id = 'n'") == [("nextEditWithHist",)]


def test_the_models_match_the_migrated_schema(empty_db: str) -> None:
    upgrade(parse_url(empty_db))
    engine = sa.create_engine(empty_db)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "version_table": VERSION_TABLE})
        differences = compare_metadata(context, metadata)
    engine.dispose()
    # The only difference allowed: LiteLLM's table, which our metadata rightly doesn't know.
    assert [d for d in differences if not (d[0] == "remove_table" and d[1].name == "LiteLLM_SpendLogs")] == []


def test_upgrade_and_downgrade_sqlite(tmp_path: Path) -> None:
    url = parse_url(f"sqlite:///{tmp_path / 'deep' / 'journal.db'}")
    assert upgrade(url) == "0005"
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        names = [r[1] for r in connection.execute(sa.text("PRAGMA table_info(kodify_journal)"))]
    engine.dispose()
    assert names == [c[0] for c in HEAD_COLUMNS]
    assert downgrade(url, "0001") == "0001"
    unpooled = sa.create_engine(url, poolclass=sa.pool.NullPool)  # each inspection's connection closed at once
    assert "completion_id" not in [c["name"] for c in sa.inspect(unpooled).get_columns("kodify_journal")]
    assert downgrade(url) is None
    assert "kodify_journal" not in sa.inspect(unpooled).get_table_names()


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LOGS", "KODIFY_JOURNAL"))}
    return subprocess.run(args, env={**clean, **env}, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_guide_command_works_from_the_repo_root_and_from_elsewhere(empty_db: str, tmp_path: Path) -> None:
    alembic = str(Path(sys.executable).with_name("alembic"))
    env = {"KODIFY_JOURNAL_URL": empty_db}
    from_root = run([alembic, "-c", "alembic.ini", "upgrade", "head"], env, REPO)
    assert from_root.returncode == 0, from_root.stderr
    assert "Running upgrade  -> 0001" in from_root.stderr
    down = run([alembic, "-c", str(REPO / "alembic.ini"), "downgrade", "base"], env, tmp_path)
    assert down.returncode == 0, down.stderr
    assert "kodify_journal" not in tables(empty_db)


def test_the_guide_command_reads_logs_db_variables(empty_db: str, tmp_path: Path) -> None:
    url = sa.make_url(empty_db)
    env = {
        "LOGS": "True",
        "LOGS_DB_HOST": str(url.host),
        "LOGS_DB_PORT": str(url.port or 5432),
        "LOGS_DB_NAME": str(url.database),
        "LOGS_DB_USERNAME": str(url.username),
        "LOGS_DB_PASSWORD": "unused-with-trust-auth",
    }
    done = run(
        [str(Path(sys.executable).with_name("alembic")), "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
        env,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert columns(empty_db) == HEAD_COLUMNS


def test_kodify_proxy_migrate(empty_db: str, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "kodify_proxy.cli", "migrate"]
    done = run(cli, {"KODIFY_JOURNAL_URL": empty_db}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"journal schema is at revision 0005 in {sa.make_url(empty_db)}"
    assert columns(empty_db) == HEAD_COLUMNS


def test_migrate_names_an_unreachable_database(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "kodify_proxy.cli", "migrate"]
    done = run(cli, {"KODIFY_JOURNAL_URL": "postgresql://kodify:s3cret@127.0.0.1:1/journal"}, tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: journal database postgresql+psycopg://kodify:***@127.0.0.1:1/journal: ")
    assert "Connection refused" in done.stderr
    assert "s3cret" not in done.stderr


def test_migrate_without_any_database_setting_uses_the_sqlite_default(tmp_path: Path) -> None:
    done = run([sys.executable, "-m", "kodify_proxy.cli", "migrate"], {"KODIFY_STATE_DIR": str(tmp_path)}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "journal.sqlite3").is_file()


def test_an_installed_package_finds_the_migrations_in_the_working_directory(empty_db: str, tmp_path: Path) -> None:
    # As in the Docker image: kodify_proxy installed apart from the source tree, which is the working directory.
    site = tmp_path / "site"
    shutil.copytree(REPO / "kodify_proxy", site / "kodify_proxy", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"KODIFY_JOURNAL_URL": empty_db, "PYTHONPATH": str(site)}
    cli = [sys.executable, "-m", "kodify_proxy.cli", "migrate"]
    elsewhere = run(cli, env, tmp_path)
    assert elsewhere.returncode == 1
    assert elsewhere.stderr.startswith(
        f"error: alembic.ini not found in {site} or {tmp_path} or /vllm-workspace/middleware/gpt_logger: "
    )
    from_source = run(cli, env, REPO)
    assert from_source.returncode == 0, from_source.stderr
    assert columns(empty_db) == HEAD_COLUMNS
