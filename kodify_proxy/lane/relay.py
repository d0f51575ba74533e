"""vLLM's answer relayed to the client as vLLM gave it, but for what we change on purpose (FIM cuts, our usage
chunk) — and ended with an OpenAI-shaped error event when the upstream fails or goes silent mid-stream."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import orjson

from kodify_proxy.call import Call
from kodify_proxy.errors import KodifyError, UpstreamFailed, UpstreamTimeout
from kodify_proxy.exchange import Exchange, note_usage
from kodify_proxy.fim.stream import SseCutter
from kodify_proxy.lane.upstream import Opened
from kodify_proxy.sse import DONE, EVENT_END, EventFramer, data_of
from kodify_proxy.upstream_monitor import UpstreamMonitor

EVENT_STREAM: Final = b"text/event-stream; charset=utf-8"  # what vLLM sends
_USAGE_CHUNK: Final = re.compile(rb'"choices":\s*\[\]')  # vLLM's last chunk with include_usage
_UNFINISHED: Final = re.compile(rb'"finish_reason":\s*null')


def error_event(error: KodifyError) -> bytes:
    """A mid-stream failure as vLLM reports one: an error event, then [DONE]."""
    return b"data: " + error.render() + b"\n\n" + DONE


@dataclass
class StreamPlan:
    """What to do to each event of a lane stream.

    When the client did not ask for usage, the lane asks vLLM for it anyway (the journal and the metrics count
    tokens) and gives the client the stream vLLM would have sent without it: vLLM then moves
    `system_fingerprint` from each choice's finishing chunk to the usage chunk, so finishing chunks wait for the
    usage chunk (the next event, for n = 1), get the fingerprint back, and the usage chunk is dropped. The held
    chunks are vLLM's own bytes, the fingerprint spliced in where vLLM puts it (last).
    """

    exchange: Exchange
    drop_usage: bool = False  # the usage chunk was asked for by us (for the journal), not by the client
    cutter: SseCutter | None = None  # FIM: cut each choice at its stops
    held: list[bytes] = field(default_factory=list)

    def event(self, event: bytes) -> bytes:
        """The bytes to send for one whole event."""
        if b'"usage"' in event and _USAGE_CHUNK.search(event):
            return self._usage(event)
        if event.startswith(DONE.strip()):
            return self.flush() + event
        if self.cutter is not None:
            event = self.cutter.event(event)
        if self.drop_usage and b'"finish_reason"' in event and not _UNFINISHED.search(event):
            self.held.append(event)
            return b""
        return event

    def _usage(self, event: bytes) -> bytes:
        chunk = data_of(event)
        if not isinstance(chunk, dict):
            return event
        note_usage(self.exchange, chunk.get("usage"))
        if not self.drop_usage:
            return event
        fingerprint = chunk.get("system_fingerprint")
        if fingerprint is not None:
            self.held = [with_fingerprint(held, fingerprint) for held in self.held]
        return self.flush()

    def flush(self) -> bytes:
        """The finishing chunks still held (the stream ended without a usage chunk)."""
        held, self.held = self.held, []
        return b"".join(held)


def with_fingerprint(event: bytes, fingerprint: Any) -> bytes:
    """A `data: {...}` event with `"system_fingerprint"` as its last field, as vLLM sends it without usage."""
    body = event.rstrip()
    if not body.endswith(b"}") or b'"system_fingerprint"' in body:
        return event
    return body[:-1] + b',"system_fingerprint":' + orjson.dumps(fingerprint) + b"}" + EVENT_END


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
        tail = plan.flush() + (plan.event(rest + b"\n\n") if rest.strip() else b"")
        monitor.report_success(url)
    except TimeoutError:
        monitor.report_failure(url)
        silent = UpstreamTimeout(f"Upstream {url} sent nothing for {idle:g} s (KODIFY_STREAM_IDLE_TIMEOUT)")
        tail = plan.flush() + _failed(call.exchange, silent)
    except aiohttp.ClientError as exc:
        monitor.report_failure(url, connection=True)
        broken = UpstreamFailed(f"Upstream {url} broke the stream ({type(exc).__name__}): check the vLLM server")
        tail = plan.flush() + _failed(call.exchange, broken)
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
