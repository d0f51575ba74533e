"""The running journal on its own: LOGS off is no journal; on, it migrates (RUN_MIGRATIONS=1), records an exchange
into the real database, closes once, and refuses a second process's spool or a bad URL with a startup error."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kodify_proxy.errors import StartupError
from kodify_proxy.exchange import Exchange
from kodify_proxy.journal.service import Journal, open_journal, prepare_journal
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


def served(values: dict[str, str], worker: int = 0, workers: int = 1) -> Journal | None:
    """What `serve` does: prepare once (migrations), then open this worker's journal."""
    settings = load_settings(values)
    prepare_journal(settings, workers)
    return open_journal(settings, worker)


def test_logs_off_is_no_journal(tmp_path: Path) -> None:
    assert open_journal(load_settings({"KODIFY_STATE_DIR": str(tmp_path)})) is None


def test_a_recorded_exchange_is_a_row_after_close(database_url: str, tmp_path: Path) -> None:
    with fresh_database(database_url) as url:
        journal = served(env(url, tmp_path, RUN_MIGRATIONS="1"))
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
        journal = served(env(url, tmp_path))  # no RUN_MIGRATIONS: no table
        assert journal is not None
        journal.start()
        journal.record(finished("kept"))
        journal.close()
        assert journal.writer.status()["spooled_bytes"] > 0  # nothing lost: the next start replays it
        journal = served(env(url, tmp_path, RUN_MIGRATIONS="1"))
        assert journal is not None
        journal.start()
        journal.close()
        assert [r["request_id"] for r in journal_rows(url)] == ["kept"]


def test_one_spool_per_process_and_named_url_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    first = served(env(url, tmp_path, RUN_MIGRATIONS="1"))
    assert first is not None
    try:
        with pytest.raises(StartupError, match="spool"):
            open_journal(load_settings(env(url, tmp_path)))
    finally:
        first.close()
    with pytest.raises(StartupError, match=r"^KODIFY_JOURNAL_URL: database 'mysql' is not supported; use postgresql:"):
        open_journal(load_settings(env("mysql://u@h/db", tmp_path)))


def test_each_worker_spools_apart_and_a_smaller_run_adopts_the_rest(database_url: str, tmp_path: Path) -> None:
    with fresh_database(database_url) as url:
        values = env(url, tmp_path)  # no migrations yet: every row stays spooled
        journals = [served(values, worker, workers=3) for worker in range(3)]
        for worker, journal in enumerate(journals):
            assert journal is not None
            journal.start()
            journal.record(finished(f"w{worker}"))
            journal.close()
        base = tmp_path / "journal-spool"
        assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["worker-1", "worker-2"]
        assert all(next(d.glob("segment-*.jsonl"), None) for d in (base, base / "worker-1", base / "worker-2"))

        journal = served(env(url, tmp_path, RUN_MIGRATIONS="1"), 0, workers=1)  # the next run has one worker
        assert journal is not None
        assert list((base / "worker-1").glob("segment-*")) == list((base / "worker-2").glob("segment-*")) == []
        journal.start()
        journal.close()
        assert sorted(r["request_id"] for r in journal_rows(url)) == ["w0", "w1", "w2"]
