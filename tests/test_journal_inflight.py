"""The in-flight table: its slot layout (exact round trips, text cut to fit), a full table, what a process killed
with SIGKILL leaves in it, and the rows its successor journals from that, stored once in the real PostgreSQL."""

from __future__ import annotations

import logging
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kodify_proxy.database import parse_url
from kodify_proxy.exchange import Exchange
from kodify_proxy.instance import locate
from kodify_proxy.journal.database import journal_engine, spool_dir
from kodify_proxy.journal.inflight import (
    ENDED,
    HEADER_BYTES,
    OPEN,
    SLOT_BYTES,
    TABLE_NAME,
    WORKER_DIED,
    InflightTable,
    Record,
    decode,
    died_row,
    encode,
    open_table,
    read_table,
)
from kodify_proxy.journal.migrate import upgrade
from kodify_proxy.journal.record import BodyPolicy, JournalRow, build_row
from kodify_proxy.journal.service import open_journal, prepare_journal
from kodify_proxy.journal.spool import Spool
from kodify_proxy.journal.writer import JournalStore, JournalWriter, WriterConfig
from kodify_proxy.request_recorder import RequestRecorder
from kodify_proxy.settings import load_settings
from tests.journal_support import fresh_database, journal_rows
from tests.servers import REPO

STARTED = datetime(2026, 12, 6, 10, 0, 0, 250000, tzinfo=UTC)
SCOPE = {"method": "POST", "path": "/v1/chat/completions"}

# --- the slot layout (pure) ---------------------------------------------------------------------------------------


def test_a_record_comes_back_as_it_was_written() -> None:
    record = Record(
        state=ENDED,
        request_id="5b0c4c8e-8d0f-4a57-a0a6-2d2b4b0e7f11",
        started=STARTED.timestamp(),
        method="POST",
        route="/v1/chat/completions",
        user_id="alice",
        key_alias="laptop",
        model="qwen2.5-coder",
        stream=True,
        status=200,
        request_bytes=612,
        latency_ms=1234.5,
        responded=STARTED.timestamp() + 0.25,
    )
    assert len(encode(record)) == SLOT_BYTES
    assert decode(encode(record)) == record
    opened = Record(state=OPEN, request_id="r", started=1.5)  # nothing noted yet: no status, no latency
    assert decode(encode(opened)) == opened


def test_a_free_slot_or_a_begin_cut_short_holds_no_record() -> None:
    assert decode(bytes(SLOT_BYTES)) is None
    written = bytearray(encode(Record(state=OPEN, request_id="r", started=1.0)))
    written[0] = 0  # the state is written last: a begin killed before it leaves the slot free
    assert decode(bytes(written)) is None


def test_text_longer_than_its_room_is_cut_without_a_broken_character() -> None:
    record = Record(state=OPEN, request_id="r", started=1.0, route="/" + "я" * 400, model="m" * 300, user_id="\ud800")
    back = decode(encode(record))
    assert back is not None
    assert back.route == "/" + "я" * 159  # 320 bytes: "/" and 159 two-byte letters, the half letter dropped
    assert back.model == "m" * 192
    assert back.user_id == "?"  # a lone surrogate no encoder takes


