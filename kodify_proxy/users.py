"""Per-user API tokens in USERS_TABLE: random tokens shown once and stored as SHA-256 hashes, and the table's store.

Why SHA-256 and not bcrypt/argon2: a token is 256 random bits (`secrets.token_urlsafe(32)`), so there is no
dictionary to try and a preimage search is out of reach; slow password hashes only help low-entropy secrets. A plain
hash also lets the server find a token by an indexed equality lookup, one cheap query per cache miss.

The store is synchronous SQLAlchemy (psycopg 3 / sqlite3); the server calls it from a thread (see auth.TokenVerifier).
This module never imports LiteLLM, so the `users` commands start fast.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.schema import CreateSchema

from kodify_proxy import database

log = logging.getLogger("kodify_proxy.users")

TOKEN_PREFIX = "sk-kodify-"
_TOKEN_BYTES = 32  # 256 random bits; token_urlsafe(32) is 43 characters
_TOKEN_SHAPE = re.compile(r"sk-kodify-[A-Za-z0-9_-]{43}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
USER_NAME_RULE = "1-128 characters: letters, digits and . _ @ + - (starting with a letter or digit)"
REQUIRED_COLUMNS = frozenset({"name", "token_sha256", "created_at", "token_issued_at", "expires_at", "revoked_at"})

Status = Literal["active", "revoked", "expired"]
LimitKind = Literal["completions", "chat", "embeddings"]
LIMIT_KINDS: tuple[LimitKind, ...] = get_args(LimitKind)
LIMIT_FIELDS = ("rpm", "concurrency", "tokens_per_day")
UNLIMITED = 0  # a stored override of 0: no limit for this user, whatever KODIFY_LIMIT_* says


@dataclass(frozen=True)
class LimitOverride:
    """One user's own limits for one kind of work (`users limit`): None is the default (KODIFY_LIMIT_*), 0 none."""

    kind: str
    rpm: int | None = None
    concurrency: int | None = None
    tokens_per_day: int | None = None

    def describe(self) -> str:
        """`chat-rpm=5 chat-concurrency=unlimited`, the set fields only."""
        parts = []
        for field in LIMIT_FIELDS:
            value = getattr(self, field)
            if value is not None:
                shown = "unlimited" if value == UNLIMITED else str(value)
                parts.append(f"{self.kind}-{field.replace('_', '-')}={shown}")
        return " ".join(parts)


class UserError(Exception):
    """A `users` command can't be done as asked (no such user, already exists); the message says what to do."""


class UserDatabaseError(Exception):
    """The user database can't be reached or USERS_TABLE is unusable; the message names DB_URL (masked)."""


def new_token() -> str:
    """A fresh random user token: `sk-kodify-` + 43 URL-safe characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def is_token_shaped(token: str) -> bool:
    """Whether `token` looks like one `new_token` makes (checked before any DB lookup)."""
    return _TOKEN_SHAPE.fullmatch(token) is not None


def check_user_name(name: str) -> str:
    """`name` if it is a valid user name, else UserError saying the rule."""
    if _USER_NAME.fullmatch(name) is None:
        raise UserError(f"invalid user name {name!r}: use {USER_NAME_RULE}")
    return name


@dataclass(frozen=True)
class TableName:
    """USERS_TABLE split into an optional schema and a table name, both plain SQL identifiers."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def parse_table_name(raw: str) -> TableName:
    """`table` or `schema.table`; each part a letter or _ then letters, digits, _ (max 63): no quoting needed."""
    parts = raw.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise ValueError(
            f"{raw!r} is not a table name: use `table` or `schema.table`, each part starting with a letter or _ "
            "and made of letters, digits and _ (at most 63 characters)"
        )
    return TableName(parts[0], parts[1]) if len(parts) == 2 else TableName(None, parts[0])


