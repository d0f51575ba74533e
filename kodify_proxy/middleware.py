"""The ASGI layer around LiteLLM: what our hooks decide about a response, applied to the response itself.

- An upstream failure: LiteLLM uses the error a failure hook returns on some routes only (chat, embeddings: not
  /v1/completions, litellm/proxy/proxy_server.py::completion). So the hook files its error here and this layer
  sends it in place of whatever LiteLLM answered.
- A streamed FIM completion: the pre-call hook files an `SseCutter`, and this layer cuts the event stream.
Other responses pass untouched, chunk by chunk.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kodify_proxy.errors import KodifyError
from kodify_proxy.fim_stream import SseCutter


@dataclass
class ResponsePlan:
    """What the hooks filed for the current request's response."""

    error: KodifyError | None = None
    stream_cutter: SseCutter | None = None


_plan: ContextVar[ResponsePlan | None] = ContextVar("kodify_response_plan", default=None)


def file_error(error: KodifyError) -> bool:
    """Record the error to send for the current request; False outside a request."""
    plan = _plan.get()
    if plan is None:
        return False
    plan.error = error
    return True


def file_stream_cutter(cutter: SseCutter) -> bool:
    """Cut the current request's event stream with `cutter`; False outside a request."""
    plan = _plan.get()
    if plan is None:
        return False
    plan.stream_cutter = cutter
    return True


class ErrorShapingMiddleware:
    """Sends a filed KodifyError instead of LiteLLM's error response, and cuts a filed FIM stream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        plan = ResponsePlan()
        token = _plan.set(plan)
        try:
            await self.app(scope, receive, _planned_send(plan, send))
        finally:
            _plan.reset(token)


def _planned_send(plan: ResponsePlan, send: Send) -> Send:
    state = {"replaced": False, "cutting": False}

    async def planned_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] >= 400 and plan.error is not None:
                state["replaced"] = True
                await _send_error(send, plan.error, message)
                return
            if plan.stream_cutter is not None and _is_event_stream(message):
                state["cutting"] = True
                message = {**message, "headers": [(k, v) for k, v in message["headers"] if k != b"content-length"]}
        elif message["type"] == "http.response.body" and state["cutting"]:
            assert plan.stream_cutter is not None
            more = bool(message.get("more_body", False))
            message = {**message, "body": plan.stream_cutter.feed(message.get("body", b""), final=not more)}
        if not state["replaced"]:
            await send(message)

    return planned_send


def _is_event_stream(start: Message) -> bool:
    headers = dict(start.get("headers", []))
    return bool(start["status"] == 200 and headers.get(b"content-type", b"").startswith(b"text/event-stream"))


async def _send_error(send: Send, error: KodifyError, original_start: Message) -> None:
    keep = {b"x-litellm-call-id", b"x-request-id"}
    headers = [(k, v) for k, v in original_start.get("headers", []) if k.lower() in keep]
    await send_json(send, error.status_code, error.to_body(), headers)


async def send_json(send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """One complete JSON response over ASGI."""
    data = json.dumps(body, ensure_ascii=False).encode()
    extra = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*(headers or []), *extra]})
    await send({"type": "http.response.body", "body": data, "more_body": False})