def test_the_rows_of_what_a_dead_worker_left() -> None:
    base: dict[str, Any] = {
        "request_id": "r",
        "started": STARTED.timestamp(),
        "method": "POST",
        "route": "/v1/chat/completions",
    }
    who: dict[str, Any] = {"user_id": "alice", "key_alias": "laptop", "model": "m", "request_bytes": 40}
    waiting = died_row(Record(state=OPEN, **base, **who), pid=4242, last_alive=STARTED.timestamp() + 2.5)
    assert (
        waiting.model_dump()
        == JournalRow(
            request_id="r",
            started_at=STARTED,
            user_id="alice",
            key_alias="laptop",
            method="POST",
            route="/v1/chat/completions",
            model="m",
            status=None,
            error_type=WORKER_DIED,
            error_message=waiting.error_message,
            latency_ms=2500.0,
            request_bytes=40,
        ).model_dump()
    )
    assert waiting.error_message is not None
    assert "pid 4242" in waiting.error_message and "its response had not started" in waiting.error_message
    streaming = died_row(Record(state=OPEN, status=200, stream=True, **base), 4242, STARTED.timestamp() + 1)
    assert (streaming.status, streaming.stream, streaming.latency_ms, streaming.user_id) == (200, True, 1000.0, None)
    assert "the client got status 200 and part of the response" in (streaming.error_message or "")
    ended = died_row(Record(state=ENDED, status=200, latency_ms=12.5, **base), 4242, STARTED.timestamp() + 9)
    assert (ended.status, ended.latency_ms, ended.error_type) == (200, 12.5, WORKER_DIED)
    assert "after the response had ended (status 200)" in (ended.error_message or "")
    late = died_row(Record(state=OPEN, **base), 4242, STARTED.timestamp() - 5)  # a clock step back: never negative
    assert late.latency_ms == 0.0


def test_a_file_that_is_no_table_holds_no_records() -> None:
    assert read_table(b"").records == ()
    assert read_table(b"not a table" * 1000).records == ()
    header = b"kodify-inflight1" + struct.pack("<IIId", 0, 2**32 - 1, 1, 0.0)  # a damaged header: slots of 0 bytes
    assert read_table(header.ljust(HEADER_BYTES + SLOT_BYTES, b"\1")).records == ()


def test_a_damaged_record_is_skipped_and_the_others_journaled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path)
    table = InflightTable(tmp_path / TABLE_NAME, slots=4)
    good = exchange(RequestRecorder([], ledger=table))
    with (tmp_path / TABLE_NAME).open("r+b") as damaged:  # slot 1: a time beyond any date
        damaged.seek(HEADER_BYTES + SLOT_BYTES)
        damaged.write(encode(Record(state=OPEN, request_id="damaged", started=1e300)))
    with caplog.at_level(logging.ERROR, "kodify_proxy.journal"):
        open_table(spool)
    chunk = spool.read(10)
    assert chunk is not None and [row.request_id for row in chunk.rows] == [good.request_id]
    assert chunk.rows[0].latency_ms < 60_000  # its end is not taken from the damaged record's time
    assert "makes no row" in caplog.text
    spool.close()


# --- the table in its file ----------------------------------------------------------------------------------------


def exchange(recorder: RequestRecorder, user: str = "alice") -> Exchange:
    begun = recorder.begin("/v1/chat/completions", SCOPE)
    begun.user_id, begun.key_alias, begun.model, begun.request_body = user, "laptop", "m", b"{}"
    return begun


def test_each_step_of_a_request_is_in_the_file_as_soon_as_it_is_made(tmp_path: Path) -> None:
    table = InflightTable(tmp_path / TABLE_NAME, slots=8)
    recorder = RequestRecorder([], ledger=table)
    first, second = exchange(recorder), exchange(recorder, "bob")
    assert (first.slot, second.slot) == (0, 1)
    recorder.identified(first)
    recorder.identified(second)
    first.status, first.content_type = 200, "text/event-stream"
    recorder.responding(first)
    records = {r.request_id: r for r in read_table((tmp_path / TABLE_NAME).read_bytes()).records}
    assert records[first.request_id].status == 200 and records[first.request_id].stream
    assert records[first.request_id].responded is not None and records[first.request_id].user_id == "alice"
    assert records[second.request_id].status is None and records[second.request_id].model == "m"
    assert records[second.request_id].started == pytest.approx(second.started_at.timestamp())
    first.completed, first.ended_at = True, first.t0 + 0.75
    recorder.end(first)  # no sinks: emitted at once, and its slot stays until the writer spools the row
    ended = {r.request_id: r for r in read_table((tmp_path / TABLE_NAME).read_bytes()).records}[first.request_id]
    assert (ended.state, ended.status, ended.latency_ms) == (ENDED, 200, 750.0)
    long = recorder.begin("/v1/chat/completions", {"method": "POST", "path": "/v1/" + "я" * 400})
    long.user_id, long.model = "\ud800", "m" * 300
    recorder.identified(long)
    cut = {r.request_id: r for r in read_table((tmp_path / TABLE_NAME).read_bytes()).records}[long.request_id]
    assert (cut.route, cut.model, cut.user_id) == ("/v1/" + "я" * 158, "m" * 192, "?")  # as `encode` cuts them
    untracked = recorder.begin("/health", {"method": "GET", "path": "/health"}, tracked=False)
    assert untracked.slot == -1 and table.in_use() == 3


