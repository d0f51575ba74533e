"""The journal's subcommands: `kodify-proxy migrate` and `kodify-proxy usage [--since DATE] [--by user|model|day]`."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any


def parse_since(text: str) -> datetime:
    """YYYY-MM-DD or an ISO 8601 time; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD or 2025-11-27T08:00") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def add_journal_parsers(sub: Any) -> None:
    """Register `migrate` and `usage` on the CLI's subparsers."""
    from kodify_proxy.journal.report import GROUPINGS

    migrate = sub.add_parser("migrate", help="create or upgrade the journal tables (alembic upgrade head)")
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.set_defaults(func=cmd_migrate)
    usage = sub.add_parser("usage", help="requests, errors, tokens and p50/p95 latency from the journal")
    usage.add_argument("--since", type=parse_since, default=None, help="from this date/time on (UTC); default: all")
    usage.add_argument("--by", choices=GROUPINGS, default="user", help="one line per user, model or day")
    usage.set_defaults(func=cmd_usage)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade the journal database (KODIFY_JOURNAL_URL, LOGS_DB_* or the SQLite default) to --revision."""
    from kodify_proxy.journal.database import journal_url, render_url
    from kodify_proxy.journal.migrate import MigrationError, upgrade
    from kodify_proxy.settings import load_settings

    try:
        url = journal_url(load_settings())
        revision = upgrade(url, args.revision)
    except (MigrationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"journal schema is at revision {revision} in {render_url(url)}")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    """Print the usage report for the configured journal database."""
    from sqlalchemy.exc import SQLAlchemyError

    from kodify_proxy.journal.database import create_journal_engine, journal_url, render_url
    from kodify_proxy.journal.report import load_usage, render_usage
    from kodify_proxy.settings import load_settings

    try:
        settings = load_settings()
        url = journal_url(settings)
        engine = create_journal_engine(url, settings.journal_db_timeout)
        try:
            rows, total = load_usage(engine, args.by, args.since), load_usage(engine, None, args.since)
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(
            f"error: journal database {render_url(url)}: {reason}. Is it running, and migrated (kodify-proxy migrate)?",
            file=sys.stderr,
        )
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render_usage(rows, total, args.by))
    return 0
