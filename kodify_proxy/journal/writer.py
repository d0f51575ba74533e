"""The journal writer: rows buffered in memory, spooled and inserted in batches by one background thread.

`submit` only appends to a deque, so a slow or stopped database never delays a request. The thread appends
each batch to the durable spool, then inserts spooled rows, oldest first, while the database answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Insert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from kodify_proxy.journal.inflight import InflightTable
from kodify_proxy.journal.models import journal
from kodify_proxy.journal.record import JournalRow, minimal_row
from kodify_proxy.journal.spool import Chunk, Spool

log = logging.getLogger("kodify_proxy.journal")


def refused(exc: SQLAlchemyError) -> bool:
    """The database is up but refuses these rows (or their values can't even be sent): set them aside.

    A StatementError that is not the driver's (DBAPIError) was raised while the row's values were encoded.
    """
    return isinstance(exc, DataError | IntegrityError) or (
        isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)
    )


def _insert_statement(dialect: str) -> Insert:
    if dialect == "postgresql":
        return postgresql_insert(journal).on_conflict_do_nothing(index_elements=["request_id"])
    if dialect == "sqlite":
        return sqlite_insert(journal).on_conflict_do_nothing(index_elements=["request_id"])
    raise ValueError(f"the journal supports PostgreSQL and SQLite, not {dialect!r}")


class JournalStore:
    """Inserts rows into kodify_journal; a row stored twice (a replay) is kept once, keyed on request_id."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._statement = _insert_statement(engine.dialect.name)

    def insert(self, rows: Sequence[JournalRow]) -> None:
        """Insert rows in one transaction (none: nothing to do)."""
        if not rows:
            return
        with self.engine.begin() as connection:
            connection.execute(self._statement, [row.model_dump() for row in rows])

    def insert_each(self, rows: Sequence[JournalRow]) -> list[tuple[JournalRow, str]]:
        """Insert rows one by one, a refused row as its minimal row; the rows refused even so, with the reason."""
        lost = []
        for row in rows:
            try:
                self._insert_or_minimal(row)
            except SQLAlchemyError as exc:
                if not refused(exc):
                    raise
                lost.append((row, _reason(exc)))
        return lost

    def _insert_or_minimal(self, row: JournalRow) -> None:
        try:
            self.insert([row])
        except SQLAlchemyError as exc:
            if not refused(exc):
                raise
            reason = _reason(exc)
            log.error(
                "Journal: the database refused request %s (%s); its minimal row is stored", row.request_id, reason
            )
            self.insert([minimal_row(row, reason)])


@dataclass(frozen=True)
class WriterConfig:
    """Batching and retry timing (KODIFY_JOURNAL_BATCH_SIZE, _FLUSH_INTERVAL, _RETRY_INTERVAL)."""

    batch_size: int = 200
    flush_interval: float = 0.5
    retry_interval: float = 2.0


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig or exc).__name__}: {text[0] if text else ''}"


