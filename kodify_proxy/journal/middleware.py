"""The ASGI layer that observes each API request for the journal, and flushes the journal at shutdown.

It gives every request a fresh id and passes it to LiteLLM as the `x-litellm-call-id` request header, so
LiteLLM's litellm_call_id, its log events and the `x-litellm-call-id` response header all carry the journal's
request id (a client-sent value is replaced: ids must be unique to be idempotent keys). It sees what the client
sees: the final status (after ErrorShapingMiddleware), the bytes, the first streamed byte, a disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kodify_proxy import runtime
from kodify_proxy.journal.record import Exchange, append_capped, is_journaled

if TYPE_CHECKING:
    from kodify_proxy.journal.service import Journal

log = logging.getLogger("kodify_proxy.journal")

REQUEST_ID_HEADER = b"x-litellm-call-id"
_current: ContextVar[Exchange | None] = ContextVar("kodify_journal_exchange", default=None)


def current_exchange() -> Exchange | None:
    """The exchange of the request this code runs for (LiteLLM runs its callbacks in the request's context)."""
    return _current.get()


def with_journal(app: ASGIApp) -> ASGIApp:
    """`app` wrapped in the journal middleware when LOGS is on, else `app` itself."""
    journal = runtime.current().journal
    return app if journal is None else JournalMiddleware(app, journal)


def _with_request_id(headers: list[tuple[bytes, bytes]], request_id: str) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != REQUEST_ID_HEADER]
    return [*kept, (REQUEST_ID_HEADER, request_id.encode())]


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), "")


class JournalMiddleware:
    """Tracks API requests (see module doc); starts the writer at startup and flushes it at shutdown."""

    def __init__(self, app: ASGIApp, journal: Journal) -> None:
        self.app = app
        self.journal = journal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
        elif scope["type"] == "http" and is_journaled(scope["path"]):
            await self._observe(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.journal.start()
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # uvicorn re-raises SIGTERM once the lifespan is over, so this is the last moment to flush.
                self.journal.drain()  # on the event loop, where the tracker lives
                await asyncio.to_thread(self.journal.close)
            await send(message)

        return lifespan_send

    async def _observe(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange(
            request_id=str(uuid.uuid4()),
            method=scope["method"],
            route=scope["path"],
            started_at=datetime.now(UTC),
            t0=time.perf_counter(),
        )
        scope = {**scope, "headers": _with_request_id(list(scope["headers"]), exchange.request_id)}
        tracker = self.journal.tracker
        tracker.begin(exchange)
        token = _current.set(exchange)
        try:
            await self.app(scope, self._receive(exchange, receive), self._send(exchange, send))
        except BaseException:
            exchange.failed = True
            raise
        finally:
            _current.reset(token)
            tracker.end(exchange)

    def _receive(self, exchange: Exchange, receive: Receive) -> Receive:
        cap = self.journal.tracker.policy.request_capture()

        async def observed_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                exchange.request_bytes += len(body)
                append_capped(exchange.request_body, body, cap)
            elif message["type"] == "http.disconnect" and not exchange.completed:
                exchange.disconnected = True
            return message

        return observed_receive

    def _send(self, exchange: Exchange, send: Send) -> Send:
        cap = self.journal.tracker.policy.response_capture()

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                exchange.status = int(message["status"])
                exchange.content_type = _header(headers, b"content-type")
                message = {**message, "headers": _with_request_id(headers, exchange.request_id)}
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body and exchange.first_byte_at is None:
                    exchange.first_byte_at = time.perf_counter()
                exchange.response_bytes += len(body)
                append_capped(exchange.response_body, body, cap)
                if not message.get("more_body", False):
                    exchange.completed = True
                    exchange.ended_at = time.perf_counter()
            try:
                await send(message)
            except Exception:
                exchange.disconnected = True
                raise

        return observed_send
