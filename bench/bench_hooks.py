"""kodify-proxy's own per-request cost, in process: pre-call hook, dummy auth and the ASGI error layer.

Usage: .venv/bin/python -m bench.bench_hooks [--calls 20000]
Each figure is the mean over `calls` calls of one piece, with nothing else around it, so it isolates our share
of the latency that bench_proxy measures end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from kodify_proxy import runtime
from kodify_proxy.monitor import UpstreamMonitor
from kodify_proxy.settings import load_settings
from kodify_proxy.upstreams import UpstreamState, parse_config


def bind_runtime() -> None:
    """A runtime with one healthy upstream serving `coder`, as serve would bind it."""
    config = parse_config("upstreams:\n  http://127.0.0.1:9:\n", Path("bench.yml"))
    state = UpstreamState(upstream=config.upstreams[0], healthy=True, models=("coder",))
    settings = load_settings({})
    runtime.bind(runtime.Runtime(settings, UpstreamMonitor(config, settings, [state]), master_key="sk-bench"))


async def per_call_us(fn: Any, calls: int) -> float:
    """Mean microseconds per awaited call of `fn()`."""
    for _ in range(200):
        await fn()
    started = time.perf_counter()
    for _ in range(calls):
        await fn()
    return (time.perf_counter() - started) / calls * 1e6


async def bench(calls: int) -> dict[str, float]:
    """Time each of our per-request pieces."""
    from starlette.requests import Request

    from kodify_proxy.auth import user_api_key_auth
    from kodify_proxy.hooks import proxy_handler
    from kodify_proxy.middleware import ErrorShapingMiddleware

    chat = {"model": "coder", "messages": [{"role": "user", "content": "def fib(n):"}], "max_tokens": 16, "n": 1}
    text = {"model": "coder", "prompt": "def fib(n):", "max_tokens": 16}
    request = Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []})

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def noop_send(message: Any) -> None:
        return None

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    wrapped = ErrorShapingMiddleware(inner)
    scope = {"type": "http", "path": "/v1/chat/completions"}
    return {
        "pre_call_hook chat (us)": await per_call_us(
            lambda: proxy_handler.async_pre_call_hook(None, None, dict(chat), "acompletion"), calls
        ),
        "pre_call_hook text (us)": await per_call_us(
            lambda: proxy_handler.async_pre_call_hook(None, None, dict(text), "atext_completion"), calls
        ),
        "custom_auth dummy (us)": await per_call_us(lambda: user_api_key_auth(request, ""), calls),
        "asgi layer, wrapped app (us)": await per_call_us(lambda: wrapped(scope, receive, noop_send), calls),
        "asgi layer, bare app (us)": await per_call_us(lambda: inner(scope, receive, noop_send), calls),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    bind_runtime()
    for name, value in asyncio.run(bench(args.calls)).items():
        print(f"{name:32s} {value:8.2f}")


if __name__ == "__main__":
    main()
