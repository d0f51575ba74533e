"""A small OpenAI/vLLM-compatible server for fast tests and benchmarks (run as its own process).

`python -m tests.fake_upstream --port P --model NAME [--model NAME2]`. It echoes, records the last request
body (GET /_last), counts requests by content (GET /_count?contains=X) and sleeps `SLEEP:<seconds>` when a
prompt or message contains that marker. A completion prompt containing `REPLY:<JSON string>` gets that string
as its text (post-processing tests); `REPLY:[<JSON strings>]` gives the text in pieces, which a stream sends as
its chunks (choices interleaved), and a streamed `REPLY:"…"` goes out in chunks of two characters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_SLEEP = re.compile(r"SLEEP:([0-9.]+)")
_STRING = r'"(?:[^"\\]|\\.)*"'
_REPLY = re.compile(rf"REPLY:({_STRING}|\[\s*{_STRING}(?:\s*,\s*{_STRING})*\s*\])")
_state: dict[str, Any] = {"models": ["fake-model"], "last": None, "texts": []}


def _text_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


def _usage() -> dict[str, int]:
    return {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


async def _prelude(request: Request) -> tuple[dict[str, Any], Response | None]:
    body = await request.json()
    _state["last"] = body
    _state["texts"].append(_text_of(body))
    if body.get("model") not in _state["models"]:
        error = {
            "message": f"The model `{body.get('model')}` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
        return body, JSONResponse({"error": error}, status_code=404)
    if body.get("suffix") is not None:
        error = {
            "message": "suffix is not currently supported",
            "type": "BadRequestError",
            "param": "suffix",
            "code": 400,
        }
        return body, JSONResponse({"error": error}, status_code=400)
    match = _SLEEP.search(_text_of(body))
    if match:
        await asyncio.sleep(float(match.group(1)))
    return body, None


def _sse(chunks: list[dict[str, Any]]) -> StreamingResponse:
    async def gen() -> Any:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream")


async def chat(request: Request) -> Response:
    body, error = await _prelude(request)
    if error is not None:
        return error
    n = int(body.get("n") or 1)
    base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body["model"]}
    if body.get("stream"):
        chunks = [
            dict(
                base,
                object="chat.completion.chunk",
                choices=[{"index": i, "delta": {"role": "assistant", "content": w}, "finish_reason": None}],
            )
            for i in range(n)
            for w in ("Hello", " world")
        ]
        chunks.append(
            dict(
                base,
                object="chat.completion.chunk",
                choices=[{"index": i, "delta": {}, "finish_reason": "stop"} for i in range(n)],
            )
        )
        return _sse(chunks)
    choices = [
        {"index": i, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}
        for i in range(n)
    ]
    return JSONResponse(dict(base, object="chat.completion", choices=choices, usage=_usage()))


async def completions(request: Request) -> Response:
    body, error = await _prelude(request)
    if error is not None:
        return error
    n = int(body.get("n") or 1)
    base = {"id": "cmpl-fake", "created": int(time.time()), "model": body["model"], "object": "text_completion"}
    pieces = _reply_pieces(_text_of(body))
    if body.get("stream"):
        chunks = [
            dict(base, choices=[{"index": i, "text": w, "finish_reason": None, "logprobs": None}])
            for i in range(n)
            for w in (" return", " 42")
        ]
        if pieces is not None:
            chunks = [
                dict(base, choices=[{"index": i, "text": w, "finish_reason": None, "logprobs": None}])
                for w in pieces
                for i in range(n)
            ]
        chunks.append(
            dict(
                base, choices=[{"index": i, "text": "", "finish_reason": "length", "logprobs": None} for i in range(n)]
            )
        )
        return _sse(chunks)
    text = "".join(pieces) if pieces is not None else " return 42"
    choices = [{"index": i, "text": text, "finish_reason": "length", "logprobs": None} for i in range(n)]
    return JSONResponse(dict(base, choices=choices, usage=_usage()))


def _reply_pieces(prompt: str) -> list[str] | None:
    """The REPLY marker's text in stream chunks; None without a marker."""
    reply = _REPLY.search(prompt)
    if reply is None:
        return None
    value = json.loads(reply.group(1))
    if isinstance(value, list):
        return [str(piece) for piece in value]
    return [value[i : i + 2] for i in range(0, len(value), 2)] or [""]


async def embeddings(request: Request) -> Response:
    body, error = await _prelude(request)
    if error is not None:
        return error
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
    return JSONResponse(
        {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    )


async def models(request: Request) -> Response:
    data = [{"id": m, "object": "model", "owned_by": "vllm", "max_model_len": 512} for m in _state["models"]]
    return JSONResponse({"object": "list", "data": data})


async def last(request: Request) -> Response:
    return JSONResponse(_state["last"])


async def count(request: Request) -> Response:
    needle = request.query_params.get("contains", "")
    return JSONResponse(sum(needle in text for text in _state["texts"]))


async def health(request: Request) -> Response:
    return Response(status_code=200)


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
        Route("/_last", last),
        Route("/_count", count),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append")
    args = parser.parse_args()
    _state["models"] = args.model or ["fake-model"]
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