def build_table(metadata: MetaData, table: TableName) -> Table:
    """The users table: one row per user, holding the hash of their current token."""
    return Table(
        table.name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(128), nullable=False, unique=True),
        Column("token_sha256", String(64), nullable=False, unique=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("token_issued_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=True),
        Column("revoked_at", DateTime(timezone=True), nullable=True),
        schema=table.schema,
    )


def limits_table_name(table: TableName) -> TableName:
    """Per-user limits live beside USERS_TABLE, in a table of their own: `<table>_limits` (same schema)."""
    return TableName(table.schema, f"{table.name[:56]}_limits")


def build_limits_table(metadata: MetaData, table: TableName) -> Table:
    """The per-user limits: one row per user and kind of work that differs from the defaults."""
    limits = limits_table_name(table)
    return Table(
        limits.name,
        metadata,
        Column("user_name", String(128), primary_key=True),
        Column("kind", String(16), primary_key=True),
        Column("rpm", Integer, nullable=True),
        Column("concurrency", Integer, nullable=True),
        Column("tokens_per_day", Integer, nullable=True),
        schema=limits.schema,
    )


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes: we store UTC, so say so."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


@dataclass(frozen=True)
class UserRecord:
    """One user as stored (never the token itself)."""

    name: str
    token_sha256: str
    created_at: datetime
    token_issued_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    limits: tuple[LimitOverride, ...] = ()  # their own limits, where they differ from KODIFY_LIMIT_*

    def status(self, now: datetime) -> Status:
        """active, revoked, or expired at `now`."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    @classmethod
    def from_row(cls, row: Any, limits: tuple[LimitOverride, ...] = ()) -> UserRecord:
        """A record from a selected row of the users table (and the user's rows of the limits table)."""
        return cls(
            name=row.name,
            token_sha256=row.token_sha256,
            created_at=_utc(row.created_at),
            token_issued_at=_utc(row.token_issued_at),
            expires_at=_utc_or_none(row.expires_at),
            revoked_at=_utc_or_none(row.revoked_at),
            limits=limits,
        )


@dataclass(frozen=True)
class IssuedToken:
    """A token just created for `name`: the only moment it exists outside the client."""

    name: str
    token: str
    expires_at: datetime | None


def _override(row: Any) -> LimitOverride:
    return LimitOverride(row.kind, row.rpm, row.concurrency, row.tokens_per_day)


class UserStore:
    """USERS_TABLE at DB_URL: create it, add/list/revoke/rotate users, find a user by token hash (all blocking)."""

    def __init__(self, url: URL, table: TableName, timeout: float = 3.0) -> None:
        self.url = url
        self.table_name = table
        metadata = MetaData()
        self.table = build_table(metadata, table)
        self.limits_table = build_limits_table(metadata, table)
        self.timeout = timeout
        self.engine: Engine = database.create_engine(url, timeout=timeout, pool_size=4, application_name="kodify-proxy")

    @classmethod
    def from_settings_values(cls, db_url: str, users_table: str, timeout: float) -> UserStore:
        """A store from the raw DB_URL and USERS_TABLE values (validated by settings already)."""
        return cls(database.parse_url(db_url, "DB_URL"), parse_table_name(users_table), timeout)

    def where(self) -> str:
        """USERS_TABLE at DB_URL, password hidden."""
        return f"table {self.table_name} at {database.render_url(self.url)}"

    def unavailable(self, exc: BaseException) -> UserDatabaseError:
        """The error to raise when the database failed, with the reason and where (never the password)."""
        return UserDatabaseError(f"the user database ({self.where()}) is unavailable: {database.reason(exc)}")

    def ensure_table(self) -> None:
        """Create the database (SQLite file / PostgreSQL database), the schema and the table when missing."""
        try:
            self._prepare_database()
            with self.engine.begin() as conn:
                if self.table_name.schema and self.engine.dialect.name == "postgresql":
                    conn.execute(CreateSchema(self.table_name.schema, if_not_exists=True))
            self._create_table()
            missing = self._missing_columns()
        except SQLAlchemyError as exc:
            raise self.unavailable(exc) from None
        if missing:
            raise UserDatabaseError(
                f"USERS_TABLE={self.table_name} exists but lacks the columns {', '.join(sorted(missing))} "
                "that kodify-proxy needs; set USERS_TABLE to a new table name (it is created on first start)"
            )

    def _prepare_database(self) -> None:
        if self.engine.dialect.name == "sqlite":
            return  # database.create_engine made the file's folder; connecting creates the file
        try:
            with self.engine.connect():
                return
        except SQLAlchemyError as exc:
            if "does not exist" not in database.reason(exc):
                raise
        self._create_postgres_database()

    def _create_postgres_database(self) -> None:
        maintenance = database.short_lived_engine(
            self.url.set(database="postgres"), self.timeout, isolation_level="AUTOCOMMIT"
        )
        try:
            with maintenance.connect() as conn:
                name = maintenance.dialect.identifier_preparer.quote(self.url.database or "")
                conn.execute(text(f"CREATE DATABASE {name}"))
            log.info("Created database %s for the users table", self.url.database)
        finally:
            maintenance.dispose()

    def _create_table(self) -> None:
        try:
            self.table.metadata.create_all(self.engine, checkfirst=True)
        except SQLAlchemyError:
            # Another worker may have created it between our check and CREATE TABLE.
            if not inspect(self.engine).has_table(self.table_name.name, schema=self.table_name.schema):
                raise

    def _missing_columns(self) -> set[str]:
        columns = inspect(self.engine).get_columns(self.table_name.name, schema=self.table_name.schema)
        return set(REQUIRED_COLUMNS - {c["name"] for c in columns})

    def find_by_hash(self, digest: str) -> UserRecord | None:
        """The user whose current token hashes to `digest`, whatever their status, with their own limits."""
        return self._one(self.table.c.token_sha256 == digest)

    def get(self, name: str) -> UserRecord | None:
        """The user called `name`."""
        return self._one(self.table.c.name == name)

    def _one(self, where: Any) -> UserRecord | None:
        """One user and their own limits in one query (a row per kind of work they have limits for, or one row)."""
        limits = self.limits_table
        joined = self.table.outerjoin(limits, limits.c.user_name == self.table.c.name)
        query = select(self.table, limits).select_from(joined).where(where).order_by(limits.c.kind)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return None
        return UserRecord.from_row(rows[0], tuple(_override(row) for row in rows if row.kind is not None))

    def list_users(self) -> list[UserRecord]:
        """Every user, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(self.table).order_by(self.table.c.name)).all()
            limits = conn.execute(select(self.limits_table).order_by(self.limits_table.c.kind)).all()
        by_user: dict[str, list[LimitOverride]] = {}
        for limit in limits:
            by_user.setdefault(limit.user_name, []).append(_override(limit))
        return [UserRecord.from_row(r, tuple(by_user.get(r.name, ()))) for r in rows]

    def set_limits(self, name: str, kind: str, values: dict[str, int | None]) -> UserRecord:
        """Change `name`'s own limits for `kind`: each field given to a number (0: unlimited) or None (back to the
        default); fields not given stay as they are. A kind with nothing of its own left has no row."""
        if kind not in LIMIT_KINDS:
            raise UserError(f"unknown kind of work {kind!r}: use one of {', '.join(LIMIT_KINDS)}")
        record = self.get(name)
        if record is None:
            raise self._no_such_user(name)
        current = next((limit for limit in record.limits if limit.kind == kind), LimitOverride(kind))
        merged = {field: values.get(field, getattr(current, field)) for field in LIMIT_FIELDS}
        table = self.limits_table
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.user_name == name, table.c.kind == kind))
            if any(value is not None for value in merged.values()):
                conn.execute(insert(table).values(user_name=name, kind=kind, **merged))
        return self.get(name) or record

    def add(self, name: str, expires_at: datetime | None) -> IssuedToken:
        """A new user with a new token; UserError when the name is taken."""
        check_user_name(name)
        token, now = new_token(), datetime.now(UTC)
        values = {
            "name": name,
            "token_sha256": hash_token(token),
            "created_at": now,
            "token_issued_at": now,
            "expires_at": expires_at,
            "revoked_at": None,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(self.table).values(**values))
        except IntegrityError:
            raise UserError(
                f"user {name!r} already exists; `kodify-proxy users rotate {name}` gives them a new token"
            ) from None
        return IssuedToken(name, token, expires_at)

    def rotate(self, name: str, expires_at: datetime | None) -> IssuedToken:
        """A new token for `name` (the old one stops working; a revoked user becomes active again)."""
        token = new_token()
        values = {
            "token_sha256": hash_token(token),
            "token_issued_at": datetime.now(UTC),
            "expires_at": expires_at,
            "revoked_at": None,
        }
        self._update(name, values)
        return IssuedToken(name, token, expires_at)

    def revoke(self, name: str) -> UserRecord:
        """Stop `name`'s token from working; the user stays listed (revoked) until rotated."""
        record = self.get(name)
        if record is None:
            raise self._no_such_user(name)
        if record.revoked_at is None:
            self._update(name, {"revoked_at": datetime.now(UTC)})
        return self.get(name) or record

    def _update(self, name: str, values: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(update(self.table).where(self.table.c.name == name).values(**values))
        if result.rowcount == 0:
            raise self._no_such_user(name)

    @staticmethod
    def _no_such_user(name: str) -> UserError:
        return UserError(f"no user {name!r}; `kodify-proxy users list` shows the users, `users add` creates one")

    def close(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
