"""The usage report from the journal: requests, errors (and of them the requests a limit refused), tokens, p50/p95
latency, and how many suggestions every plugin showed and the developers accepted (autocompletions from Tabby's and
Continue's events, Continue's next edits; acceptance.py says what counts), by user, model, language, day or client."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Engine, FromClause, Select, and_, case, func, literal, select

from kodify_proxy.journal.models import journal

Grouping = Literal["user", "model", "language", "day", "client"]
GROUPINGS: tuple[Grouping, ...] = ("user", "model", "language", "day", "client")
TOTAL = "TOTAL"


@dataclass(frozen=True)
class Acceptance:
    """Suggestions shown and accepted in one group: autocompletions (every plugin) and next edits (Continue)."""

    shown: int = 0
    accepted: int = 0
    next_edits_shown: int = 0
    next_edits_accepted: int = 0


@dataclass(frozen=True)
class UsageRow:
    """One line of the report; an error is a request with an error type (status >= 400, a cut stream)."""

    key: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    p50_ms: float | None
    p95_ms: float | None
    shown: int = 0  # autocompletions shown: Tabby `view` events, Continue `autocomplete` events
    accepted: int = 0  # autocompletions accepted: Tabby `select`, Continue `autocomplete` with accepted: true
    limited: int = 0  # requests refused by a limit (429, counted among the errors too)
    next_edits_shown: int = 0  # Continue `nextEditOutcome` events not aborted
    next_edits_accepted: int = 0

    @property
    def acceptance(self) -> float | None:
        """Accepted per shown autocompletion; None when nothing was shown."""
        return self.accepted / self.shown if self.shown else None

    @property
    def next_edit_acceptance(self) -> float | None:
        """Accepted per next edit shown; None when none was shown."""
        return self.next_edits_accepted / self.next_edits_shown if self.next_edits_shown else None


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _key(
    by: Grouping | None, dialect: str, rows: FromClause = journal, about: FromClause | None = None
) -> ColumnElement[Any]:
    """The grouping column; for events, model and language fall back to the completion's (`about`)."""
    if by is None:
        return literal(TOTAL)
    if by == "user":
        return func.coalesce(rows.c.user_id, "-")
    if by == "client":  # Continue/1.0.5; the name alone when the client did not say its version
        versioned = rows.c.client + "/" + rows.c.client_version
        return func.coalesce(versioned, rows.c.client, "-")
    if by in ("model", "language"):
        fallback = [about.c[by]] if about is not None else []
        return func.coalesce(rows.c[by], *fallback, "-")
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", rows.c.started_at), "YYYY-MM-DD")
    return func.substr(rows.c.started_at, 1, 10)  # SQLite stores 'YYYY-MM-DD HH:MM:SS…' in UTC


def since_filter(query: Select[Any], since: datetime | None) -> Select[Any]:
    """`query` limited to the requests from `since` on (None: all)."""
    return query if since is None else query.where(journal.c.started_at >= since.astimezone(UTC))