class Settle:
    """The recorder's settle timer, fired by the test."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def later(self, delay: float, callback: Callable[[], None]) -> Settle:
        self.callbacks.append(callback)
        return self

    def cancel(self) -> None:
        self.callbacks.clear()


def test_a_request_litellm_served_keeps_its_record_while_its_log_event_is_awaited(tmp_path: Path) -> None:
    settle, recorded = Settle(), list[str]()
    table = InflightTable(tmp_path / TABLE_NAME, slots=8)
    recorder = RequestRecorder([lambda e: recorded.append(e.request_id)], later=settle.later, ledger=table)
    served = exchange(recorder)
    served.awaiting_litellm, served.status, served.completed, served.ended_at = True, 200, True, served.t0 + 0.2
    recorder.end(served)  # answered; LiteLLM's event (tokens, upstream) may take up to SETTLE_SECONDS
    assert recorded == [] and len(settle.callbacks) == 1
    (record,) = read_table(table.path.read_bytes()).records
    assert (record.request_id, record.state, record.status) == (served.request_id, ENDED, 200)  # a death now: a row
    settle.callbacks[0]()
    assert recorded == [served.request_id] and table.in_use() == 1  # until the writer has spooled its row


def test_a_slot_is_free_once_its_row_is_released_and_is_taken_again(tmp_path: Path) -> None:
    table = InflightTable(tmp_path / TABLE_NAME, slots=8)
    recorder = RequestRecorder([], ledger=table)
    done = exchange(recorder)
    recorder.end(done)  # recorded (no sinks here): its slot is the writer's to free now
    assert done.slot == -1 and table.in_use() == 1
    table.release([died_row(Record(state=OPEN, request_id=done.request_id, started=1.0), 1, 1.0)])
    assert read_table((tmp_path / TABLE_NAME).read_bytes()).records == () and table.in_use() == 0
    table.release([died_row(Record(state=OPEN, request_id="not-in-the-table", started=1.0), 1, 1.0)])  # ignored
    reused = exchange(recorder)
    assert reused.slot == 0
    done.status = 502
    recorder.responding(done)  # a late write of the old request never reaches the slot's new owner
    (record,) = read_table((tmp_path / TABLE_NAME).read_bytes()).records
    assert (record.request_id, record.status) == (reused.request_id, None)


def test_a_full_table_never_fails_a_request_and_counts_what_goes_unrecorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = InflightTable(tmp_path / TABLE_NAME, slots=2)
    recorder = RequestRecorder([], ledger=table)
    held = [exchange(recorder), exchange(recorder)]
    with caplog.at_level(logging.WARNING, "kodify_proxy.journal"):
        unrecorded = [exchange(recorder) for _ in range(3)]
    assert [e.slot for e in unrecorded] == [-1, -1, -1] and table.unrecorded == 3
    assert len([r for r in caplog.records if "all 2 in-flight slots" in r.getMessage()]) == 1  # once, not per request
    for lost in unrecorded:  # the request runs as ever, with no record
        recorder.identified(lost)
        recorder.responding(lost)
        recorder.end(lost)
    assert {r.request_id for r in read_table((tmp_path / TABLE_NAME).read_bytes()).records} == {
        e.request_id for e in held
    }
    slot = held[0].slot
    recorder.end(held[0])
    table.release([died_row(Record(state=OPEN, request_id=held[0].request_id, started=1.0), 1, 1.0)])  # spooled
    assert exchange(recorder).slot == slot


# --- a process killed mid-request, and its successor --------------------------------------------------------------

DYING_WORKER = """
import os, signal, sys
from pathlib import Path
from typing import Any
from kodify_proxy.journal.inflight import open_table
from kodify_proxy.journal.record import BodyPolicy, JournalRow, build_row
from kodify_proxy.journal.spool import Spool
from kodify_proxy.request_recorder import RequestRecorder

