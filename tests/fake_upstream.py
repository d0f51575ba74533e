"""A small OpenAI/vLLM-compatible server for fast tests and benchmarks (run as its own process).

`python -m tests.fake_upstream --port P --model NAME [--model NAME2]`. It echoes, records the last request
body (GET /_last), counts requests by content (GET /_count?contains=X) and sleeps `SLEEP:<seconds>` when a
prompt or message contains that marker. A completion prompt containing `REPLY:<JSON string>` gets that string
as its text (post-processing tests); `REPLY:[<JSON strings>]` gives the text in pieces, which a stream sends as
its chunks (choices interleaved), and a streamed `REPLY:"…"` goes out in chunks of two characters.
`DRIP:<seconds>` makes a completion take that long, in 20 steps (a stream sends one chunk per step), watching
for the client to leave: GET /_disconnects counts the requests whose client left first, as vLLM aborts them.
`SILENT:<seconds>` makes a stream send one chunk, then nothing for that long. `FLOOD:<count>` makes a chat stream
send that many content chunks as fast as the connection takes them (as vLLM's tiny model outruns LiteLLM).
Every answer names this server in `system_fingerprint` (`fake-<port>`), and a stream with
`stream_options.include_usage` ends with vLLM's usage chunk.
GET /v1/models counts as GET /_count?contains=/v1/models.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

import uvicorn
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_SLEEP = re.compile(r"SLEEP:([0-9.]+)")
_DRIP = re.compile(r"DRIP:([0-9.]+)")
_SILENT = re.compile(r"SILENT:([0-9.]+)")
_FLOOD = re.compile(r"FLOOD:([0-9]+)")
_STRING = r'"(?:[^"\\]|\\.)*"'
_REPLY = re.compile(rf"REPLY:({_STRING}|\[\s*{_STRING}(?:\s*,\s*{_STRING})*\s*\])")
_state: dict[str, Any] = {"models": ["fake-model"], "last": None, "texts": [], "disconnects": 0, "port": 0}


def _text_of(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        return " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return str(body.get("prompt", body.get("input", "")))


def _usage() -> dict[str, int]:
    return {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


class _Sampling(BaseModel):
    """The fields vLLM's own (lax) pydantic models check before anything runs, with vLLM's bounds."""

    model: str | None = None
    n: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stream: bool | None = None
    stream_options: dict[str, bool | None] | None = None
    stop: str | list[str] | None = None


class _Chat(_Sampling):
    messages: list[dict[str, Any]]


class _Completion(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]


class _Embedding(BaseModel):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]


_SHAPES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": _Chat,
    "/v1/completions": _Completion,
    "/v1/embeddings": _Embedding,
}


def _vllm_refusal(exc: ValidationError) -> JSONResponse:
    """A validation error as vLLM's server words it (vllm/entrypoints/openai: 'N validation errors', body.<field>)."""
    found = exc.errors(include_url=False)
    lines = ["  " + str({"type": e["type"], "loc": f"body.{e['loc'][0]}", "msg": e["msg"]}) for e in found]
    message = f"{len(found)} validation error{'s' if len(found) > 1 else ''}:\n" + "\n".join(lines)
    param = f"body.{found[0]['loc'][0]}"  # vLLM names the field, not the union member that failed
    error = {"message": message, "type": "Bad Request", "param": param, "code": 400}
    return JSONResponse({"error": error}, status_code=400)


async def _prelude(request: Request) -> tuple[dict[str, Any], Response | None]:
    body = await request.json()
    _state["last"] = body
    _state["texts"].append(_text_of(body))
    try:
        checked = _SHAPES[request.url.path].model_validate(body)
    except ValidationError as exc:
        return body, _vllm_refusal(exc)
    body = {**body, **checked.model_dump(exclude_unset=True)}  # read as vLLM reads them: "2" is 2, "yes" is true
    if body.get("messages") == []:
        message = "Cannot apply chat template to an empty conversation. Provide at least one message."
        error = {"message": message, "type": "BadRequestError", "param": None, "code": 400}
        return body, JSONResponse({"error": error}, status_code=400)
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


def _id(kind: str, request: Request) -> str:
    """vLLM's answer id: named after the X-Request-Id the caller sent, if it sent one."""
    given = request.headers.get("x-request-id")
    return f"{kind}-{given}" if given else f"{kind}-fake"


