"""Streamed FIM completions: the SSE bytes of a /v1/completions stream, each choice cut by its `fim.StreamCut`.

Pure; `middleware.ErrorShapingMiddleware` runs it on the response of a request the pre-call hook rebuilt as FIM,
so other streams pass untouched and LiteLLM keeps its streaming fast path (a LiteLLM streaming-iterator hook
would take every stream, chat included, off it: litellm/proxy/utils.py::async_post_call_streaming_iterator_hook).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from kodify_proxy.fim import StreamCut

_EVENT_END = b"\n\n"
_DATA = b"data: "


def cut_choices(chunk: dict[str, Any], cuts: dict[int, StreamCut]) -> bool:
    """Cut each choice of a text-completion chunk in place; False when nothing of it is left to send.

    A choice whose cut matched ends with finish_reason "stop"; its later chunks are dropped. A chunk without
    choices (usage) passes unchanged.
    """
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices:
        return True
    kept = []
    for choice in choices:
        cut = cuts[int(choice.get("index") or 0)]
        if cut.stopped:
            continue
        finish = choice.get("finish_reason")
        text = cut.feed(choice.get("text") or "", final=finish is not None)
        if cut.stopped:
            choice["finish_reason"] = finish = "stop"
        if text or finish is not None:
            choice["text"] = text
            kept.append(choice)
    chunk["choices"] = kept
    return bool(kept)


class SseCutter:
    """Feed it the stream's bytes as they come; it returns the bytes to send (whole events only)."""

    def __init__(self, make_cut: Callable[[], StreamCut]) -> None:
        self._cuts: dict[int, StreamCut] = defaultdict(make_cut)
        self._pending = b""

    def feed(self, data: bytes, final: bool) -> bytes:
        """The complete events in `pending + data`, cut; at `final`, whatever is left as well."""
        self._pending += data
        if final:
            events, self._pending = self._pending, b""
        else:
            events, sep, self._pending = self._pending.rpartition(_EVENT_END)
            events += sep
        return b"".join(self._event(e) for e in events.split(_EVENT_END) if e.strip())

    def _event(self, event: bytes) -> bytes:
        line = event.strip()
        if not line.startswith(_DATA) or line == _DATA + b"[DONE]":
            return event + _EVENT_END
        try:
            chunk = json.loads(line[len(_DATA) :])
        except ValueError:
            return event + _EVENT_END
        if not isinstance(chunk, dict) or not cut_choices(chunk, self._cuts):
            return b""
        return _DATA + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + _EVENT_END
