"""The ASGI layer around LiteLLM's app: replaces an upstream-failure response with our clear error.

LiteLLM uses the error a failure hook returns on some routes only (chat, embeddings: not /v1/completions,
litellm/proxy/proxy_server.py::completion). So the hook files its error in a per-request slot, and this
layer sends it in place of whatever LiteLLM answered. Successful and streamed responses pass untouched.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kodify_proxy.errors import KodifyError

_slot: ContextVar[dict[str, KodifyError] | None] = ContextVar("kodify_error_slot", default=None)


def file_error(error: KodifyError) -> bool:
    """Record the error to send for the current request; False outside a request."""
    slot = _slot.get()
    if slot is None:
        return False
    slot["error"] = error
    return True


class ErrorShapingMiddleware:
    """Sends a filed KodifyError instead of LiteLLM's error response for the same request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slot: dict[str, KodifyError] = {}
        token = _slot.set(slot)
        replaced = False

        async def shaped_send(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] >= 400 and "error" in slot:
                replaced = True
                await _send_error(send, slot["error"], message)
                return
            if not replaced:
                await send(message)

        try:
            await self.app(scope, receive, shaped_send)
        finally:
            _slot.reset(token)


async def _send_error(send: Send, error: KodifyError, original_start: Message) -> None:
    body = json.dumps(error.to_body()).encode()
    keep = {b"x-litellm-call-id", b"x-request-id"}
    headers: list[Any] = [(k, v) for k, v in original_start.get("headers", []) if k.lower() in keep]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
