"""Pure: the ASGI pieces: headers, whole responses, bounded body reads and replayed bodies, with receive and send
played by lists (the ASGI boundary)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from starlette.types import Message

from kodify_proxy.asgi import header_value, read_body, replace_headers, replay, send_bytes, send_error
from kodify_proxy.errors import ModelNotFound, PayloadTooLarge, RequestTimeout


def _receiver(*messages: Message, then_wait: bool = False) -> Any:
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        if then_wait:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    return receive


def _body(chunk: bytes, more: bool = False) -> Message:
    return {"type": "http.request", "body": chunk, "more_body": more}


def test_headers() -> None:
    raw = [(b"content-type", b"text/plain"), (b"x-a", b"\xe9"), (b"x-a", b"second")]
    assert header_value(raw, b"x-a") == "é" and header_value(raw, b"missing") is None
    replaced = replace_headers(raw, x_a=b"1", content_length=b"5")
    assert replaced == [(b"content-type", b"text/plain"), (b"x-a", b"1"), (b"content-length", b"5")]


def test_a_body_in_pieces_is_read_whole() -> None:
    receive = _receiver(_body(b"ab", True), _body(b"", True), _body(b"cd"))
    assert asyncio.run(read_body(receive, limit=4, timeout=5)) == b"abcd"


def test_a_body_past_the_limit_is_413_and_a_client_that_leaves_gives_none() -> None:
    with pytest.raises(PayloadTooLarge, match="larger than 4 bytes") as raised:
        asyncio.run(read_body(_receiver(_body(b"abc", True), _body(b"de")), limit=4, timeout=5))
    assert raised.value.status_code == 413
    assert asyncio.run(read_body(_receiver(_body(b"ab", True)), limit=4, timeout=5)) is None


def test_a_stalled_body_is_408() -> None:
    with pytest.raises(RequestTimeout, match=r"within 0\.05 s \(KODIFY_BODY_TIMEOUT\)") as raised:
        asyncio.run(read_body(_receiver(_body(b"ab", True), then_wait=True), limit=10, timeout=0.05))
    assert raised.value.status_code == 408


def test_replay_gives_the_body_once_then_the_client() -> None:
    async def run() -> list[Message]:
        receive = replay(b"{}", _receiver())
        return [await receive(), await receive()]

    assert asyncio.run(run()) == [_body(b"{}"), {"type": "http.disconnect"}]


def test_whole_responses_and_errors() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(send_bytes(send, 200, b"", content_type=None, headers=[(b"x-id", b"1")]))
    assert sent == [
        {"type": "http.response.start", "status": 200, "headers": [(b"x-id", b"1"), (b"content-length", b"0")]},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
    sent.clear()
    asyncio.run(send_error(send, ModelNotFound("The model 'm' does not exist", param="model")))
    start, body = sent
    assert start["status"] == 404 and (b"content-type", b"application/json") in start["headers"]
    assert orjson.loads(body["body"]) == {
        "error": {
            "message": "The model 'm' does not exist",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