def _fingerprint() -> str:
    return f"fake-{_state['port']}"


def _sse(chunks: list[dict[str, Any]], body: dict[str, Any]) -> StreamingResponse:
    drip, silent = _marker(_DRIP, body), _marker(_SILENT, body)
    if (body.get("stream_options") or {}).get("include_usage"):
        usage_chunk = {key: chunks[0][key] for key in ("id", "object", "created", "model")}
        chunks = [*chunks, {**usage_chunk, "choices": [], "usage": _usage()}]

    async def gen() -> Any:
        try:
            for position, chunk in enumerate(chunks):
                yield f"data: {json.dumps({**chunk, 'system_fingerprint': _fingerprint()})}\n\n"
                await asyncio.sleep(drip / 20 if drip else 0)
                if silent and position == 0:
                    await asyncio.sleep(silent)
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            _state["disconnects"] += 1
            raise

    return StreamingResponse(gen(), media_type="text/event-stream")


def _marker(pattern: re.Pattern[str], body: dict[str, Any]) -> float:
    match = pattern.search(_text_of(body))
    return float(match.group(1)) if match else 0.0


async def _drip(request: Request, body: dict[str, Any]) -> bool:
    """Wait out a DRIP marker in steps; False (and counted) when the client left meanwhile."""
    seconds = _marker(_DRIP, body)
    for _ in range(20 if seconds else 0):
        await asyncio.sleep(seconds / 20)
        if await request.is_disconnected():
            _state["disconnects"] += 1
            return False
    return True


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
            for w in ("Hello", " world") + (" x",) * int(_marker(_FLOOD, body))
        ]
        chunks.append(
            dict(
                base,
                object="chat.completion.chunk",
                choices=[{"index": i, "delta": {}, "finish_reason": "stop"} for i in range(n)],
            )
        )
        return _sse(chunks, body)
    if not await _drip(request, body):
        return Response(status_code=499)
    choices = [
        {"index": i, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}
        for i in range(n)
    ]
    answer = dict(base, object="chat.completion", choices=choices, usage=_usage(), system_fingerprint=_fingerprint())
    return JSONResponse(answer)


async def completions(request: Request) -> Response:
    body, error = await _prelude(request)
    if error is not None:
        return error
    n = int(body.get("n") or 1)
    base: dict[str, Any] = {
        "id": _id("cmpl", request),
        "created": int(time.time()),
        "model": body["model"],
        "object": "text_completion",
    }
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
        return _sse(chunks, body)
    if not await _drip(request, body):
        return Response(status_code=499)
    text = "".join(pieces) if pieces is not None else " return 42"
    choices: list[dict[str, Any]] = [
        {"index": i, "text": text, "finish_reason": "length", "logprobs": None} for i in range(n)
    ]
    if body.get("return_token_ids") and isinstance(body.get("prompt"), list):
        for choice in choices:
            choice.update(prompt_token_ids=body["prompt"], token_ids=[7, 8, 9])
    return JSONResponse(dict(base, choices=choices, usage=_usage(), system_fingerprint=_fingerprint()))


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
    if "embed" not in str(body["model"]):  # vLLM: a generation model has no embeddings endpoint
        refusal = {"message": "The model does not support Embeddings API", "type": "BadRequestError", "code": 400}
        return JSONResponse({"error": {**refusal, "param": None}}, status_code=400)
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
    return JSONResponse(
        {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    )


async def models(request: Request) -> Response:
    _state["texts"].append("/v1/models")
    data = [{"id": m, "object": "model", "owned_by": "vllm", "max_model_len": 512} for m in _state["models"]]
    return JSONResponse({"object": "list", "data": data})


async def last(request: Request) -> Response:
    return JSONResponse(_state["last"])


async def count(request: Request) -> Response:
    needle = request.query_params.get("contains", "")
    return JSONResponse(sum(needle in text for text in _state["texts"]))


async def health(request: Request) -> Response:
    return Response(status_code=200)


async def disconnects(request: Request) -> Response:
    return JSONResponse(_state["disconnects"])


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
        Route("/_last", last),
        Route("/_count", count),
        Route("/_disconnects", disconnects),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append")
    args = parser.parse_args()
    _state["models"] = args.model or ["fake-model"]
    _state["port"] = args.port
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
