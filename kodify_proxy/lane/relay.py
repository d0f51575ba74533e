"""vLLM's answer relayed to the client as vLLM gave it, but for what we change on purpose (FIM cuts, our usage
chunk) — and ended with an OpenAI-shaped error event when the upstream fails or goes silent mid-stream."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson

from kodify_proxy.call import Call
from kodify_proxy.errors import KodifyError, UpstreamFailed, UpstreamTimeout
from kodify_proxy.exchange import Exchange, whole_number
from kodify_proxy.fim_stream import DONE, EventFramer, SseCutter, data_of
from kodify_proxy.lane.upstream import Opened
from kodify_proxy.monitor import UpstreamMonitor

EVENT_STREAM: Final = b"text/event-stream; charset=utf-8"  # what vLLM sends
_USAGE_CHUNK: Final = re.compile(rb'"choices":\s*\[\]')  # vLLM's last chunk with include_usage


def note_usage(exchange: Exchange, usage: Any) -> None:
    """Token counts from an OpenAI `usage` object."""
    if isinstance(usage, dict):
        exchange.prompt_tokens = whole_number(usage.get("prompt_tokens"))
        exchange.completion_tokens = whole_number(usage.get("completion_tokens"))


def error_event(error: KodifyError) -> bytes:
    """A mid-stream failure as vLLM reports one: an error event, then [DONE]."""
    return b"data: " + error.render() + b"\n\n" + DONE


@dataclass
class StreamPlan:
    """What to do to each event of a lane stream."""

    exchange: Exchange
    drop_usage: bool = False  # the usage chunk was asked for by us (for the journal), not by the client
    cutter: SseCutter | None = None  # FIM: cut each choice at its stops

    def event(self, event: bytes) -> bytes:
        """The bytes to send for one whole event."""
        if b'"usage"' in event and _USAGE_CHUNK.search(event):
            chunk = data_of(event)
            if isinstance(chunk, dict):
                note_usage(self.exchange, chunk.get("usage"))
            if self.drop_usage:
                return b""
        return self.cutter.event(event) if self.cutter is not None else event


async def relay_stream(call: Call, opened: Opened, plan: StreamPlan, monitor: UpstreamMonitor, idle: float) -> None:
    """Send vLLM's event stream on as it arrives; a silent or broken upstream ends it with an error event."""
    await call.send(
        {"type": "http.response.start", "status": 200, "headers": [*call.headers(), (b"content-type", EVENT_STREAM)]}
    )
    framer, url = EventFramer(), opened.upstream.url
    tail = b""
    try:
        async for raw in opened.response.content.iter_any():
            out = b"".join(plan.event(event) for event in framer.feed(raw))
            if out:
                await call.send({"type": "http.response.body", "body": out, "more_body": True})
        rest = framer.rest()
        tail = plan.event(rest + b"\n\n") if rest.strip() else b""
        monitor.report_success(url)
    except TimeoutError:
        monitor.report_failure(url)
        silent = UpstreamTimeout(f"Upstream {url} sent nothing for {idle:g} s (KODIFY_STREAM_IDLE_TIMEOUT)")
        tail = _failed(call.exchange, silent)
    except aiohttp.ClientError as exc:
        monitor.report_failure(url, connection=True)
        broken = UpstreamFailed(f"Upstream {url} broke the stream ({type(exc).__name__}): check the vLLM server")
        tail = _failed(call.exchange, broken)
    finally:
        opened.close()
    await call.send({"type": "http.response.body", "body": tail, "more_body": False})


def _failed(exchange: Exchange, error: KodifyError) -> bytes:
    exchange.took_error(error.error_type, error.message)
    return error_event(error)


def rewrite_choices(body: bytes, exchange: Exchange, rewrite: Callable[[str], str] | None) -> bytes:
    """A non-streamed completion: tokens noted; with `rewrite`, each choice's text replaced (FIM post-processing)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamFailed("The upstream's completion is not JSON; check the vLLM server") from None
    if not isinstance(answer, dict):
        raise UpstreamFailed("The upstream's completion is not a JSON object; check the vLLM server")
    note_usage(exchange, answer.get("usage"))
    if rewrite is None:
        return body
    for choice in answer.get("choices") or ():
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            choice["text"] = rewrite(choice["text"])
    return orjson.dumps(answer)
