"""Pairs what the middleware saw of a request with LiteLLM's log events for it, and hands each row on once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from kodify_proxy.journal.record import BodyPolicy, Exchange, JournalRow, build_row

log = logging.getLogger("kodify_proxy.journal")

# How long a finished request waits for LiteLLM's log event (tokens, upstream, the assembled stream) before it is
# journaled without it. The event normally follows within milliseconds; routes without one (/v1/models) wait it out.
SETTLE_SECONDS = 3.0


class Tracker:
    """Open exchanges by request id; each one becomes exactly one row, handed to `sink`."""

    def __init__(
        self, sink: Callable[[JournalRow], None], policy: BodyPolicy, settle_seconds: float = SETTLE_SECONDS
    ) -> None:
        self.policy = policy
        self._sink = sink
        self._settle = settle_seconds
        self._open: dict[str, Exchange] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def begin(self, exchange: Exchange) -> None:
        """Start tracking a request the middleware let through."""
        self._open[exchange.request_id] = exchange

    def find(self, request_id: object) -> Exchange | None:
        """The open exchange with this request id (LiteLLM's litellm_call_id), if any."""
        return self._open.get(request_id) if isinstance(request_id, str) else None

    def end(self, exchange: Exchange) -> None:
        """The response is over (sent, cut off or abandoned): journal now, or once LiteLLM's event arrives."""
        if exchange.ended_at is None:
            exchange.ended_at = time.perf_counter()
        if exchange.ready():
            self._emit(exchange)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._emit(exchange)
            return
        self._timers[exchange.request_id] = loop.call_later(self._settle, self._emit, exchange)

    def updated(self, exchange: Exchange) -> None:
        """A callback added to the exchange: journal it if that was the last piece."""
        if exchange.ready():
            self._emit(exchange)

    def drain(self) -> int:
        """Journal every open exchange with what is known (shutdown); the number journaled."""
        pending = list(self._open.values())
        now = time.perf_counter()
        for exchange in pending:
            if exchange.ended_at is None:
                exchange.ended_at = now
            self._emit(exchange)
        return len(pending)

    def pending(self) -> int:
        """Exchanges not journaled yet."""
        return len(self._open)

    def _emit(self, exchange: Exchange) -> None:
        if self._open.pop(exchange.request_id, None) is None:
            return
        timer = self._timers.pop(exchange.request_id, None)
        if timer is not None:
            timer.cancel()
        try:
            row = build_row(exchange, self.policy)
        except Exception:  # a bug here must not break the request path; the log says which request
            log.exception("Could not build the journal row for request %s", exchange.request_id)
            return
        self._sink(row)
