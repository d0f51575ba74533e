"""The running journal (tracker on the request side, writer on the database side), built once at serve."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import URL

from kodify_proxy.database import DatabaseUrlError, render_url
from kodify_proxy.errors import InstanceConflict, StartupError
from kodify_proxy.exchange import Exchange
from kodify_proxy.instance import LOCK_NAME, Instance, stopped_siblings
from kodify_proxy.journal.database import SPOOL_NAME, journal_engine, journal_url, legacy_spool_dir, spool_dir
from kodify_proxy.journal.inflight import InflightTable, open_table, recover_orphans, recover_tables
from kodify_proxy.journal.migrate import MigrationError, upgrade
from kodify_proxy.journal.record import BodyPolicy, build_row
from kodify_proxy.journal.spool import Spool, SpoolLocked, adopt_orphans, adopt_spools
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


def build_journal(settings: Settings, url: URL, instance: Instance, worker: int = 0) -> Journal:
    """The journal for `url` with the KODIFY_JOURNAL_* settings, spooling in `worker`'s directory (not started);
    what a dead predecessor left in the directory's in-flight table is spooled first."""
    policy = BodyPolicy(keep=settings.journal_bodies, max_bytes=settings.journal_body_max_bytes)
    store = JournalStore(journal_engine(url, settings.journal_db_timeout))
    config = WriterConfig(
        batch_size=settings.journal_batch_size,
        flush_interval=settings.journal_flush_interval,
        retry_interval=settings.journal_retry_interval,
    )
    spool = Spool(spool_dir(settings, worker, instance=instance))
    inflight = open_table(spool)
    writer = JournalWriter(store, spool, config, inflight)
    return Journal(writer, url, policy, inflight)


def prepare_journal(settings: Settings, workers: int, instance: Instance) -> None:
    """Once per `serve`, before any worker opens its journal: an explicit KODIFY_JOURNAL_SPOOL_DIR claimed for this
    server, `upgrade head` when RUN_MIGRATIONS=1, the rows a run with more workers left in spools and in-flight
    tables no worker of this run owns handed to worker 0's spool, and so are those servers no longer running left
    (on another address of the state directory, or an older release's in the state directory itself)."""
    if not settings.logs:
        return
    try:
        url = journal_url(settings)
        _claim_spool(settings, instance)
        if settings.run_migrations:
            revision = upgrade(url)
            log.info("Journal schema is at revision %s (%s)", revision, render_url(url))
        base = spool_dir(settings, instance=instance)
        adopted = adopt_orphans(base, workers)
        recover_orphans(base, workers)  # after: the rows those workers spooled come first
        _adopt_stranded(settings, instance)
    except (DatabaseUrlError, MigrationError, SpoolLocked) as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(_spool_problem(settings, instance, exc)) from None
    if adopted:
        log.info("Journal: %d spool segments of workers this run does not have handed to worker 1", adopted)


def _claim_spool(settings: Settings, instance: Instance) -> None:
    """A spool directory named by KODIFY_JOURNAL_SPOOL_DIR is this server's alone: held for its life, and not in use
    by a worker of another server (an older release's holds only its spool lock)."""
    if not settings.journal_spool_dir:
        return  # in the instance directory, which claim_instance holds
    base = spool_dir(settings, instance=instance)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    refusal = (
        f"KODIFY_JOURNAL_SPOOL_DIR={base}: another kodify-proxy{{holder}} spools its journal there; give each server "
        "its own KODIFY_JOURNAL_SPOOL_DIR, or unset it (each server then spools in its own instance directory)"
    )
    try:
        Spool(base).close()
    except SpoolLocked:
        raise InstanceConflict(refusal.format(holder="")) from None
    instance.hold(base / LOCK_NAME, refusal)


def _adopt_stranded(settings: Settings, instance: Instance) -> None:
    legacy = legacy_spool_dir(settings)
    if legacy is None:
        return  # an explicit spool directory: this server's, nothing else to look at
    base = spool_dir(settings, instance=instance)
    with stopped_siblings(instance) as stopped:
        for other in [legacy, *(sibling / SPOOL_NAME for sibling in stopped)]:
            moved, busy = adopt_spools(base, other)
            if moved:
                log.info("Journal: %d spool segments a stopped server left in %s handed to worker 1", moved, other)
            for spool in busy:
                log.warning("Journal: the spool %s is in use by a running kodify-proxy; left to it", spool)
            # after the segments: the rows its workers did spool come first (a killed server's requests in flight)
            recover_tables(base, [other, *sorted(other.glob("worker-*"))] if other.is_dir() else [])


def _spool_problem(settings: Settings, instance: Instance, exc: OSError) -> str:
    where = spool_dir(settings, instance=instance)
    return f"journal spool {where}: {exc}; set KODIFY_JOURNAL_SPOOL_DIR to a writable directory"


def open_journal(settings: Settings, instance: Instance, worker: int = 0) -> Journal | None:
    """None when LOGS is off; else the journal of one server process (`prepare_journal` ran first)."""
    if not settings.logs:
        return None
    try:
        url = journal_url(settings)
        journal = build_journal(settings, url, instance, worker)
    except (DatabaseUrlError, SpoolLocked) as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(_spool_problem(settings, instance, exc)) from None
    log.info(
        "Journal on: %s, bodies %s, spool %s",
        render_url(url),
        f"up to {settings.journal_body_max_bytes} bytes" if settings.journal_bodies else "off",
        spool_dir(settings, worker, instance=instance),
    )
    return journal
