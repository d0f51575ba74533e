"""An upstream that costs next to nothing: canned vLLM answers from a bare asyncio protocol (uvloop when present).

`python -m bench.fast_upstream --port P [--chunks 16]`. GET /v1/models lists `fast-model`; POST /v1/completions
gets one whole completion; POST /v1/chat/completions gets a whole answer, or with `"stream": true` a stream of
`--chunks` content chunks, vLLM's usage chunk and `[DONE]`. For throughput benchmarks of the proxy on a small
machine, where the Python fake upstream of the tests would itself be the bottleneck. Bodies are read by
Content-Length (what the lane's aiohttp client sends); nothing else of HTTP is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, cast

MODEL = "fast-model"


def _response(body: bytes, content_type: bytes = b"application/json") -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (content_type, len(body))
    return head + body


def _canned(chunks: int) -> dict[str, bytes]:
    created = int(time.time())
    usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
    completion = {
        "id": "cmpl-fast",
        "object": "text_completion",
        "created": created,
        "model": MODEL,
        "choices": [{"index": 0, "text": " return a + b", "logprobs": None, "finish_reason": "length"}],
        "usage": usage,
    }
    message = {"role": "assistant", "content": "tok " * chunks}
    chat = {
        "id": "chatcmpl-fast",
        "object": "chat.completion",
        "created": created,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
        "usage": usage,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None) -> bytes:
        event = {
            "id": "chatcmpl-fast",
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **(extra or {}),
        }
        return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": "tok "}) for _ in range(chunks)]
    events += [chunk({}, "length"), b'data: {"choices":[],"usage":' + json.dumps(usage).encode() + b"}\n\n"]
    models = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "vllm", "max_model_len": 2048}]}
    return {
        "models": _response(json.dumps(models).encode()),
        "completion": _response(json.dumps(completion).encode()),
        "chat": _response(json.dumps(chat).encode()),
        "stream": _response(b"".join(events) + b"data: [DONE]\n\n", b"text/event-stream"),
    }


class CannedUpstream(asyncio.Protocol):
    """One connection: requests parsed just enough to answer them, keep-alive."""

    answers: dict[str, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's subclasses
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(self.answer(head.split(b" ", 2)[1], body))

    def answer(self, path: bytes, body: bytes) -> bytes:
        if path.endswith(b"/models"):
            return self.answers["models"]
        if path.endswith(b"/chat/completions"):
            streams = b'"stream":true' in body.replace(b" ", b"")
            return self.answers["stream" if streams else "chat"]
        return self.answers["completion"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=16)
    args = parser.parse_args()
    CannedUpstream.answers = _canned(args.chunks)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(CannedUpstream, "127.0.0.1", args.port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
