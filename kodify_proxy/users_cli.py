"""`kodify-proxy users add|list|revoke|rotate|limit`: per-user tokens in USERS_TABLE (a new token is printed once),
and each user's own limits (docs/limits.md)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from kodify_proxy.settings import Settings, SettingsError, load_settings
from kodify_proxy.users import (
    LIMIT_FIELDS,
    LIMIT_KINDS,
    UNLIMITED,
    IssuedToken,
    UserDatabaseError,
    UserError,
    UserRecord,
    UserStore,
)

EXIT_FAILED = 1
_DURATION = re.compile(r"([1-9][0-9]{0,5})([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
EXPIRES_HELP = (
    "when the token stops working: a duration (90m, 12h, 30d, 2w), an ISO date or time (2026-12-31 = 00:00 UTC "
    "that day; 2026-12-31T18:00+03:00; no offset = UTC) or 'never' (default)"
)


def parse_expiry(raw: str, now: datetime) -> datetime | None:
    """--expires as an aware UTC datetime after `now` (None for 'never'); ValueError saying what is accepted."""
    value = raw.strip()
    if value.lower() == "never":
        return None
    match = _DURATION.fullmatch(value.lower())
    if match:
        return now + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--expires {raw!r} is not understood; accepted: {EXPIRES_HELP}") from None
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    if when <= now:
        raise ValueError(f"--expires {raw!r} is in the past; give a later time or a duration such as 30d")
    return when.astimezone(UTC)


def _when(value: datetime | None, empty: str = "-") -> str:
    return empty if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_users(users: list[UserRecord], now: datetime) -> str:
    """`users list` output: one line per user, never a token or its hash."""
    header = ("NAME", "STATUS", "CREATED", "TOKEN ISSUED", "EXPIRES", "REVOKED", "LIMITS")
    rows = [header] + [
        (
            u.name,
            u.status(now),
            _when(u.created_at),
            _when(u.token_issued_at),
            _when(u.expires_at, "never"),
            _when(u.revoked_at),
            " ".join(limit.describe() for limit in u.limits) or "defaults",
        )
        for u in users
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows)


def _print_issued(issued: IssuedToken, verb: str) -> None:
    # The token alone on stdout (TOKEN=$(kodify-proxy users add NAME) works); the words go to stderr.
    print(f"{verb} {issued.name}; expires: {_when(issued.expires_at, 'never')}.", file=sys.stderr)
    print("Their token follows; it is shown only now (the server keeps a hash of it):", file=sys.stderr)
    print(issued.token, flush=True)


def open_store(settings: Settings) -> UserStore:
    """USERS_TABLE at DB_URL, created when missing; SettingsError unless per-user auth is configured."""
    if not (settings.mtsai_auth and settings.auth_type == "DB" and settings.db_url is not None):
        raise SettingsError(
            [
                "`kodify-proxy users` manages per-user tokens, which need MTSAI_AUTH=true, AUTH_TYPE=DB and DB_URL "
                "(and USERS_TABLE, default kodify_users) set as for `kodify-proxy serve`"
            ]
        )
    store = UserStore.from_settings_values(
        settings.db_url.get_secret_value(), settings.users_table, settings.auth_db_timeout
    )
    store.ensure_table()
    return store


def _add(store: UserStore, args: argparse.Namespace, now: datetime) -> None:
    _print_issued(store.add(args.name, parse_expiry(args.expires, now)), "Added user")


def _rotate(store: UserStore, args: argparse.Namespace, now: datetime) -> None:
    _print_issued(store.rotate(args.name, parse_expiry(args.expires, now)), "New token for")


def _revoke(store: UserStore, args: argparse.Namespace, now: datetime) -> None:
    record = store.revoke(args.name)
    print(f"Revoked {record.name} at {_when(record.revoked_at)}; `users rotate {record.name}` issues a new token.")


def _list(store: UserStore, args: argparse.Namespace, now: datetime) -> None:
    sys.stdout.write(render_users(store.list_users(), now))


def parse_limit(raw: str) -> int | None:
    """A `users limit` value: a whole number >= 1, `unlimited` (stored 0) or `default` (None)."""
    value = raw.strip().lower()
    if value == "default":
        return None
    if value == "unlimited":
        return UNLIMITED
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: give a whole number >= 1, unlimited, or default")
    return int(value)


def _limit(store: UserStore, args: argparse.Namespace, now: datetime) -> None:
    record = store.get(args.name)
    if record is None:
        raise UserError(f"no user {args.name!r}; `kodify-proxy users list` shows the users, `users add` creates one")
    for kind in LIMIT_KINDS:
        given = {field: getattr(args, f"{kind}_{field}") for field in LIMIT_FIELDS}
        given = {field: value for field, value in given.items() if value is not _NOT_GIVEN}
        if given:
            record = store.set_limits(args.name, kind, given)
    own = " ".join(limit.describe() for limit in record.limits)
    print(f"{record.name}: {own or 'the defaults (KODIFY_LIMIT_*)'}; servers apply it within KODIFY_AUTH_CACHE_TTL.")


_NOT_GIVEN = object()


def cmd_users(args: argparse.Namespace) -> int:
    """Run one `users` subcommand against the configured user database."""
    action: Callable[[UserStore, argparse.Namespace, datetime], None] = args.users_action
    try:
        store = open_store(load_settings())
    except UserDatabaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        action(store, args, datetime.now(UTC))
    except (UserError, UserDatabaseError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except SQLAlchemyError as exc:
        print(f"error: {store.unavailable(exc)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    return 0


def add_users_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `users` and its subcommands on the main parser."""
    users = sub.add_parser("users", help="manage per-user tokens (MTSAI_AUTH=true, AUTH_TYPE=DB)")
    users.set_defaults(func=cmd_users)
    actions = users.add_subparsers(dest="users_command", required=True)
    add = actions.add_parser("add", help="create a user and print their new token (shown once)")
    add.add_argument("name")
    add.add_argument("--expires", default="never", help=EXPIRES_HELP)
    add.set_defaults(users_action=_add)
    listing = actions.add_parser("list", help="list users and their status (never tokens)")
    listing.set_defaults(users_action=_list)
    revoke = actions.add_parser("revoke", help="stop a user's token from working")
    revoke.add_argument("name")
    revoke.set_defaults(users_action=_revoke)
    rotate = actions.add_parser("rotate", help="replace a user's token (the old one stops working) and print it")
    rotate.add_argument("name")
    rotate.add_argument("--expires", default="never", help=EXPIRES_HELP)
    rotate.set_defaults(users_action=_rotate)
    limit = actions.add_parser(
        "limit",
        help="set a user's own limits (a number, unlimited, or default = KODIFY_LIMIT_*); shown by `users list`",
    )
    limit.add_argument("name")
    for kind in LIMIT_KINDS:
        for field in LIMIT_FIELDS:
            flag = f"--{kind}-{field.replace('_', '-')}"
            limit.add_argument(flag, type=parse_limit, default=_NOT_GIVEN, metavar="N|unlimited|default")
    limit.set_defaults(users_action=_limit)