def _totals_query(key: ColumnElement[Any], since: datetime | None, with_percentiles: bool) -> Select[Any]:
    columns: list[ColumnElement[Any]] = [
        key.label("key"),
        func.count().label("requests"),
        func.sum(case((journal.c.error_type.is_not(None), 1), else_=0)).label("errors"),
        func.sum(case((journal.c.status == 429, 1), else_=0)).label("limited"),
        func.coalesce(func.sum(journal.c.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(journal.c.completion_tokens), 0).label("completion_tokens"),
    ]
    if with_percentiles:
        columns += [
            func.percentile_cont(0.5).within_group(journal.c.latency_ms).label("p50_ms"),
            func.percentile_cont(0.95).within_group(journal.c.latency_ms).label("p95_ms"),
        ]
    return since_filter(select(*columns), since).group_by(key).order_by(key)


def _python_percentiles(
    engine: Engine, key: ColumnElement[Any], since: datetime | None
) -> dict[str, tuple[float | None, float | None]]:
    """SQLite has no percentile_cont: fetch the latencies per group and interpolate here."""
    latencies: dict[str, list[float]] = defaultdict(list)
    query = since_filter(select(key.label("key"), journal.c.latency_ms), since)
    with engine.connect() as connection:
        for group, latency in connection.execute(query):
            latencies[str(group)].append(float(latency))
    return {group: (percentile(sorted(v), 0.5), percentile(sorted(v), 0.95)) for group, v in latencies.items()}


def _count(rows: FromClause, kind: str, outcome: str) -> ColumnElement[Any]:
    """How many of the rows are suggestions of `kind` counted as `outcome` (shown, accepted)."""
    return func.sum(case((and_(rows.c.suggestion == kind, rows.c[outcome].is_(True)), 1), else_=0))


def load_acceptance(engine: Engine, by: Grouping | None, since: datetime | None = None) -> dict[str, Acceptance]:
    """Group -> suggestions shown and accepted, from every plugin's events; a Tabby event joined to the completion it
    names for the model and language it does not carry itself."""
    events, completions = journal.alias("events"), journal.alias("completions")
    key = _key(by, engine.dialect.name, events, completions)
    joined = events.outerjoin(
        completions, and_(completions.c.completion_id == events.c.completion_id, completions.c.event_type.is_(None))
    )
    counts = [
        _count(events, kind, outcome).label(f"{kind}_{outcome}")
        for kind in ("autocomplete", "next_edit")
        for outcome in ("shown", "accepted")
    ]
    query = select(key.label("key"), *counts).select_from(joined).where(events.c.suggestion.is_not(None)).group_by(key)
    if since is not None:
        query = query.where(events.c.started_at >= since.astimezone(UTC))
    with engine.connect() as connection:
        return {str(row[0]): Acceptance(*(int(value) for value in row[1:])) for row in connection.execute(query)}


def _rounded(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def load_usage(engine: Engine, by: Grouping | None, since: datetime | None = None) -> list[UsageRow]:
    """Report lines per group (by=None: one TOTAL line, zero when nothing matches), ordered by group."""
    key = _key(by, engine.dialect.name)
    in_database = engine.dialect.name == "postgresql"
    with engine.connect() as connection:
        rows = connection.execute(_totals_query(key, since, in_database)).mappings().all()
    outside = {} if in_database else _python_percentiles(engine, key, since)
    acceptance = load_acceptance(engine, by, since)
    report = []
    for row in rows:
        p50, p95 = (row["p50_ms"], row["p95_ms"]) if in_database else outside.get(str(row["key"]), (None, None))
        counted = acceptance.get(str(row["key"]), Acceptance())
        report.append(
            UsageRow(
                str(row["key"]),
                int(row["requests"]),
                int(row["errors"]),
                int(row["prompt_tokens"]),
                int(row["completion_tokens"]),
                _rounded(p50),
                _rounded(p95),
                counted.shown,
                counted.accepted,
                int(row["limited"] or 0),
                counted.next_edits_shown,
                counted.next_edits_accepted,
            )
        )
    if by is None and not report:
        report.append(UsageRow(TOTAL, 0, 0, 0, 0, None, None))
    return report


_HEADERS = (
    "requests",
    "errors",
    "limited",
    "prompt_tokens",
    "completion_tokens",
    "p50_ms",
    "p95_ms",
    "shown",
    "accepted",
    "acceptance",
    "next_edits_shown",
    "next_edits_accepted",
    "next_edit_acceptance",
)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _cells(row: UsageRow) -> list[str]:
    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    return [
        row.key,
        str(row.requests),
        str(row.errors),
        str(row.limited),
        str(row.prompt_tokens),
        str(row.completion_tokens),
        shown(row.p50_ms),
        shown(row.p95_ms),
        str(row.shown),
        str(row.accepted),
        _percent(row.acceptance),
        str(row.next_edits_shown),
        str(row.next_edits_accepted),
        _percent(row.next_edit_acceptance),
    ]


def render_usage(rows: Sequence[UsageRow], total: Sequence[UsageRow], by: Grouping) -> str:
    """A plain-text table, one line per group and a TOTAL line; numbers right-aligned."""
    table = [[by, *_HEADERS]] + [_cells(r) for r in rows] + [_cells(r) for r in total]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = []
    for line in table:
        first = line[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]).rstrip())
    return "\n".join(lines) + "\n"


def usage_objects(rows: Sequence[UsageRow], by: Grouping) -> list[dict[str, Any]]:
    """`usage --json`: one object per group, its key under the grouping's name; rates are fractions (null: nothing
    shown). The TOTAL line is left out: a script sums the groups."""
    return [
        {
            by: row.key,
            "requests": row.requests,
            "errors": row.errors,
            "limited": row.limited,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "p50_ms": row.p50_ms,
            "p95_ms": row.p95_ms,
            "shown": row.shown,
            "accepted": row.accepted,
            "acceptance": row.acceptance,
            "next_edits_shown": row.next_edits_shown,
            "next_edits_accepted": row.next_edits_accepted,
            "next_edit_acceptance": row.next_edit_acceptance,
        }
        for row in rows
    ]
