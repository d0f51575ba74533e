"""The journal's subcommands: `kodify-proxy migrate` and
`kodify-proxy usage [--since DATE] [--by user|model|language|day|client] [--json | --html FILE]`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
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
    usage = sub.add_parser(
        "usage",
        help="requests, errors, tokens, p50/p95 latency and the suggestions every plugin showed and had accepted, "
        "from the journal",
    )
    usage.add_argument("--since", type=parse_since, default=None, help="from this date/time on (UTC); default: all")
    usage.add_argument(
        "--by", choices=GROUPINGS, default="user", help="one line per user, model, language, day or client (version)"
    )
    output = usage.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="print the lines as a JSON list of objects, for scripts and dashboards"
    )
    output.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the report as one self-contained HTML page with charts to FILE instead of printing it",
    )
    usage.set_defaults(func=cmd_usage)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade the journal database (KODIFY_JOURNAL_URL, LOGS_DB_* or the SQLite default) to --revision."""
    from kodify_proxy.database import render_url
    from kodify_proxy.journal.database import journal_url
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

    from kodify_proxy.database import reason, render_url
    from kodify_proxy.journal.database import journal_engine, journal_url
    from kodify_proxy.journal.report import load_usage, render_usage, usage_objects
    from kodify_proxy.settings import load_settings

    try:
        settings = load_settings()
        url = journal_url(settings)
        engine = journal_engine(url, settings.journal_db_timeout)
        try:
            if args.html is not None:
                from kodify_proxy.journal.html_report import load_report

                report = load_report(engine, args.since)
            else:
                rows, total = load_usage(engine, args.by, args.since), load_usage(engine, None, args.since)
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        print(
            f"error: journal database {render_url(url)}: {reason(exc)}. "
            "Is it running, and migrated (kodify-proxy migrate)?",
            file=sys.stderr,
        )
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(usage_objects(rows, args.by), indent=2) + "\n")
        return 0
    if args.html is None:
        sys.stdout.write(render_usage(rows, total, args.by))
        return 0
    return _write_page(args.html, report)


def _write_page(path: Path, report: Any) -> int:
    """The report's page written to `path` (through a temporary file: a failed write leaves no half page)."""
    from kodify_proxy.journal.html_report import render_report_html

    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(render_report_html(report), encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        print(f"error: cannot write the usage report to {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"usage report written to {path}")
    return 0
