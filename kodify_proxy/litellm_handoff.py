"""Requests the gateway hands to LiteLLM (chat, embeddings, and completions when KODIFY_COMPLETIONS_LANE=litellm),
and LiteLLM's answers made ours: OpenAI-shaped errors with a real type, no header naming an upstream, FIM cuts.

LiteLLM's errors come as text: vLLM's own error is embedded in LiteLLM's message (JSON or a Python dict repr), a
timeout is a 408, a refused connection says so in words. `classify` turns each into our error.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from starlette.types import ASGIApp, Message, Scope

from kodify_proxy.asgi import JSON, header_value, replace_headers, replay
from kodify_proxy.auth import IDENTITY_SCOPE_KEY
from kodify_proxy.call import REQUEST_ID_HEADER, Call, ClientLeft
from kodify_proxy.errors import (
    KodifyError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    read_error_body,
)
from kodify_proxy.fim.stream import SseCutter
from kodify_proxy.sse import EVENT_END, EventFramer, data_of
from kodify_proxy.upstream_monitor import UpstreamMonitor

# LiteLLM response headers that name an upstream (its URL, our deployment id) or repeat its raw headers.
_HIDDEN_HEADERS: Final = frozenset({b"x-litellm-model-api-base", b"x-litellm-model-id", b"content-length"})
_HIDDEN_PREFIX: Final = b"llm_provider-"
_CONNECTION_MARKERS: Final = ("Cannot connect to host", "Connection error", "Connection refused", "ConnectError")
_TIMEOUT_MARKERS: Final = ("Timeout", "timed out")
_NO_DEPLOYMENT: Final = ("No healthy deployment available", "No deployments available")
_PARAMETER_HINT: Final = re.compile(r"\(parameter=([A-Za-z_][A-Za-z0-9_.]*)")
_LITELLM_PREFIX: Final = re.compile(r"^(?:litellm\.\w+: )?(?:\w+Exception - )?")
Transform = Callable[[bytes], Awaitable[bytes]]


def _embedded_error(message: str) -> dict[str, Any] | None:
    """vLLM's `{"error": {...}}` inside LiteLLM's message text, as JSON or as a Python dict repr."""
    start, end = message.find("{"), message.rfind("}") + 1
    if start < 0 or end <= start:
        return None
    for parse in (orjson.loads, ast.literal_eval):
        try:
            body = parse(message[start:end])
        except (ValueError, SyntaxError, orjson.JSONDecodeError):
            continue
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return dict(body["error"])
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return body
    return None


def upstream_rejection(status: int, message: str) -> UpstreamRejected | None:
    """The upstream's own 4xx, dug out of the text LiteLLM wrapped it in."""
    error = _embedded_error(message) if 400 <= status < 500 else None
    if error is None or not isinstance(error.get("message"), str):
        return None
    param = error.get("param")
    if not isinstance(param, str):
        hint = _PARAMETER_HINT.search(error["message"])
        param = hint.group(1) if hint else None
    return UpstreamRejected(error["message"], status_code=status, param=param)


def _upstream_urls(model: str | None, monitor: UpstreamMonitor) -> str:
    urls = [s.upstream.url for s in monitor.upstreams_for(model)] if model else []
    return ", ".join(urls) or "the upstream"


def classify(status: int, message: str, param: str | None, model: str | None, monitor: UpstreamMonitor) -> KodifyError:
    """LiteLLM's error (its status and message) as ours."""
    rejected = upstream_rejection(status, message)
    if rejected is not None:
        return rejected
    urls = _upstream_urls(model, monitor)
    if status == 408 or (status >= 500 and any(marker in message for marker in _TIMEOUT_MARKERS)):
        seconds = monitor.settings.request_timeout
        return UpstreamTimeout.no_answer(urls, seconds)
    if any(marker in message for marker in _NO_DEPLOYMENT):
        return UpstreamUnavailable(f"Every upstream serving {model!r} ({urls}) is failing; retry in a few seconds")
    if status >= 500 and any(marker in message for marker in _CONNECTION_MARKERS):
        monitor.request_refresh()
        return UpstreamFailed(f"Upstream {urls} refused the connection or broke it: check the vLLM server")
    cleaned = _LITELLM_PREFIX.sub("", message.split("\nReceived Model Group=")[0]).strip()
    return UpstreamRejected(cleaned or f"The request failed ({status})", status_code=status, param=param)


def error_fields(body: bytes) -> tuple[str, str | None, int | None]:
    """(message, param, code as a status) of an error body LiteLLM sent (`{"error": …}` or `{"detail": …}`)."""
    read = read_error_body(body)
    return read.message or "", read.param, read.status


def litellm_scope(call: Call, path: str | None = None, body: bytes | None = None) -> Scope:
    """The scope LiteLLM sees: our identity for its custom_auth, our request id, and any body we rewrote."""
    values = {"x_litellm_call_id": call.request_id.encode()}
    if body is not None:
        values["content_length"] = str(len(body)).encode()
    headers = [(k, v) for k, v in replace_headers(call.scope["headers"], **values) if k != b"transfer-encoding"]
    scope = {**call.scope, "headers": headers, IDENTITY_SCOPE_KEY: call.identity}
    if path is not None:
        scope.update(path=path, raw_path=path.encode())
    return scope


