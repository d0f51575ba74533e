"""One request on a client route, as the route handlers get it: who asked, the body, how to answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.types import Receive, Scope, Send

from kodify_proxy.asgi import JSON, Headers, send_bytes, send_error
from kodify_proxy.auth import Identity
from kodify_proxy.errors import KodifyError
from kodify_proxy.exchange import Exchange
from kodify_proxy.surface import Route

REQUEST_ID_HEADER = b"x-litellm-call-id"  # the journal's request id, as LiteLLM names it (README contract)
T = TypeVar("T")


class ClientLeft(Exception):
    """The client disconnected before its response was complete."""


@dataclass
class Call:
    """A request the gateway authenticated (and whose JSON body it parsed, on routes that take one)."""

    route: Route
    scope: Scope
    receive: Receive
    send: Send
    identity: Identity
    exchange: Exchange
    body: bytes = b""
    data: dict[str, Any] | None = None

    @property
    def request_id(self) -> str:
        """The journal's id of this request (also the `x-litellm-call-id` response header)."""
        return self.exchange.request_id

    def headers(self) -> Headers:
        """Headers every response of ours carries: the request id, on recorded routes."""
        return [(REQUEST_ID_HEADER, self.request_id.encode())] if self.exchange.recorded else []

    async def reply(self, status: int, body: bytes, content_type: bytes | None = JSON) -> None:
        """A whole response."""
        await send_bytes(self.send, status, body, content_type, self.headers())

    async def fail(self, error: KodifyError) -> None:
        """`error` as the response, noted in the exchange."""
        self.exchange.took_error(error.error_type, error.message)
        await send_error(self.send, error, self.headers())

    async def until_disconnect(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work`, cancelling it the moment the client disconnects (ClientLeft then).

        Cancelling closes whatever upstream connection `work` holds, which is how vLLM learns to stop generating.
        The body must have been read already: from here on `receive` only says whether the client is still there.
        """
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(_disconnected(self.receive))
        try:
            await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this request's own task is cancelled (shutdown): the work goes with it
            task.cancel()
            raise
        finally:
            watcher.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientLeft


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
