"""Every client request becomes exactly one record: observed on the wire, paired with LiteLLM's log event when
LiteLLM served it, then handed once to each sink (the metrics, the journal)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from starlette.types import Message, Receive, Scope, Send

from kodify_proxy.exchange import Exchange

log = logging.getLogger("kodify_proxy.request_recorder")

# How long a finished request waits for LiteLLM's log event (tokens, upstream, the assembled stream) before it is
# recorded without it. The event normally follows within milliseconds.
SETTLE_SECONDS = 3.0
Sink = Callable[[Exchange], None]


class Timer(Protocol):
    """What a scheduled call returns: it can be called off."""

    def cancel(self) -> None: ...


Later = Callable[[float, Callable[[], None]], Timer]


class Ledger(Protocol):
    """Where a request leaves a record while it runs (the journal's in-flight table, `journal/inflight.py`), so that
    its row is written even if this process dies before the request ends."""

    def begin(self, exchange: Exchange) -> int: ...

    def identify(self, exchange: Exchange) -> None: ...

    def respond(self, exchange: Exchange) -> None: ...

    def end(self, exchange: Exchange, latency_ms: float) -> None: ...


def call_later(delay: float, callback: Callable[[], None]) -> Timer:
    """`callback` after `delay` seconds on the running event loop."""
    return asyncio.get_running_loop().call_later(delay, callback)


class RequestRecorder:
    """Open exchanges by request id; each one goes to every sink exactly once."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        capture_bytes: int = 0,
        settle_seconds: float = SETTLE_SECONDS,
        clock: Callable[[], float] = time.perf_counter,
        later: Later = call_later,
        ledger: Ledger | None = None,
    ) -> None:
        self.sinks = list(sinks)
        self.ledger = ledger
        self.capture_bytes = capture_bytes
        self._settle = settle_seconds
        self._clock = clock
        self._later = later
        self._open: dict[str, Exchange] = {}
        self._timers: dict[str, Timer] = {}

    def begin(self, route: str, scope: Scope, tracked: bool = True) -> Exchange:
        """A new exchange for a request on `route`, tracked until `end` (untracked: never recorded)."""
        exchange = Exchange(
            request_id=str(uuid.uuid4()),
            method=scope["method"],
            route=route,
            path=scope["path"],
            started_at=datetime.now(UTC),
            t0=self._clock(),
            capture_bytes=self.capture_bytes,
            recorded=tracked,
        )
        if tracked:
            self._open[exchange.request_id] = exchange
            if self.ledger is not None:
                exchange.slot = self.ledger.begin(exchange)
        return exchange

    def identified(self, exchange: Exchange) -> None:
        """Who asked and for which model are known (the in-flight record notes them)."""
        if self.ledger is not None and exchange.slot >= 0:
            self.ledger.identify(exchange)

    def responding(self, exchange: Exchange) -> None:
        """The response has started (the in-flight record notes its status)."""
        if self.ledger is not None and exchange.slot >= 0:
            self.ledger.respond(exchange)

    def find(self, request_id: object) -> Exchange | None:
        """The open exchange with this request id (LiteLLM's litellm_call_id), if any."""
        return self._open.get(request_id) if isinstance(request_id, str) else None

    def end(self, exchange: Exchange) -> None:
        """The response is over (sent, cut off or abandoned): emit now, or once LiteLLM's event arrives."""
        if exchange.request_id not in self._open:
            return
        if exchange.ended_at is None:
            exchange.ended_at = self._clock()
        if self.ledger is not None and exchange.slot >= 0:
            self.ledger.end(exchange, (exchange.ended_at - exchange.t0) * 1000.0)
        if exchange.ready():
            self._emit(exchange)
            return
        self._timers[exchange.request_id] = self._later(self._settle, lambda: self._emit(exchange))

    def updated(self, exchange: Exchange) -> None:
        """LiteLLM's event added to the exchange: emit it if that was the last piece."""
        if exchange.ready():
            self._emit(exchange)

    def drain(self) -> int:
        """Emit every open exchange with what is known (shutdown); how many there were."""
        pending = list(self._open.values())
        for exchange in pending:
            if exchange.ended_at is None:
                exchange.ended_at = self._clock()
            self._emit(exchange)
        return len(pending)

    def pending(self) -> int:
        """Exchanges not emitted yet."""
        return len(self._open)

    def _emit(self, exchange: Exchange) -> None:
        if self._open.pop(exchange.request_id, None) is None:
            return
        exchange.slot = -1  # recorded: its record is the writer's to free now, and a late write could hit a reused slot
        timer = self._timers.pop(exchange.request_id, None)
        if timer is not None:
            timer.cancel()
        for sink in self.sinks:
            try:
                sink(exchange)
            except Exception:  # a sink's bug must not break the request path; the log says which request
                log.exception("Could not record request %s", exchange.request_id)


def observed_receive(exchange: Exchange, receive: Receive) -> Receive:
    """`receive` that notes a client leaving before its response ended."""

    async def receive_observed() -> Message:
        message = await receive()
        if message["type"] == "http.disconnect" and not exchange.completed:
            exchange.disconnected = True
        return message

    return receive_observed


def observed_send(
    exchange: Exchange,
    send: Send,
    clock: Callable[[], float] = time.perf_counter,
    responding: Callable[[Exchange], None] | None = None,
) -> Send:
    """`send` that records status, bytes, first byte and end of the response as the client gets them (and tells
    `responding` when the response starts)."""

    async def send_observed(message: Message) -> None:
        if message["type"] == "http.response.start":
            exchange.status = int(message["status"])
            exchange.content_type = _content_type(message)
            if responding is not None:
                responding(exchange)
        elif message["type"] == "http.response.body":
            _note_body(exchange, message, clock)
        try:
            await send(message)
        except OSError:
            exchange.disconnected = True
            raise

    return send_observed


def _content_type(start: Message) -> str:
    return next((v.decode("latin-1") for k, v in start.get("headers", ()) if k == b"content-type"), "")


def _note_body(exchange: Exchange, message: Message, clock: Callable[[], float]) -> None:
    body = message.get("body", b"")
    if body:
        if exchange.first_byte_at is None:
            exchange.first_byte_at = clock()
        exchange.response_bytes += len(body)
        room = exchange.capture_bytes - len(exchange.response_body)
        if room > 0:
            exchange.response_body += body[:room]
    if not message.get("more_body", False):
        exchange.completed = not exchange.disconnected  # uvicorn drops what is sent after the client left
        exchange.ended_at = clock()