spool = Spool(Path(sys.argv[1]))
table = open_table(spool)
recorder = RequestRecorder([], ledger=table)
scope = {"method": "POST", "path": "/v1/chat/completions"}
waiting, streaming, ended, spooled, done = (recorder.begin("/v1/chat/completions", scope) for _ in range(5))
for exchange in (waiting, streaming, ended, spooled, done):
    exchange.user_id, exchange.model = "alice", "m"
    recorder.identified(exchange)
for exchange in (streaming, ended, spooled, done):
    exchange.status, exchange.content_type = 200, "text/event-stream"
    recorder.responding(exchange)
for exchange in (ended, spooled, done):
    exchange.completed, exchange.ended_at = True, exchange.t0 + 0.5
    recorder.end(exchange)
rows = [JournalRow(request_id=e.request_id, started_at=e.started_at, user_id="alice", method="POST",
                   route="/v1/chat/completions", model="m", status=200, stream=True, latency_ms=500.0,
                   prompt_tokens=7) for e in (spooled, done)]
spool.append(rows)  # both rows safe in the spool; the first dies before its slot is freed
table.release(rows[1:])
print(" ".join(e.request_id for e in (waiting, streaming, ended, spooled, done)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def run_dying_worker(spool: Path) -> list[str]:
    """A process that begins five requests, leaves them at different steps, and is killed; their ids in order."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DYING_WORKER), str(spool)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    return done.stdout.split()


@pytest.fixture()
def journal_db(database_url: str) -> Iterator[str]:
    with fresh_database(database_url, "kodify_inflight_test") as url:
        upgrade(parse_url(url))
        yield url


def store_spool(spool: Spool, url: str) -> None:
    """What a worker's journal writer does with the spool: every row stored, the spool emptied."""
    writer = JournalWriter(JournalStore(journal_engine(parse_url(url))), spool, WriterConfig(flush_interval=0.05))
    writer.start()
    writer.close()


def test_the_successor_journals_what_a_killed_process_left_once_each(tmp_path: Path, journal_db: str) -> None:
    waiting, streaming, ended, spooled, done = run_dying_worker(tmp_path / "spool")
    spool = Spool(tmp_path / "spool")  # the successor: the dead process's lock went with it
    table = open_table(spool)
    assert read_table((tmp_path / "spool" / TABLE_NAME).read_bytes()).records == ()  # journaled, then emptied
    assert table.in_use() == 0
    store_spool(spool, journal_db)
    rows = {row["request_id"]: row for row in journal_rows(journal_db)}
    assert sorted(rows) == sorted([waiting, streaming, ended, spooled, done])  # one row each, none twice
    got = {rid: (rows[rid]["status"], rows[rid]["error_type"], rows[rid]["user_id"]) for rid in rows}
    assert got == {
        waiting: (None, WORKER_DIED, "alice"),  # no response yet: the client got no status
        streaming: (200, WORKER_DIED, "alice"),  # cut mid-stream
        ended: (200, WORKER_DIED, "alice"),  # answered, its row still in the dead process's memory
        spooled: (200, None, "alice"),  # its real row was spooled first, and wins over the rebuilt one
        done: (200, None, "alice"),
    }
    assert rows[spooled]["prompt_tokens"] == 7 and rows[ended]["latency_ms"] == 500.0
    assert rows[waiting]["model"] == "m" and rows[streaming]["stream"] is True
    assert "pid" in rows[waiting]["error_message"]
    spool.close()


def test_the_writer_frees_a_slot_once_the_row_is_in_the_spool(tmp_path: Path, journal_db: str) -> None:
    spool = Spool(tmp_path / "spool")
    table = open_table(spool)
    store = JournalStore(journal_engine(parse_url(journal_db)))
    writer = JournalWriter(store, spool, WriterConfig(flush_interval=0.05), table)
    recorder = RequestRecorder([lambda e: writer.submit(build_row(e, BodyPolicy()))], ledger=table)
    answered = exchange(recorder)
    answered.status, answered.completed, answered.ended_at = 200, True, answered.t0 + 0.1
    recorder.end(answered)  # the row is built and queued: in memory only, so its record stays
    assert table.in_use() == 1 and len(read_table(table.path.read_bytes()).records) == 1
    started = time.time()
    writer.start()
    deadline = time.monotonic() + 20
    while table.in_use() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert read_table(table.path.read_bytes()).records == ()
    assert read_table(table.path.read_bytes()).last_alive >= started  # the writer's sign of life
    writer.close()
    assert [(row["request_id"], row["error_type"]) for row in journal_rows(journal_db)] == [(answered.request_id, None)]


def test_a_start_with_fewer_workers_journals_the_tables_no_worker_owns(tmp_path: Path, journal_db: str) -> None:
    base = tmp_path / "spool"
    left = run_dying_worker(base / "worker-2")  # an earlier run's third worker
    owned = run_dying_worker(base / "worker-1")  # this run's second worker journals its own table itself
    settings = load_settings({"LOGS": "True", "KODIFY_JOURNAL_URL": journal_db, "KODIFY_JOURNAL_SPOOL_DIR": str(base)})
    instance = locate(settings, "127.0.0.1", 8000)
    prepare_journal(settings, 2, instance)  # as `serve --workers 2` does, before any worker starts
    assert not (base / "worker-2" / TABLE_NAME).exists() and (base / "worker-1" / TABLE_NAME).exists()
    journal = open_journal(settings, instance, worker=0)
    assert journal is not None
    journal.start()
    journal.close()
    rows = {row["request_id"]: row for row in journal_rows(journal_db)}
    assert sorted(rows) == sorted(left)  # every request of the orphan, once; none of the table still owned
    assert [rows[rid]["error_type"] for rid in left] == [WORKER_DIED, WORKER_DIED, WORKER_DIED, None, None]
    assert not set(owned) & set(rows)


def test_a_server_that_stopped_on_another_address_leaves_no_request_unjournaled(
    tmp_path: Path, journal_db: str
) -> None:
    settings = load_settings({"LOGS": "True", "KODIFY_JOURNAL_URL": journal_db, "KODIFY_STATE_DIR": str(tmp_path)})
    gone = locate(settings, "127.0.0.1", 8001)  # a server killed there; this one starts on 8000
    left = run_dying_worker(spool_dir(settings, 1, instance=gone))
    instance = locate(settings, "127.0.0.1", 8000)
    instance.directory.mkdir(parents=True)
    prepare_journal(settings, 1, instance)
    assert not (spool_dir(settings, 1, instance=gone) / TABLE_NAME).exists()
    journal = open_journal(settings, instance)
    assert journal is not None
    journal.start()
    journal.close()
    rows = {row["request_id"]: row["error_type"] for row in journal_rows(journal_db)}
    assert [rows[rid] for rid in left] == [WORKER_DIED, WORKER_DIED, WORKER_DIED, None, None]
