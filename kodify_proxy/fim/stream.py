"""Streamed FIM completions: the SSE events of a /v1/completions stream, each choice cut by its `fim.post.StreamCut`.

Pure. The lane runs it on vLLM's stream, the LiteLLM path on LiteLLM's, for requests rebuilt as FIM only, so other
streams pass untouched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from kodify_proxy.fim.post import StreamCut
from kodify_proxy.sse import EVENT_END, EventFramer, data_of, event_of


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
    """Cuts a FIM stream: `event` takes one whole event, `feed` raw bytes; both give the bytes to send."""

    def __init__(self, make_cut: Callable[[], StreamCut]) -> None:
        self._cuts: dict[int, StreamCut] = defaultdict(make_cut)
        self._framer = EventFramer()

    def event(self, event: bytes) -> bytes:
        """One whole event, cut (empty when none of its choices has text left to send)."""
        chunk = data_of(event)
        if not isinstance(chunk, dict):
            return event
        if not cut_choices(chunk, self._cuts):
            return b""
        return event_of(chunk)

    def feed(self, data: bytes, final: bool) -> bytes:
        """The complete events in what came so far, cut; at `final`, whatever is left as well."""
        events = self._framer.feed(data)
        if final:
            rest = self._framer.rest()
            events += [rest + EVENT_END] if rest.strip() else []
        return b"".join(self.event(event) for event in events)