@dataclass
class ResponseShaper:
    """The `send` LiteLLM answers through: errors and headers made ours, bodies transformed or cut on the way."""

    call: Call
    monitor: UpstreamMonitor
    model: str | None
    transform: Transform | None = None  # a whole 200 JSON answer rewritten (FIM post-processing, Tabby's shape)
    cutter: SseCutter | None = None  # a FIM stream cut
    collect: bool = False  # keep the whole answer for `collected` instead of sending it (Tabby's completions)
    _start: Message | None = None
    _buffer: bytes = b""
    _mode: str = "pass"  # pass | buffer | stream
    _framer: EventFramer | None = None
    _collected: bytes | Exception | None = None

    def collected(self) -> bytes:
        """The whole 200 answer kept in `collect` mode; LiteLLM's error (or the client's leaving) raised as ours."""
        if isinstance(self._collected, Exception):
            raise self._collected
        if self._collected is None:
            raise UpstreamFailed("LiteLLM ended the request without an answer; the server log has the details")
        return self._collected

    async def send(self, message: Message) -> None:
        """LiteLLM's ASGI messages in, ours out."""
        if message["type"] == "http.response.start":
            await self._started(message)
        elif message["type"] == "http.response.body":
            await self._body(message.get("body", b""), bool(message.get("more_body", False)))

    async def _started(self, message: Message) -> None:
        status = int(message["status"])
        headers = [(k, v) for k, v in message.get("headers", ()) if not _hidden(k)]
        headers = replace_headers(headers, x_litellm_call_id=self.call.request_id.encode())
        self._start = {**message, "headers": headers}
        is_stream = (header_value(headers, b"content-type") or "").startswith("text/event-stream")
        if self.collect or status >= 400 or (status == 200 and self.transform is not None and not is_stream):
            self._mode = "buffer"
            return
        if is_stream:
            self._mode, self._framer = "stream", EventFramer()
        await self.call.send(self._start)

    async def _body(self, body: bytes, more: bool) -> None:
        if self._mode == "buffer":
            self._buffer += body
            if not more:
                await self._finish_buffered()
            return
        if self._mode == "stream":
            body = self._stream_bytes(body, more)
        await self.call.send({"type": "http.response.body", "body": body, "more_body": more})

    def _stream_bytes(self, body: bytes, more: bool) -> bytes:
        assert self._framer is not None
        events = self._framer.feed(body)
        if not more:
            rest = self._framer.rest()
            events += [rest + EVENT_END] if rest.strip() else []
        return b"".join(self._stream_event(event) for event in events)

    def _stream_event(self, event: bytes) -> bytes:
        if b'"error"' in event:
            chunk = data_of(event)
            if isinstance(chunk, dict) and "error" in chunk:
                error = self._error(orjson.dumps(chunk), 500)
                self.call.exchange.took_error(error.error_type, error.message)
                return b"data: " + error.render() + EVENT_END
        return self.cutter.event(event) if self.cutter is not None else event

    def _error(self, body: bytes, status: int) -> KodifyError:
        message, param, code = error_fields(body)
        return classify(code or status, message, param, self.model, self.monitor)

    async def _finish_buffered(self) -> None:
        assert self._start is not None
        status = int(self._start["status"])
        if self.collect:
            if status == 200:
                self._collected = self._buffer
            elif status == 499:  # the client left: the route ends as for any client that leaves
                self._collected = ClientLeft()
            else:
                self._collected = self._error(self._buffer, status)
            return
        if status >= 400:
            error = self._error(self._buffer, status)
            if status == 499:  # the client left (cancel_on_disconnect): nobody reads this
                return
            await self.call.fail(error)
            return
        assert self.transform is not None
        body = await self.transform(self._buffer)
        headers = replace_headers(self._start["headers"], content_type=JSON, content_length=str(len(body)).encode())
        await self.call.send({**self._start, "headers": headers})
        await self.call.send({"type": "http.response.body", "body": body, "more_body": False})


def _hidden(name: bytes) -> bool:
    return name in _HIDDEN_HEADERS or name.startswith(_HIDDEN_PREFIX)


async def forward(
    app: ASGIApp, call: Call, shaper: ResponseShaper, path: str | None = None, body: bytes | None = None
) -> None:
    """Serve `call` by LiteLLM's own route (`path`, else the one called) with `body` (else the client's)."""
    call.exchange.awaiting_litellm = True
    scope = litellm_scope(call, path, body)
    await app(scope, replay(call.body if body is None else body, call.receive), shaper.send)


async def read(app: ASGIApp, call: Call, monitor: UpstreamMonitor, model: str, path: str, body: bytes) -> bytes:
    """LiteLLM's whole answer to `body` on its route `path`, for us to reshape before the client sees anything."""
    shaper = ResponseShaper(call, monitor, model, collect=True)
    await forward(app, call, shaper, path=path, body=body)
    return shaper.collected()


__all__ = ["REQUEST_ID_HEADER", "ResponseShaper", "classify", "forward", "litellm_scope", "read", "upstream_rejection"]
