"""The running journal (tracker on the request side, writer on the database side), built once at serve."""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

from sqlalchemy import URL

from kodify_proxy.journal.database import JournalUrlError, create_journal_engine, journal_url, render_url, spool_dir
from kodify_proxy.journal.migrate import MigrationError, upgrade
from kodify_proxy.journal.record import BodyPolicy
from kodify_proxy.journal.spool import Spool, SpoolLocked
from kodify_proxy.journal.tracker import Tracker
from kodify_proxy.journal.writer import JournalStore, JournalWriter, WriterConfig
from kodify_proxy.settings import Settings

log = logging.getLogger("kodify_proxy.journal")


class Journal:
    """What `Runtime.journal` holds when LOGS is on."""

    def __init__(self, tracker: Tracker, writer: JournalWriter, url: URL) -> None:
        self.tracker = tracker
        self.writer = writer
        self.url = url
        self._closed = False
        self._lock = threading.Lock()
        self._drained = 0

    def drain(self) -> None:
        """Journal the requests still waiting for LiteLLM's event (at shutdown, on the event loop)."""
        self._drained += self.tracker.drain()

    def record_event(self, event: dict[str, Any]) -> None:
        """A Tabby view/select/dismiss event: the request's own row (its body is the event) gets the user."""
        from kodify_proxy.journal.middleware import current_exchange

        exchange = current_exchange()
        if exchange is not None:
            exchange.info.user_id = event.get("user_id")

    def start(self) -> None:
        """Start the background writer (from the app's startup)."""
        self.writer.start()

    def close(self) -> None:
        """Journal what is still open, then flush the writer: to the database, else the spool (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.drain()
        self.writer.close()
        status = self.writer.status()
        log.info(
            "Journal flushed: %d rows stored this run, %d open requests journaled at shutdown, "
            "%d bytes left in the spool",
            status["stored_rows"],
            self._drained,
            status["spooled_bytes"],
        )


def build_journal(settings: Settings, url: URL) -> Journal:
    """The journal for `url` with the KODIFY_JOURNAL_* settings (writer not started)."""
    policy = BodyPolicy(keep=settings.journal_bodies, max_bytes=settings.journal_body_max_bytes)
    store = JournalStore(create_journal_engine(url, settings.journal_db_timeout))
    config = WriterConfig(
        batch_size=settings.journal_batch_size,
        flush_interval=settings.journal_flush_interval,
        retry_interval=settings.journal_retry_interval,
    )
    writer = JournalWriter(store, Spool(spool_dir(settings)), config)
    return Journal(Tracker(writer.submit, policy), writer, url)


def open_journal(settings: Settings) -> Journal | None:
    """None when LOGS is off; else the journal, after `upgrade head` when RUN_MIGRATIONS=1."""
    from kodify_proxy.serving import StartupError

    if not settings.logs:
        return None
    try:
        url = journal_url(settings)
        if settings.run_migrations:
            revision = upgrade(url)
            log.info("Journal schema is at revision %s (%s)", revision, render_url(url))
        journal = build_journal(settings, url)
    except (JournalUrlError, MigrationError, SpoolLocked) as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(
            f"journal spool {spool_dir(settings)}: {exc}; set KODIFY_JOURNAL_SPOOL_DIR to a writable directory"
        ) from None
    atexit.register(journal.close)
    log.info(
        "Journal on: %s, bodies %s, spool %s",
        render_url(url),
        f"up to {settings.journal_body_max_bytes} bytes" if settings.journal_bodies else "off",
        spool_dir(settings),
    )
    return journal
