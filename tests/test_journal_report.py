"""`kodify-proxy usage`: exact numbers per user, model and day, on PostgreSQL and SQLite alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kodify_proxy.database import parse_url
from kodify_proxy.journal.commands import parse_since
from kodify_proxy.journal.database import journal_engine
from kodify_proxy.journal.migrate import upgrade
from kodify_proxy.journal.record import JournalRow
from kodify_proxy.journal.report import Acceptance, UsageRow, load_acceptance, load_usage, percentile, render_usage
from tests.journal_support import filled_journal
from tests.servers import REPO


def row(
    rid: str,
    user: str | None,
    model: str,
    when: str,
    latency: float,
    tokens: tuple[int, int] | None,
    error: str | None = None,
) -> JournalRow:
    return JournalRow(
        request_id=rid,
        started_at=datetime.fromisoformat(when),
        user_id=user,
        method="POST",
        route="/v1/chat/completions",
        model=model,
        status=400 if error else 200,
        error_type=error,
        latency_ms=latency,
        prompt_tokens=tokens[0] if tokens else None,
        completion_tokens=tokens[1] if tokens else None,
    )


ROWS = [
    row("1", "alice", "m1", "2025-11-26T23:30:00+00:00", 10, (5, 3)),
    row("2", "alice", "m1", "2025-11-27T08:00:00+00:00", 20, (7, 2)),
    row("3", "alice", "m2", "2025-11-27T09:00:00+03:00", 30, None, error="invalid_request_error"),
    row("4", "bob", "m1", "2025-11-27T10:00:00+00:00", 40, (1, 1)),
    row("5", None, "m1", "2025-11-27T11:00:00+00:00", 1, None, error="auth_error"),
]
BY_USER = [
    UsageRow("-", 1, 1, 0, 0, 1.0, 1.0),
    UsageRow("alice", 3, 1, 12, 5, 20.0, 29.0),
    UsageRow("bob", 1, 0, 1, 1, 40.0, 40.0),
]
BY_MODEL = [UsageRow("m1", 4, 1, 13, 6, 15.0, 37.0), UsageRow("m2", 1, 1, 0, 0, 30.0, 30.0)]
BY_DAY = [UsageRow("2025-11-26", 1, 0, 5, 3, 10.0, 10.0), UsageRow("2025-11-27", 4, 2, 8, 3, 25.0, 38.5)]
TOTAL = [UsageRow("TOTAL", 5, 2, 13, 6, 20.0, 38.0)]


def tabby(rid: str, when: str, completion: str, event: str | None = None, **fields: object) -> JournalRow:
    """A Tabby completion (no event) or one of its events, by carol."""
    values: dict[str, object] = {"route": "/v1/events" if event else "/v1/completions", "event_type": event}
    values.update(fields)
    return JournalRow(
        request_id=rid,
        started_at=datetime.fromisoformat(when),
        user_id="carol",
        method="POST",
        status=200,
        latency_ms=5,
        completion_id=completion,
        **values,  # type: ignore[arg-type]
    )


DAY = "2025-11-28T10:00:00+00:00"
TABBY_ROWS = [
    tabby("t1", DAY, "cmpl-a", model="m1", language="python"),
    tabby("t2", DAY, "cmpl-b", model="m2", language="rust"),
    tabby("e1", DAY, "cmpl-a", "view"),  # the event row knows no model: the completion's counts
    tabby("e2", DAY, "cmpl-a", "select", model="m1", language="python", select_kind="line"),
    tabby("e3", DAY, "cmpl-b", "view"),
    tabby("e4", DAY, "cmpl-b", "dismiss"),
    tabby("e5", "2025-11-29T10:00:00+00:00", "cmpl-gone", "view"),  # its completion was never journaled
]


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def journal_url(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with filled_journal(request.param, ROWS, database_url, tmp_path_factory.mktemp("report")) as url:
        yield url


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def tabby_url(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with filled_journal(request.param, TABBY_ROWS, database_url, tmp_path_factory.mktemp("tabby-report")) as url:
        yield url


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("user", {"carol": (3, 1)}),
        ("model", {"m1": (1, 1), "m2": (1, 0), "-": (1, 0)}),
        ("language", {"python": (1, 1), "rust": (1, 0), "-": (1, 0)}),
        ("day", {"2025-11-28": (2, 1), "2025-11-29": (1, 0)}),
        (None, {"TOTAL": (3, 1)}),
    ],
)
def test_shown_and_accepted_completions(tabby_url: str, by: str | None, expected: dict[str, tuple[int, int]]) -> None:
    engine = journal_engine(parse_url(tabby_url))
    try:
        assert load_acceptance(engine, by) == {  # type: ignore[arg-type]
            key: Acceptance(*counts) for key, counts in expected.items()
        }
    finally:
        engine.dispose()


def continued(rid: str, user: str, event: str, **fields: object) -> JournalRow:
    """A Continue dev-data event as the route journals it (Continue 1.0.5, model m2, from a TypeScript file)."""
    values: dict[str, object] = {"model": "m2", "language": "typescript", "client_version": "1.0.5"} | fields
    return JournalRow(
        request_id=rid,
        started_at=datetime.fromisoformat("2025-11-30T10:00:00+00:00"),
        user_id=user,
        method="POST",
        route="/v1/dev-data",
        status=200,
        latency_ms=1,
        event_type=event,
        event_schema="0.2.0",
        client="Continue",
        **values,  # type: ignore[arg-type]
    )


def autocompleted(rid: str, user: str, accepted: bool) -> JournalRow:
    return continued(rid, user, "autocomplete", suggestion="autocomplete", shown=True, accepted=accepted)


def next_edited(rid: str, user: str, accepted: bool, aborted: bool = False) -> JournalRow:
    counted = {"shown": not aborted, "accepted": accepted and not aborted, "aborted": aborted}
    return continued(rid, user, "nextEditOutcome", suggestion="next_edit", language=None, **counted)


# Both plugins, two users: carol on Tabby (tabby-agent 1.9.0-dev), dave on Continue 1.0.5.
SEEN = {"client": "Tabby", "client_version": "1.9.0-dev"}
MIXED_ROWS = [
    tabby("mt1", "2025-11-30T09:00:00+00:00", "cmpl-m", model="m1", language="python", **SEEN),
    tabby("me1", "2025-11-30T09:00:01+00:00", "cmpl-m", "view", **SEEN),
    tabby("me2", "2025-11-30T09:00:02+00:00", "cmpl-m", "select", **SEEN),
    autocompleted("ca1", "dave", True),
    autocompleted("ca2", "dave", False),
    autocompleted("ca3", "dave", False),
    next_edited("cn1", "dave", True),
    next_edited("cn2", "dave", False),
    next_edited("cn3", "dave", False, aborted=True),
    continued("ct1", "dave", "tokensGenerated", model="m2", language=None),
]
# (requests, shown, accepted, next edits shown, next edits accepted) per group.
MIXED = {
    "client": {"Continue/1.0.5": (7, 3, 1, 2, 1), "Tabby/1.9.0-dev": (3, 1, 1, 0, 0)},
    "user": {"carol": (3, 1, 1, 0, 0), "dave": (7, 3, 1, 2, 1)},
    # Requests by their own model; a Tabby event's counts go to its completion's (as the language's do).
    "model": {"-": (2, 0, 0, 0, 0), "m1": (1, 1, 1, 0, 0), "m2": (7, 3, 1, 2, 1)},
    "language": {"-": (6, 0, 0, 2, 1), "python": (1, 1, 1, 0, 0), "typescript": (3, 3, 1, 0, 0)},
}


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def mixed_url(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with filled_journal(request.param, MIXED_ROWS, database_url, tmp_path_factory.mktemp("mixed-report")) as url:
        yield url


@pytest.mark.parametrize("by", sorted(MIXED))
def test_one_report_for_both_plugins(mixed_url: str, by: str) -> None:
    engine = journal_engine(parse_url(mixed_url))
    try:
        rows = load_usage(engine, by)  # type: ignore[arg-type]
    finally:
        engine.dispose()
    got = {r.key: (r.requests, r.shown, r.accepted, r.next_edits_shown, r.next_edits_accepted) for r in rows}
    assert got == MIXED[by]


def test_usage_json_by_client(mixed_url: str, tmp_path: Path) -> None:
    done = usage_command(mixed_url, tmp_path, "--by", "client", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {
            "client": "Continue/1.0.5",
            "requests": 7,
            "errors": 0,
            "limited": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "p50_ms": 1.0,
            "p95_ms": 1.0,
            "shown": 3,
            "accepted": 1,
            "acceptance": 1 / 3,
            "next_edits_shown": 2,
            "next_edits_accepted": 1,
            "next_edit_acceptance": 0.5,
        },
        {
            "client": "Tabby/1.9.0-dev",
            "requests": 3,
            "errors": 0,
            "limited": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "p50_ms": 5.0,
            "p95_ms": 5.0,
            "shown": 1,
            "accepted": 1,
            "acceptance": 1.0,
            "next_edits_shown": 0,
            "next_edits_accepted": 0,
            "next_edit_acceptance": None,
        },
    ]


def test_a_tabby_event_spooled_before_0005_counts_as_the_migration_counts_the_stored_ones() -> None:
    old: dict[str, object] = {
        "request_id": "o",
        "started_at": "2025-11-28T10:00:00+00:00",
        "method": "POST",
        "route": "/v1/events",
    }
    old |= {"status": 200, "latency_ms": 1.0, "event_type": "select", "completion_id": "cmpl-o"}
    row = JournalRow.model_validate(old)
    assert (row.client, row.suggestion, row.shown, row.accepted) == ("Tabby", "autocomplete", False, True)
    dismissed = JournalRow.model_validate({**old, "event_type": "dismiss"})
    assert (dismissed.client, dismissed.suggestion) == (None, None)
    stored = JournalRow.model_validate(row.model_dump())  # a row of this version is taken as it is
    assert stored == row


def test_acceptance_in_the_usage_report(tabby_url: str) -> None:
    engine = journal_engine(parse_url(tabby_url))
    try:
        by_language = {
            row.key: (row.requests, row.shown, row.accepted, row.acceptance) for row in load_usage(engine, "language")
        }
    finally:
        engine.dispose()
    # Requests by their own language: the completions and the one event that names it.
    assert by_language == {"-": (4, 1, 0, 0.0), "python": (2, 1, 1, 1.0), "rust": (1, 1, 0, 0.0)}


@pytest.mark.parametrize(("by", "expected"), [("user", BY_USER), ("model", BY_MODEL), ("day", BY_DAY), (None, TOTAL)])
def test_load_usage(journal_url: str, by: str | None, expected: list[UsageRow]) -> None:
    engine = journal_engine(parse_url(journal_url))
    assert load_usage(engine, by, None) == expected  # type: ignore[arg-type]
    engine.dispose()


def test_since_leaves_out_older_requests(journal_url: str) -> None:
    engine = journal_engine(parse_url(journal_url))
    assert load_usage(engine, "day", parse_since("2025-11-27")) == BY_DAY[1:]
    assert load_usage(engine, "user", parse_since("2025-11-27T09:30")) == [
        UsageRow("-", 1, 1, 0, 0, 1.0, 1.0),
        UsageRow("bob", 1, 0, 1, 1, 40.0, 40.0),
    ]
    engine.dispose()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_429s_per_user(kind: str, database_url: str, tmp_path: Path) -> None:
    refused = ROWS[3].model_copy(update={"request_id": "6", "status": 429, "error_type": "rate_limit_error"})
    with filled_journal(kind, [*ROWS, refused], database_url, tmp_path) as url:
        engine = journal_engine(parse_url(url))
        try:
            by_user = {row.key: (row.requests, row.errors, row.limited) for row in load_usage(engine, "user")}
        finally:
            engine.dispose()
    assert by_user == {"-": (1, 1, 0), "alice": (3, 1, 0), "bob": (2, 1, 1)}


def test_render_usage_shows_acceptance() -> None:
    rows = [
        UsageRow("python", 4, 0, 0, 0, 5.0, 5.0, shown=4, accepted=1, next_edits_shown=3, next_edits_accepted=2),
        UsageRow("go", 1, 0, 0, 0, None, None),
    ]
    text = render_usage(rows, rows[:1], "language")
    assert text.splitlines()[0].split() == [
        "language",
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
    ]
    assert text.splitlines()[1].split()[-6:] == ["4", "1", "25.0%", "3", "2", "66.7%"]
    assert text.splitlines()[2].split()[-6:] == ["0", "0", "-", "0", "0", "-"]


def test_render_usage() -> None:
    lines = [
        "model  requests  errors  limited  prompt_tokens  completion_tokens  p50_ms  p95_ms  shown  accepted",
        "m1            4       1        0             13                  6    15.0    37.0      0         0",
        "m2            1       1        0              0                  0    30.0    30.0      0         0",
        "TOTAL         5       2        0             13                  6    20.0    38.0      0         0",
    ]
    acceptance = [
        "  acceptance  next_edits_shown  next_edits_accepted  next_edit_acceptance",
        *["           -                 0                    0                     -"] * 3,
    ]
    expected = "".join(line + tail + "\n" for line, tail in zip(lines, acceptance, strict=True))
    assert render_usage(BY_MODEL, TOTAL, "model") == expected


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([], 0.5, None), ([3.0], 0.95, 3.0), ([1.0, 2.0], 0.5, 1.5), ([1.0, 10.0, 20.0], 0.95, 19.0)],
)
def test_percentile_interpolates_like_percentile_cont(
    values: list[float], fraction: float, expected: float | None
) -> None:
    assert percentile(values, fraction) == expected


def test_parse_since() -> None:
    assert parse_since("2025-11-27") == datetime(2025, 11, 27, tzinfo=UTC)
    with pytest.raises(Exception, match="is not a date"):
        parse_since("yesterday")


def usage_command(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`kodify-proxy usage ARGS` on the journal at `url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGS", "KODIFY_JOURNAL"))}
    return subprocess.run(
        [sys.executable, "-m", "kodify_proxy.cli", "usage", *args],
        env={**env, "KODIFY_JOURNAL_URL": url, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_usage_command(journal_url: str, tmp_path: Path) -> None:
    done = usage_command(journal_url, tmp_path, "--by", "user", "--since", "2025-11-27")
    assert done.returncode == 0, done.stderr
    header = "user requests errors limited prompt_tokens completion_tokens p50_ms p95_ms shown accepted acceptance"
    header += " next_edits_shown next_edits_accepted next_edit_acceptance"
    nothing = ["0", "0", "-", "0", "0", "-"]
    assert [line.split() for line in done.stdout.splitlines()] == [
        header.split(),
        ["-", "1", "1", "0", "0", "0", "1.0", "1.0", *nothing],
        ["alice", "2", "1", "0", "7", "2", "25.0", "29.5", *nothing],
        ["bob", "1", "0", "0", "1", "1", "40.0", "40.0", *nothing],
        ["TOTAL", "4", "2", "0", "8", "3", "25.0", "38.5", *nothing],
    ]


def test_an_empty_journal_reports_a_zero_total(tmp_path: Path) -> None:
    url = parse_url(f"sqlite:///{tmp_path / 'empty.db'}")
    upgrade(url)
    engine = journal_engine(url)
    assert load_usage(engine, "user") == []
    assert load_usage(engine, None) == [UsageRow("TOTAL", 0, 0, 0, 0, None, None)]
    engine.dispose()