class JournalWriter:
    """One background thread: buffer -> spool (fsync) -> database, oldest first. With an in-flight table, each
    row's slot is freed once the row is spooled, and the table gets a sign of life every round."""

    def __init__(
        self, store: JournalStore, spool: Spool, config: WriterConfig, inflight: InflightTable | None = None
    ) -> None:
        self.store = store
        self.spool = spool
        self.config = config
        self.inflight = inflight
        self._buffer: deque[JournalRow] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._down_reason: str | None = None
        self.stored = 0

    def submit(self, row: JournalRow) -> None:
        """Queue a row; never blocks on the database or the disk."""
        with self._cond:
            self._buffer.append(row)
            if len(self._buffer) >= self.config.batch_size:
                self._cond.notify()

    def start(self) -> None:
        """Start the background thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kodify-journal-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 15.0) -> None:
        """Flush: the buffer goes to the database, or to the spool when the database is down or too slow."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or self._thread.is_alive():
            left = self._take_all()
            self.spool.append(left)  # the thread is stuck in a database call; the spool keeps these for later
            self._spooled(left)
            if left:
                log.warning("Journal: %d rows spooled at shutdown; they are stored at the next start", len(left))
        self.spool.close()
        self.store.engine.dispose()  # the pooled connection (one stuck in a call is left to its thread)

    def status(self) -> dict[str, Any]:
        """For /health and logs: database reachable, rows buffered, spooled bytes, rows stored."""
        with self._cond:
            buffered = len(self._buffer)
        return {
            "database": "down" if self._down_reason else "up",
            "error": self._down_reason,
            "buffered_rows": buffered,
            "spooled_bytes": self.spool.pending_bytes(),
            "stored_rows": self.stored,
            "unrecorded_in_flight": self.inflight.unrecorded if self.inflight is not None else 0,
        }

    def _take_all(self) -> list[JournalRow]:
        with self._cond:
            rows = list(self._buffer)
            self._buffer.clear()
        return rows

    def _wait_for_rows(self) -> tuple[list[JournalRow], bool]:
        with self._cond:
            if len(self._buffer) < self.config.batch_size and not self._stopping:
                self._cond.wait(self._wait_time())
            rows = list(self._buffer)
            self._buffer.clear()
            return rows, self._stopping

    def _wait_time(self) -> float:
        if self._down_reason is None:
            return self.config.flush_interval
        return max(self.config.flush_interval, min(self.config.retry_interval, self._retry_at - time.monotonic()))

    def _run(self) -> None:
        while True:
            rows, stopping = self._wait_for_rows()
            try:
                self._spool_rows(rows)
                rows = []
                if not stopping or self._down_reason is None:
                    self._drain(stopping)
            except Exception:  # a bug must not stop journaling for good: rows not yet spooled go back, retried later
                self._put_back(rows)
                log.exception("Journal writer error; retrying in %g s", self.config.retry_interval)
                self._retry_at = time.monotonic() + self.config.retry_interval
                if stopping:
                    return
            if stopping and not self._buffer:
                return

    def _spool_rows(self, rows: list[JournalRow]) -> None:
        try:
            self.spool.append(rows)
        except OSError as exc:
            # The disk is full or gone: keep the rows in memory rather than lose them, and say so loudly.
            log.error(
                "Journal spool %s is not writable (%s); %d rows kept in memory", self.spool.directory, exc, len(rows)
            )
            self._put_back(rows)
            time.sleep(self.config.retry_interval)
            return
        self._spooled(rows)

    def _spooled(self, rows: list[JournalRow]) -> None:
        """Rows are safe in the spool: their in-flight records are no longer needed."""
        if self.inflight is not None:
            self.inflight.release(rows)
            self.inflight.beat()

    def _put_back(self, rows: list[JournalRow]) -> None:
        """Rows taken from the buffer but not spooled go back to its front, in their order."""
        with self._cond:
            self._buffer.extendleft(reversed(rows))

    def _drain(self, stopping: bool) -> None:
        """Insert spooled rows, oldest first, until the spool is empty or the database fails."""
        if not stopping and time.monotonic() < self._retry_at:
            return
        while (chunk := self.spool.read(self.config.batch_size)) is not None:
            if not self._store(chunk):
                return
            self.spool.commit(chunk)
            if not stopping and len(self._buffer) >= self.config.batch_size:
                return  # spool the new rows first; the backlog continues next round

    def _store(self, chunk: Chunk) -> bool:
        if not chunk.rows:
            return True
        try:
            self._insert(chunk.rows)
        except SQLAlchemyError as exc:
            self._mark_down(exc)
            return False
        self.stored += len(chunk.rows)
        self._mark_up()
        return True

    def _insert(self, rows: Sequence[JournalRow]) -> None:
        try:
            self.store.insert(rows)
        except SQLAlchemyError as exc:
            if not refused(exc):
                raise
            for row, reason in self.store.insert_each(rows):
                self.spool.reject([row], reason)

    def _mark_down(self, exc: BaseException) -> None:
        reason = _reason(exc)
        if self._down_reason is None:
            hint = " (run `kodify-proxy migrate`)" if "kodify_journal" in reason else ""
            log.warning(
                "Journal database unavailable (%s)%s; rows are spooled in %s and stored when it is back",
                reason,
                hint,
                self.spool.directory,
            )
        self._down_reason = reason
        self._retry_at = time.monotonic() + self.config.retry_interval

    def _mark_up(self) -> None:
        if self._down_reason is not None:
            log.warning("Journal database is back; spooled rows are being stored")
        self._down_reason = None
