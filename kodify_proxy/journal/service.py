"""The running journal (tracker on the request side, writer on the database side), built once at serve."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import URL

from kodify_proxy.database import DatabaseUrlError, render_url
from kodify_proxy.errors import StartupError
from kodify_proxy.exchange import Exchange
from kodify_proxy.journal.database import journal_engine, journal_url, spool_dir
from kodify_proxy.journal.inflight import InflightTable, open_table, recover_orphans
from kodify_proxy.journal.migrate import MigrationError, upgrade
from kodify_proxy.journal.record import BodyPolicy, build_row
from kodify_proxy.journal.spool import Spool, SpoolLocked, adopt_orphans
from kodify_proxy.journal.writer import JournalStore, JournalWriter, WriterConfig
from kodify_proxy.settings import Settings

log = logging.getLogger("kodify_proxy.journal")


class Journal:
    """What `Runtime.journal` holds when LOGS is on: the row builder in front of the background writer, and the
    in-flight table requests leave their records in while they run."""

    def __init__(self, writer: JournalWriter, url: URL, policy: BodyPolicy, inflight: InflightTable) -> None:
        self.writer = writer
        self.inflight = inflight
        self.url = url
        self.policy = policy
        self._closed = False
        self._lock = threading.Lock()

    def record(self, exchange: Exchange) -> None:
        """The observer's sink: one row per finished request, queued for the writer."""
        self.writer.submit(build_row(exchange, self.policy))

    def start(self) -> None:
        """Start the background writer (at the app's startup)."""
        self.writer.start()

    def close(self) -> None:
        """Flush the writer: to the database, else the spool (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.writer.close()
        self.inflight.close()
        status = self.writer.status()
        log.info(
            "Journal flushed: %d rows stored this run, %d bytes left in the spool",
            status["stored_rows"],
            status["spooled_bytes"],
        )


def build_journal(settings: Settings, url: URL, worker: int = 0) -> Journal:
    """The journal for `url` with the KODIFY_JOURNAL_* settings, spooling in `worker`'s directory (not started);
    what a dead predecessor left in the directory's in-flight table is spooled first."""
    policy = BodyPolicy(keep=settings.journal_bodies, max_bytes=settings.journal_body_max_bytes)
    store = JournalStore(journal_engine(url, settings.journal_db_timeout))
    config = WriterConfig(
        batch_size=settings.journal_batch_size,
        flush_interval=settings.journal_flush_interval,
        retry_interval=settings.journal_retry_interval,
    )
    spool = Spool(spool_dir(settings, worker))
    inflight = open_table(spool)
    writer = JournalWriter(store, spool, config, inflight)
    return Journal(writer, url, policy, inflight)


def prepare_journal(settings: Settings, workers: int) -> None:
    """Once per `serve`, before any worker opens its journal: `upgrade head` when RUN_MIGRATIONS=1, and the rows a
    run with more workers left in spools and in-flight tables no worker of this run owns handed to worker 0's
    spool."""
    if not settings.logs:
        return
    try:
        url = journal_url(settings)
        if settings.run_migrations:
            revision = upgrade(url)
            log.info("Journal schema is at revision %s (%s)", revision, render_url(url))
        adopted = adopt_orphans(spool_dir(settings), workers)
        recover_orphans(spool_dir(settings), workers)  # after: the rows those workers spooled come first
    except (DatabaseUrlError, MigrationError, SpoolLocked) as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(_spool_problem(settings, exc)) from None
    if adopted:
        log.info("Journal: %d spool segments of workers this run does not have handed to worker 1", adopted)


def _spool_problem(settings: Settings, exc: OSError) -> str:
    return f"journal spool {spool_dir(settings)}: {exc}; set KODIFY_JOURNAL_SPOOL_DIR to a writable directory"


def open_journal(settings: Settings, worker: int = 0) -> Journal | None:
    """None when LOGS is off; else the journal of one server process (`prepare_journal` ran first)."""
    if not settings.logs:
        return None
    try:
        url = journal_url(settings)
        journal = build_journal(settings, url, worker)
    except (DatabaseUrlError, SpoolLocked) as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(_spool_problem(settings, exc)) from None
    log.info(
        "Journal on: %s, bodies %s, spool %s",
        render_url(url),
        f"up to {settings.journal_body_max_bytes} bytes" if settings.journal_bodies else "off",
        spool_dir(settings, worker),
    )
    return journal
