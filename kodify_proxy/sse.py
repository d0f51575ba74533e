"""Server-sent events as vLLM and the OpenAI API frame them: whole `data: …` events out of arriving bytes, and back.

Pure. The lane's relay, the FIM stream cut and the LiteLLM path read streams through it; only events we must look
at are parsed.
"""

from __future__ import annotations

from typing import Any

import orjson

EVENT_END = b"\n\n"
DATA = b"data: "
DONE = DATA + b"[DONE]" + EVENT_END


class EventFramer:
    """Splits the bytes of an event stream, as they arrive, into whole events (each ending with a blank line)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The events completed by `data`, with their trailing blank line."""
        self._pending += data
        if EVENT_END not in self._pending:
            return []
        complete, _, self._pending = self._pending.rpartition(EVENT_END)
        return [event + EVENT_END for event in complete.split(EVENT_END) if event.strip()]

    def rest(self) -> bytes:
        """Whatever is left when the stream ends (an event without its blank line), emptied."""
        rest, self._pending = self._pending, b""
        return rest


def data_of(event: bytes) -> Any:
    """The JSON of a `data: {…}` event; None for [DONE], comments and anything not JSON."""
    line = event.strip()
    if not line.startswith(DATA) or line == DONE.strip():
        return None
    try:
        return orjson.loads(line[len(DATA) :])
    except orjson.JSONDecodeError:
        return None


def event_of(chunk: Any) -> bytes:
    """`chunk` as one `data:` event."""
    return DATA + orjson.dumps(chunk) + EVENT_END
