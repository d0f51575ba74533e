"""The running journal on its own: LOGS off is no journal; on, it migrates (RUN_MIGRATIONS=1), records an exchange
into the real database, closes once, and refuses a second process's spool or a bad URL with a startup error. Spools
are per server (its instance directory); an explicit KODIFY_JOURNAL_SPOOL_DIR is one server's; rows an older release
left in the state directory's spool are adopted."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kodify_proxy.errors import InstanceConflict, StartupError
from kodify_proxy.exchange import Exchange
from kodify_proxy.instance import LOCK_NAME, Instance, locate
from kodify_proxy.journal.record import BodyPolicy, build_row
from kodify_proxy.journal.service import Journal, open_journal, prepare_journal
from kodify_proxy.journal.spool import Spool
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


def instance_of(values: dict[str, str], port: int = 8000) -> Instance:
    """The instance directory `serve --port PORT` would have (not claimed: each test is one server)."""
    return locate(load_settings(values), "127.0.0.1", port)


def served(values: dict[str, str], worker: int = 0, workers: int = 1, port: int = 8000) -> Journal | None:
    """What `serve` does: prepare once (migrations), then open this worker's journal."""
    settings = load_settings(values)
    instance = instance_of(values, port)
    prepare_journal(settings, workers, instance)
    return open_journal(settings, instance, worker)


def test_logs_off_is_no_journal(tmp_path: Path) -> None:
    values = {"KODIFY_STATE_DIR": str(tmp_path)}
    assert open_journal(load_settings(values), instance_of(values)) is None


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
            open_journal(load_settings(env(url, tmp_path)), instance_of(env(url, tmp_path)))
    finally:
        first.close()
    bad = env("mysql://u@h/db", tmp_path)
    with pytest.raises(StartupError, match=r"^KODIFY_JOURNAL_URL: database 'mysql' is not supported; use postgresql:"):
        open_journal(load_settings(bad), instance_of(bad))


def test_each_worker_spools_apart_and_a_smaller_run_adopts_the_rest(database_url: str, tmp_path: Path) -> None:
    with fresh_database(database_url) as url:
        values = env(url, tmp_path)  # no migrations yet: every row stays spooled
        journals = [served(values, worker, workers=3) for worker in range(3)]
        for worker, journal in enumerate(journals):
            assert journal is not None
            journal.start()
            journal.record(finished(f"w{worker}"))
            journal.close()
        base = instance_of(values).directory / "journal-spool"
        assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["worker-1", "worker-2"]
        assert all(next(d.glob("segment-*.jsonl"), None) for d in (base, base / "worker-1", base / "worker-2"))

        journal = served(env(url, tmp_path, RUN_MIGRATIONS="1"), 0, workers=1)  # the next run has one worker
        assert journal is not None
        assert list((base / "worker-1").glob("segment-*")) == list((base / "worker-2").glob("segment-*")) == []
        journal.start()
        journal.close()
        assert sorted(r["request_id"] for r in journal_rows(url)) == ["w0", "w1", "w2"]


def old_release_rows(directory: Path, *request_ids: str) -> Spool:
    """Rows spooled where a release before per-server instance directories put them (the spool still open)."""
    spool = Spool(directory)
    spool.append([build_row(finished(request_id), BodyPolicy(keep=True, max_bytes=1024)) for request_id in request_ids])
    return spool


def test_rows_stopped_servers_spooled_are_stored_and_running_ones_are_left(database_url: str, tmp_path: Path) -> None:
    legacy = tmp_path / "journal-spool"  # where releases before instance directories spooled
    old_release_rows(legacy, "old-0").close()
    old_release_rows(legacy / "worker-1", "old-1").close()
    running_old = old_release_rows(legacy / "worker-2", "old-2")  # an older server still has it open
    values = {"KODIFY_STATE_DIR": str(tmp_path)}
    stopped, running = instance_of(values, 8001), instance_of(values, 8002)  # two other addresses
    old_release_rows(stopped.directory / "journal-spool" / "worker-1", "stopped-1").close()
    old_release_rows(running.directory / "journal-spool", "running-0").close()
    running.hold(running.directory / LOCK_NAME, "running")  # its server runs
    with fresh_database(database_url) as url:
        journal = served(env(url, tmp_path, RUN_MIGRATIONS="1"), port=9000)
        assert journal is not None
        journal.start()
        journal.close()
        assert sorted(r["request_id"] for r in journal_rows(url)) == ["old-0", "old-1", "stopped-1"]
    assert len(list((legacy / "worker-2").glob("segment-*"))) == 1  # left to the server that owns it
    assert len(list((running.directory / "journal-spool").glob("segment-*"))) == 1
    assert list(stopped.directory.glob("**/segment-*")) == list(legacy.glob("segment-*")) == []
    running_old.close()
    running.release()


def test_an_explicit_spool_directory_is_one_servers(tmp_path: Path) -> None:
    values = env(f"sqlite:///{tmp_path / 'journal.db'}", tmp_path, KODIFY_JOURNAL_SPOOL_DIR=str(tmp_path / "spool"))
    first = instance_of(values, 8000)
    prepare_journal(load_settings(values), 1, first)
    second = instance_of(values, 8001)
    refusal = r"^KODIFY_JOURNAL_SPOOL_DIR=\S+/spool: another kodify-proxy \(pid \d+, serving 127.0.0.1:8000\) spools"
    with pytest.raises(InstanceConflict, match=refusal + r".* give each server its own KODIFY_JOURNAL_SPOOL_DIR"):
        prepare_journal(load_settings(values), 1, second)
    first.release()
    older = Spool(tmp_path / "spool")  # an older release's worker holds only the spool's own lock
    with pytest.raises(InstanceConflict, match=r"^KODIFY_JOURNAL_SPOOL_DIR=.* spools its journal there"):
        prepare_journal(load_settings(values), 1, second)
    older.close()
    prepare_journal(load_settings(values), 1, second)
    second.release()
