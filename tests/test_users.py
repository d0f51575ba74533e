"""Users and tokens: the table (real PostgreSQL and SQLite), token format and hashing, and the `users` commands."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import make_url

from kodify_proxy.database import DatabaseUrlError, parse_url
from kodify_proxy.users import (
    UNLIMITED,
    LimitOverride,
    UserDatabaseError,
    UserError,
    UserStore,
    hash_token,
    is_token_shaped,
    new_token,
    parse_table_name,
)
from kodify_proxy.users_cli import parse_expiry, render_users
from tests.servers import REPO


@dataclass
class Backend:
    """A users table in a real database, and the environment the `users` commands need for it."""

    kind: str
    db_url: str
    users_table: str
    store: UserStore

    def env(self) -> dict[str, str]:
        return {"MTSAI_AUTH": "true", "AUTH_TYPE": "DB", "DB_URL": self.db_url, "USERS_TABLE": self.users_table}


def guide_form(url: str) -> str:
    """The guide's `postgresql://user@host:port/db` spelling of a SQLAlchemy psycopg URL."""
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[Backend]:
    """A fresh users table: in its own PostgreSQL schema, or in a new SQLite file."""
    if request.param == "postgresql":
        schema = f"kodify_users_test_{uuid.uuid4().hex[:10]}"
        db_url, table = guide_form(database_url), f"{schema}.users"
    else:
        schema, db_url, table = "", f"sqlite:///{tmp_path / 'db' / 'users.db'}", "kodify_users"
    store = UserStore.from_settings_values(db_url, table, 3.0)
    yield Backend(request.param, db_url, table, store)
    store.close()
    if schema:
        drop_schema(database_url, schema)


def drop_schema(url: str, schema: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def run_users(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`kodify-proxy users ARGS` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "kodify_proxy.cli", "users", *args],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- tokens, names, URLs (pure) ---


def test_tokens_are_random_256_bit_and_shaped() -> None:
    tokens = {new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    for token in list(tokens)[:50]:
        assert token.startswith("sk-kodify-") and len(token) == len("sk-kodify-") + 43
        assert is_token_shaped(token)
    assert not is_token_shaped("sk-kodify-short")
    assert not is_token_shaped(new_token() + "x")
    assert not is_token_shaped("Bearer " + new_token())


def test_the_stored_form_is_sha256_hex() -> None:
    assert hash_token("sk-kodify-abc") == hashlib.sha256(b"sk-kodify-abc").hexdigest()
    assert len(hash_token(new_token())) == 64


@pytest.mark.parametrize(
    ("raw", "schema", "name"),
    [
        ("kodify_users", None, "kodify_users"),
        ("auth.users", "auth", "users"),
        ("_s1._t2", "_s1", "_t2"),
        ("A" * 63, None, "A" * 63),
    ],
)
def test_table_names_and_schemas(raw: str, schema: str | None, name: str) -> None:
    parsed = parse_table_name(raw)
    assert (parsed.schema, parsed.name, str(parsed)) == (schema, name, raw)


@pytest.mark.parametrize(
    "raw", ["", "a.b.c", "1users", "users;drop table x", 'a."b"', "a b", "A" * 64, "schema.", ".users", "ta-ble"]
)
def test_table_names_that_are_not_plain_identifiers_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match=re.escape("is not a table name: use `table` or `schema.table`")):
        parse_table_name(raw)


@pytest.mark.parametrize(
    ("raw", "driver"),
    [
        ("postgresql://u:pw@db:5432/kodify", "postgresql+psycopg"),
        ("postgres://u:pw@db/kodify", "postgresql+psycopg"),
        ("postgresql+asyncpg://u:pw@db/kodify", "postgresql+psycopg"),
        ("postgresql+psycopg://u@db/kodify", "postgresql+psycopg"),
        ("sqlite:///users.db", "sqlite"),
        ("sqlite:////var/lib/kodify/users.db", "sqlite"),
    ],
)
def test_db_urls_in_the_guides_form_map_to_our_drivers(raw: str, driver: str) -> None:
    url = parse_url(raw, "DB_URL")
    assert url.drivername == driver
    assert url.database == make_url(raw).database


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("mysql://u:hunter2@db/kodify", "'mysql' is not supported"),
        ("postgresql://u:hunter2@db", "names no database"),
        ("sqlite://", "SQLite needs a file"),
        ("sqlite:///:memory:", "SQLite needs a file"),
        ("hunter2 is not a url", "DB_URL: not a database URL"),
    ],
)
def test_bad_db_urls_are_explained_without_the_password(raw: str, reason: str) -> None:
    with pytest.raises(DatabaseUrlError, match=reason) as caught:
        parse_url(raw, "DB_URL")
    assert "hunter2" not in str(caught.value)


NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("never", None),
        ("90m", NOW + timedelta(minutes=90)),
        ("12h", NOW + timedelta(hours=12)),
        ("30d", NOW + timedelta(days=30)),
        ("2w", NOW + timedelta(weeks=2)),
        ("2026-12-31", datetime(2026, 12, 31, tzinfo=UTC)),
        ("2026-12-31T18:00+03:00", datetime(2026, 12, 31, 15, 0, tzinfo=UTC)),
        ("2026-04-01T08:30", datetime(2026, 4, 1, 8, 30, tzinfo=UTC)),
    ],
)
def test_expiry_accepts_durations_dates_and_never(raw: str, expected: datetime | None) -> None:
    assert parse_expiry(raw, NOW) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("2026-01-01", "in the past"), ("0d", "not understood"), ("soon", "not understood"), ("5s", "not understood")],
)
def test_expiry_refuses_the_past_and_nonsense(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_expiry(raw, NOW)


# --- the table and the store (real databases) ---


def test_the_table_is_created_once_with_exactly_these_columns(backend: Backend) -> None:
    backend.store.ensure_table()
    backend.store.ensure_table()  # a second start finds it
    table = parse_table_name(backend.users_table)
    inspector = inspect(backend.store.engine)
    columns = {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}
    assert columns == {"id", "name", "token_sha256", "created_at", "token_issued_at", "expires_at", "revoked_at"}
    unique: set[tuple[str | None, ...]] = {
        tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name, schema=table.schema)
    }
    unique |= {tuple(i["column_names"]) for i in inspector.get_indexes(table.name, schema=table.schema) if i["unique"]}
    assert {("name",), ("token_sha256",)} <= unique


def test_only_the_hash_of_a_token_is_stored(backend: Backend) -> None:
    backend.store.ensure_table()
    issued = backend.store.add("alice", None)
    with backend.store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(select(backend.store.table)).all()]
    assert len(rows) == 1
    assert issued.token not in repr(rows)
    assert hash_token(issued.token) in rows[0]
    found = backend.store.find_by_hash(hash_token(issued.token))
    assert found is not None and found.name == "alice" and found.status(datetime.now(UTC)) == "active"


def test_add_revoke_rotate_and_expiry(backend: Backend) -> None:
    store = backend.store
    store.ensure_table()
    first = store.add("bob", datetime.now(UTC) + timedelta(days=1))
    with pytest.raises(UserError, match="already exists; `kodify-proxy users rotate bob`"):
        store.add("bob", None)
    revoked = store.revoke("bob")
    assert revoked.status(datetime.now(UTC)) == "revoked"
    assert store.revoke("bob").revoked_at == revoked.revoked_at  # revoking twice changes nothing
    second = store.rotate("bob", None)
    assert second.token != first.token
    assert store.find_by_hash(hash_token(first.token)) is None
    record = store.find_by_hash(hash_token(second.token))
    assert record is not None and record.status(datetime.now(UTC)) == "active" and record.expires_at is None
    store.rotate("bob", datetime.now(UTC) + timedelta(hours=1))
    later = store.get("bob")
    assert later is not None and later.status(datetime.now(UTC) + timedelta(hours=2)) == "expired"
    for action in (store.revoke, lambda n: store.rotate(n, None)):
        with pytest.raises(UserError, match="no user 'carol'"):
            action("carol")


def test_each_users_own_limits_are_kept_beside_the_table(backend: Backend) -> None:
    store = backend.store
    store.ensure_table()
    issued = store.add("fred", None)
    store.add("gina", None)
    store.set_limits("fred", "chat", {"rpm": 5, "tokens_per_day": UNLIMITED})
    store.set_limits("fred", "completions", {"concurrency": 2})
    store.set_limits("fred", "chat", {"rpm": None})  # back to the default; tokens_per_day stays
    found = store.find_by_hash(hash_token(issued.token))  # what the server's token check loads, in one go
    assert found is not None and found.limits == (
        LimitOverride("chat", None, None, UNLIMITED),
        LimitOverride("completions", None, 2, None),
    )
    listed = {user.name: user.limits for user in store.list_users()}
    assert listed == {"fred": found.limits, "gina": ()}
    store.set_limits("fred", "completions", {"concurrency": None})
    assert [limit.kind for limit in store.get("fred").limits] == ["chat"]  # type: ignore[union-attr]
    with pytest.raises(UserError, match="unknown kind of work 'images'"):
        store.set_limits("fred", "images", {"rpm": 1})
    with pytest.raises(UserError, match="no user 'nobody'"):
        store.set_limits("nobody", "chat", {"rpm": 1})


def test_bad_user_names_are_refused(backend: Backend) -> None:
    backend.store.ensure_table()
    for name in ("", "with space", "-dash-first", "x" * 129, "semi;colon"):
        with pytest.raises(UserError, match="invalid user name"):
            backend.store.add(name, None)


def test_an_existing_table_without_our_columns_is_refused(database_url: str) -> None:
    schema = f"kodify_users_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(text(f'CREATE TABLE "{schema}".users (id serial primary key, login text)'))
    engine.dispose()
    store = UserStore.from_settings_values(database_url, f"{schema}.users", 3.0)
    try:
        with pytest.raises(UserDatabaseError, match=f"USERS_TABLE={schema}.users exists but lacks the columns"):
            store.ensure_table()
    finally:
        store.close()
        drop_schema(database_url, schema)


