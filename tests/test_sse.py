"""Pure: event-stream framing as vLLM frames it: whole events out of bytes that arrive cut anywhere, and back."""

from __future__ import annotations

import pytest

from kodify_proxy.sse import DONE, EventFramer, data_of, event_of

STREAM = b'data: {"a": 1}\n\ndata: {"b": "x\\n\\ny"}\n\n: keep-alive\n\ndata: [DONE]\n\n'
EVENTS = [b'data: {"a": 1}\n\n', b'data: {"b": "x\\n\\ny"}\n\n', b": keep-alive\n\n", b"data: [DONE]\n\n"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, len(STREAM)])
def test_events_come_out_whole_however_the_bytes_are_cut(size: int) -> None:
    framer = EventFramer()
    events = [event for start in range(0, len(STREAM), size) for event in framer.feed(STREAM[start : start + size])]
    assert events == EVENTS and framer.rest() == b""


def test_an_unfinished_event_is_kept_until_the_end_and_then_given_once() -> None:
    framer = EventFramer()
    assert framer.feed(b'data: {"a": 1}\n\ndata: {"b"') == [b'data: {"a": 1}\n\n']
    assert framer.feed(b": 2}") == []
    assert framer.rest() == b'data: {"b": 2}' and framer.rest() == b""


def test_blank_events_are_dropped() -> None:
    assert EventFramer().feed(b"\n\n\n\ndata: 1\n\n") == [b"data: 1\n\n"]


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b'data: {"a": [1, 2]}\n\n', {"a": [1, 2]}),
        (b"data: 7\n\n", 7),
        (DONE, None),
        (b": comment\n\n", None),
        (b"data: {broken\n\n", None),
        (b"event: x\n\n", None),
    ],
)
def test_data_of(event: bytes, data: object) -> None:
    assert data_of(event) == data


def test_event_of_is_data_of_reversed() -> None:
    chunk = {"id": "c1", "choices": [{"delta": {"content": "é\n"}}]}
    assert event_of(chunk) == b'data: {"id":"c1","choices":[{"delta":{"content":"\xc3\xa9\\n"}}]}\n\n'
    assert data_of(event_of(chunk)) == chunk
