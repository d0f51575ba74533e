"""The running journal on its own: LOGS off is no journal; on, it migrates (RUN_MIGRATIONS=1), records an exchange
into the real database, closes once, and refuses a second process's spool or a bad URL with a startup error."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kodify_proxy.errors import StartupError
from kodify_proxy.exchange import Exchange
from kodify_proxy.journal.service import open_journal
from kodify_proxy.settings import load_settings
from tests.journal_support import fresh_database, journal_rows


def finished(request_id: str) -> Exchange:
    return Exchange(
        request_id=request_id,
        method="POST",
        route="/v1/completions",
        path="/v1/completions",
        started_at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
        t0=1.0,
        request_body=b'{"model":"m","prompt":"x"}',
        model="m",
        status=200,
        content_type="application/json",
        response_bytes=2,
        ended_at=1.05,
        completed=True,
    )


def env(url: str, tmp_path: Path, **more: str) -> dict[str, str]:
    return {"LOGS": "True", "KODIFY_JOURNAL_URL": url, "KODIFY_STATE_DIR": str(tmp_path), **more}


def test_logs_off_is_no_journal(tmp_path: Path) -> None:
    assert open_journal(load_settings({"KODIFY_STATE_DIR": str(tmp_path)})) is None


def test_a_recorded_exchange_is_a_row_after_close(database_url: str, tmp_path: Path) -> None:
    with fresh_database(database_url) as url:
        journal = open_journal(load_settings(env(url, tmp_path, RUN_MIGRATIONS="1")))
        assert journal is not None
        journal.start()
        journal.record(finished("service-1"))
        journal.record(finished("service-2"))
        journal.close()
        journal.close()  # a second close (the lifespan, then atexit) is harmless
        rows = journal_rows(url)
        assert [(r["request_id"], r["status"], r["latency_ms"]) for r in rows] == [
            ("service-1", 200, 50.0),
            ("service-2", 200, 50.0),
        ]
        assert journal.writer.status()["spooled_bytes"] == 0


def test_an_unmigrated_database_keeps_its_rows_in_the_spool(database_url: str, tmp_path: Path) -> None:
    with fresh_database(database_url) as url:
        journal = open_journal(load_settings(env(url, tmp_path)))  # no RUN_MIGRATIONS: no table
        assert journal is not None
        journal.start()
        journal.record(finished("kept"))
        journal.close()
        assert journal.writer.status()["spooled_bytes"] > 0  # nothing lost: the next start replays it
        journal = open_journal(load_settings(env(url, tmp_path, RUN_MIGRATIONS="1")))
        assert journal is not None
        journal.start()
        journal.close()
        assert [r["request_id"] for r in journal_rows(url)] == ["kept"]


def test_one_spool_per_process_and_named_url_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    first = open_journal(load_settings(env(url, tmp_path, RUN_MIGRATIONS="1")))
    assert first is not None
    try:
        with pytest.raises(StartupError, match="spool"):
            open_journal(load_settings(env(url, tmp_path)))
    finally:
        first.close()
    with pytest.raises(StartupError, match=r"^KODIFY_JOURNAL_URL: database 'mysql' is not supported; use postgresql:"):
        open_journal(load_settings(env("mysql://u@h/db", tmp_path)))