def test_a_missing_postgresql_database_is_created(database_url: str) -> None:
    name = f"kodify_users_test_{uuid.uuid4().hex[:10]}"
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    store = UserStore.from_settings_values(url, "users", 3.0)
    try:
        store.ensure_table()
        assert store.list_users() == []
    finally:
        store.close()
        admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def test_an_unreachable_database_is_named_without_its_password(free_tcp_port: int) -> None:
    store = UserStore.from_settings_values(f"postgresql://kodify:hunter2@127.0.0.1:{free_tcp_port}/x", "users", 2.0)
    with pytest.raises(UserDatabaseError) as caught:
        store.ensure_table()
    message = str(caught.value)
    assert "hunter2" not in message
    assert f"the user database (table users at postgresql+psycopg://kodify:***@127.0.0.1:{free_tcp_port}/x)" in message
    assert "Connection refused" in message


@pytest.fixture
def free_tcp_port() -> int:
    from tests.servers import free_port

    return free_port()


def test_list_rendering_shows_status_never_tokens(backend: Backend) -> None:
    backend.store.ensure_table()
    issued = backend.store.add("dora", None)
    backend.store.add("erin", datetime.now(UTC) + timedelta(minutes=1))
    backend.store.revoke("erin")
    text_out = render_users(backend.store.list_users(), datetime.now(UTC))
    lines = text_out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "CREATED", "TOKEN", "ISSUED", "EXPIRES", "REVOKED", "LIMITS"]
    assert lines[1].split()[:2] == ["dora", "active"] and "never" in lines[1] and lines[1].endswith("defaults")
    assert lines[2].split()[:2] == ["erin", "revoked"]
    assert issued.token not in text_out and hash_token(issued.token) not in text_out


# --- the `users` commands as real processes ---


def test_users_commands_end_to_end(backend: Backend) -> None:
    env = backend.env()
    added = run_users(env, "add", "alice", "--expires", "30d")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert added.stdout == token + "\n" and is_token_shaped(token)  # stdout is the token alone
    assert token not in added.stderr and "shown only now" in added.stderr and "expires: 20" in added.stderr

    duplicate = run_users(env, "add", "alice")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr and duplicate.stdout == ""

    listed = run_users(env, "list")
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:2] == ["alice", "active"]
    assert token not in listed.stdout and hash_token(token) not in listed.stdout

    revoked = run_users(env, "revoke", "alice")
    assert revoked.returncode == 0 and revoked.stdout.startswith("Revoked alice at ")
    assert run_users(env, "list").stdout.splitlines()[1].split()[:2] == ["alice", "revoked"]

    rotated = run_users(env, "rotate", "alice")
    new = rotated.stdout.strip()
    assert rotated.returncode == 0 and is_token_shaped(new) and new != token
    assert backend.store.find_by_hash(hash_token(token)) is None
    assert run_users(env, "list").stdout.splitlines()[1].split()[:2] == ["alice", "active"]

    limited = run_users(env, "limit", "alice", "--chat-rpm", "3", "--completions-concurrency", "unlimited")
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout.startswith("alice: chat-rpm=3 completions-concurrency=unlimited;")
    assert run_users(env, "list").stdout.splitlines()[1].endswith("chat-rpm=3 completions-concurrency=unlimited")
    reset = run_users(env, "limit", "alice", "--chat-rpm", "default", "--completions-concurrency", "default")
    assert reset.returncode == 0 and reset.stdout.startswith("alice: the defaults (KODIFY_LIMIT_*)")
    wrong = run_users(env, "limit", "alice", "--chat-rpm", "0")
    assert wrong.returncode == 2 and "give a whole number >= 1, unlimited, or default" in wrong.stderr

    missing = run_users(env, "revoke", "nobody")
    assert missing.returncode == 1 and "no user 'nobody'" in missing.stderr
    past = run_users(env, "rotate", "alice", "--expires", "2001-01-01")
    assert past.returncode == 1 and "in the past" in past.stderr


def test_users_commands_need_per_user_auth_settings(tmp_path: Path) -> None:
    result = run_users({"MTSAI_AUTH": "false", "AUTH_TYPE": "NO", "DB_URL": "", "USERS_TABLE": ""}, "list")
    assert result.returncode == 2
    assert "need MTSAI_AUTH=true, AUTH_TYPE=DB and DB_URL" in result.stderr


def test_users_command_with_database_down_names_it_without_password(free_tcp_port: int) -> None:
    env = {
        "MTSAI_AUTH": "true",
        "AUTH_TYPE": "DB",
        "DB_URL": f"postgresql://k:hunter2@127.0.0.1:{free_tcp_port}/k",
        "USERS_TABLE": "users",
    }
    result = run_users(env, "add", "zed")
    assert result.returncode == 1 and result.stdout == ""
    assert "error: the user database (table users at postgresql+psycopg://k:***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr
