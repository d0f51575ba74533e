"""The writer against a real PostgreSQL: batches, outages (a TCP forwarder cut), a locked table, refused rows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from kodify_proxy.database import parse_url
from kodify_proxy.journal.database import journal_engine
from kodify_proxy.journal.migrate import upgrade
from kodify_proxy.journal.record import INT_MAX, UNSTORABLE, JournalRow
from kodify_proxy.journal.spool import REJECTED_NAME, Spool
from kodify_proxy.journal.writer import JournalStore, JournalWriter, WriterConfig
from tests.journal_support import TcpForwarder, fresh_database, journal_rows, via_port

FAST = WriterConfig(batch_size=50, flush_interval=0.05, retry_interval=0.2)
T0 = datetime(2025, 11, 27, 8, 0, tzinfo=UTC)


def make_row(i: int) -> JournalRow:
    return JournalRow(
        request_id=f"w-{i:06d}",
        started_at=T0 + timedelta(milliseconds=i),
        user_id="alice",
        method="POST",
        route="/v1/chat/completions",
        model="m",
        status=200,
        latency_ms=12.5,
        stream=True,
        ttft_ms=3.25,
        prompt_tokens=5,
        completion_tokens=3,
        n=1,
        request_bytes=2,
        request_body="{}",
        response_bytes=11,
        response_body="Привет",
    )


@pytest.fixture(scope="module")
def journal_db(database_url: str) -> Iterator[str]:
    with fresh_database(database_url) as url:
        upgrade(parse_url(url))
        yield url


@pytest.fixture()
def clean_db(journal_db: str) -> str:
    engine = sa.create_engine(journal_db)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM kodify_journal"))
    engine.dispose()
    return journal_db


def ids_in_insert_order(url: str) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        # A fresh table that only ever saw inserts: physical order (ctid) is insertion order.
        ids = [r[0] for r in connection.execute(sa.text("SELECT request_id FROM kodify_journal ORDER BY ctid"))]
    engine.dispose()
    return ids


def wait_until(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def make_writer(url: str, spool_dir: Path, timeout: float = 2.0) -> JournalWriter:
    engine = journal_engine(parse_url(url), timeout)
    return JournalWriter(JournalStore(engine), Spool(spool_dir), FAST)


def test_rows_are_stored_in_batches_exactly_as_given(clean_db: str, tmp_path: Path) -> None:
    writer = make_writer(clean_db, tmp_path)
    writer.start()
    rows = [make_row(i) for i in range(120)]
    for row in rows:
        writer.submit(row)
    assert wait_until(lambda: writer.stored == 120)
    writer.close()
    engine = journal_engine(parse_url(clean_db))
    with engine.connect() as connection:
        stored = [
            JournalRow.model_validate(dict(r))
            for r in connection.execute(sa.text("SELECT * FROM kodify_journal ORDER BY request_id")).mappings()
        ]
    engine.dispose()
    assert stored == rows
    assert not writer.spool.pending()


def test_the_same_rows_twice_are_stored_once(clean_db: str) -> None:
    store = JournalStore(journal_engine(parse_url(clean_db)))
    store.insert([make_row(1), make_row(2)])
    store.insert([make_row(2), make_row(3)])
    store.engine.dispose()
    assert ids_in_insert_order(clean_db) == ["w-000001", "w-000002", "w-000003"]


def test_an_outage_spools_rows_and_replays_them_in_order(clean_db: str, tmp_path: Path) -> None:
    target = make_url(clean_db)
    forwarder = TcpForwarder(target.host or "127.0.0.1", target.port or 5432).start()
    writer = make_writer(via_port(clean_db, forwarder.port), tmp_path)
    writer.start()
    try:
        for i in range(30):
            writer.submit(make_row(i))
        assert wait_until(lambda: writer.stored == 30)
        forwarder.stop()
        for i in range(30, 130):
            writer.submit(make_row(i))
        assert wait_until(lambda: writer.status()["database"] == "down" and writer.spool.pending_bytes() > 0)
        assert len(ids_in_insert_order(clean_db)) == 30
        forwarder.start()
        for i in range(130, 150):
            writer.submit(make_row(i))
        assert wait_until(lambda: writer.stored == 150)
    finally:
        writer.close()
        forwarder.stop()
    assert ids_in_insert_order(clean_db) == [f"w-{i:06d}" for i in range(150)]
    assert writer.status()["database"] == "up"
    assert not writer.spool.pending()


def test_a_locked_table_delays_neither_submit_nor_loses_rows(clean_db: str, tmp_path: Path) -> None:
    writer = make_writer(clean_db, tmp_path, timeout=1.0)
    writer.start()
    blocking = sa.create_engine(clean_db)
    blocker = blocking.connect()
    transaction = blocker.begin()
    blocker.execute(sa.text("LOCK TABLE kodify_journal IN ACCESS EXCLUSIVE MODE"))
    try:
        started = time.perf_counter()
        for i in range(1000):
            writer.submit(make_row(i))
        assert time.perf_counter() - started < 0.5  # the database is stuck; submitting is not
        assert wait_until(lambda: writer.status()["database"] == "down")  # lock_timeout gave up the insert
    finally:
        transaction.rollback()
        blocker.close()
        blocking.dispose()
    assert wait_until(lambda: writer.stored == 1000)
    writer.close()
    assert sorted(ids_in_insert_order(clean_db)) == [f"w-{i:06d}" for i in range(1000)]


def test_rows_that_are_not_storable_whole_cost_no_row_beside_them(clean_db: str, tmp_path: Path) -> None:
    writer = make_writer(clean_db, tmp_path)
    writer.start()
    # model_copy skips validation, as a bug of ours would: a count beyond the INTEGER column is clamped when the
    # spooled row is read back; an infinite latency is spooled as null, so only the row's minimal version is kept.
    too_many = make_row(1).model_copy(update={"prompt_tokens": 2**70})
    endless = make_row(2).model_copy(update={"latency_ms": float("inf")})
    for row in (make_row(0), too_many, endless, make_row(3)):
        writer.submit(row)
    assert wait_until(lambda: writer.stored == 4 and not writer.spool.pending())
    writer.close()
    assert ids_in_insert_order(clean_db) == ["w-000000", "w-000001", "w-000002", "w-000003"]
    stored = {row["request_id"]: row for row in journal_rows(clean_db, order="request_id")}
    assert stored["w-000001"]["prompt_tokens"] == INT_MAX
    assert stored["w-000002"]["error_type"] == UNSTORABLE and "latency_ms" in stored["w-000002"]["error_message"]
    assert (stored["w-000002"]["user_id"], stored["w-000002"]["status"]) == ("alice", 200)
    assert stored["w-000003"]["prompt_tokens"] == 5
    assert not (tmp_path / REJECTED_NAME).exists()


def test_a_row_the_database_refuses_is_stored_as_its_minimal_row(clean_db: str) -> None:
    store = JournalStore(journal_engine(parse_url(clean_db), 5.0))
    refused = make_row(1).model_copy(update={"prompt_tokens": 2**40})  # validation skipped: PostgreSQL refuses it
    assert store.insert_each([make_row(0), refused]) == []
    store.engine.dispose()
    stored = {row["request_id"]: row for row in journal_rows(clean_db, order="request_id")}
    assert sorted(stored) == ["w-000000", "w-000001"]
    assert stored["w-000001"]["error_type"] == UNSTORABLE
    assert stored["w-000001"]["error_message"].endswith("status: NumericValueOutOfRange: integer out of range")
    assert (stored["w-000001"]["prompt_tokens"], stored["w-000001"]["user_id"]) == (None, "alice")


def test_close_with_the_database_down_spools_and_the_next_start_stores(clean_db: str, tmp_path: Path) -> None:
    down = make_writer(via_port(clean_db, 1), tmp_path)  # nothing listens on port 1
    down.start()
    for i in range(40):
        down.submit(make_row(i))
    down.close()
    assert down.spool.pending() and ids_in_insert_order(clean_db) == []
    up = make_writer(clean_db, tmp_path)
    up.start()
    assert wait_until(lambda: up.stored == 40)
    up.close()
    assert ids_in_insert_order(clean_db) == [f"w-{i:06d}" for i in range(40)]


def test_an_unmigrated_database_keeps_rows_until_it_is_migrated(database_url: str, tmp_path: Path) -> None:
    with fresh_database(database_url) as url:
        writer = make_writer(url, tmp_path)
        writer.start()
        writer.submit(make_row(0))
        assert wait_until(lambda: writer.status()["database"] == "down")
        assert "kodify_journal" in str(writer.status()["error"])
        upgrade(parse_url(url))
        assert wait_until(lambda: writer.stored == 1)
        writer.close()
        writer.store.engine.dispose()


def test_sqlite_journal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    upgrade(parse_url(url))
    writer = make_writer(url, tmp_path / "spool")
    writer.start()
    for i in range(60):
        writer.submit(make_row(i))
    assert wait_until(lambda: writer.stored == 60)
    writer.close()
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        ids = [r[0] for r in connection.execute(sa.text("SELECT request_id FROM kodify_journal ORDER BY rowid"))]
        body = connection.execute(sa.text("SELECT response_body FROM kodify_journal LIMIT 1")).scalar_one()
    engine.dispose()
    assert ids == [f"w-{i:06d}" for i in range(60)]
    assert body == "Привет"
