"""Chat: vLLM direct, the chat lane and the LiteLLM path (KODIFY_CHAT_LANE=litellm), side by side in one run.

Usage: .venv/bin/python -m bench.bench_chat [--vllm URL] [--seconds 5] [--rounds 3] [--fake-only] [--out FILE.json]

Real vLLM (scripts/vllm-serve.sh, the tiny model; its compute threads at niceness 10 for every target alike, as in
bench_lane), measured in interleaved rounds from this one process with aiohttp clients:
  ttft          streamed chats of 32 tokens one after another: time to the first content chunk and to the end
                (p50/p99 per target)
  c16           16 clients streaming chats of 64 tokens in a loop for --seconds: streams per second
  keystrokes    completions of 16 tokens one after another through the lane while 16 chat streams run beside the
                proxy (straight to vLLM) or through it (the chat lane, or the LiteLLM path): keystroke p50/p95
  cancel        a client leaves a chat of 480 tokens after 0.15 s: the tokens vLLM went on generating
                (`vllm:generation_tokens_total`, median of 5), streamed and not
The fake upstream (tests/fake_upstream.py, no model cost): 16 clients stream answers of 65 chunks (a chat with
FLOOD:62; a completion with 64 REPLY pieces) for --seconds: chunks per second, direct and through each path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from bench.bench_lane import metric, model_compute_niced, stop_vllm, tokens_for_abandoned
from bench.bench_tabby import start_vllm
from tests.servers import Server, fake_upstream, kodify_proxy, upstreams_yaml

_CONTENT = re.compile(rb'"content":"[^"]')
PATHS = ("direct", "lane", "litellm")


def chat_body(model: str, tokens: int, text: str = "Write a Python function.") -> dict[str, Any]:
    """A streamed chat that generates exactly `tokens` tokens."""
    messages = [{"role": "user", "content": text}]
    return {"model": model, "messages": messages, "max_tokens": tokens, "ignore_eos": True, "stream": True}


async def stream_once(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[float, float, int]:
    """(seconds to the first content chunk, seconds to the end, events) of one streamed answer."""
    started, first, events, tail = time.perf_counter(), 0.0, 0, b""
    async with session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        async for data in response.content.iter_any():
            if not first and _CONTENT.search(tail + data):
                first = time.perf_counter() - started
            events += data.count(b"data:")
            tail = data[-64:]
    return first, time.perf_counter() - started, events


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ttft(bases: dict[str, str], model: str, rounds: int, per_round: int = 10) -> dict[str, dict[str, float]]:
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in bases}
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            for name, base in bases.items():
                for _ in range(per_round):
                    first, whole, _ = await stream_once(session, base + "/v1/chat/completions", chat_body(model, 32))
                    found[name].append((first, whole))
    return {
        name: {
            "ttft_p50_ms": 1000 * statistics.median(f for f, _ in runs),
            "ttft_p99_ms": 1000 * quantile([f for f, _ in runs], 0.99),
            "whole_p50_ms": 1000 * statistics.median(w for _, w in runs),
            "whole_p99_ms": 1000 * quantile([w for _, w in runs], 0.99),
        }
        for name, runs in found.items()
    }


async def loop_streams(url: str, body: dict[str, Any], clients: int, seconds: float) -> tuple[int, int]:
    """(answers, events) that `clients` looping clients streamed in `seconds`."""
    deadline, done = time.perf_counter() + seconds, [0, 0]

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            _, _, events = await stream_once(session, url, body)
            done[0], done[1] = done[0] + 1, done[1] + events

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return done[0], done[1]


async def concurrent(bases: dict[str, str], model: str, rounds: int, seconds: float) -> dict[str, float]:
    rates: dict[str, list[float]] = {name: [] for name in bases}
    for _ in range(rounds):
        for name, base in bases.items():
            answers, _ = await loop_streams(base + "/v1/chat/completions", chat_body(model, 64), 16, seconds)
            rates[name].append(answers / seconds)
    return {name: statistics.median(values) for name, values in rates.items()}


async def keystrokes_beside(lane: str, chat_base: str | None, model: str, seconds: float) -> tuple[float, float]:
    """Keystroke p50/p95 (ms) through the lane while 16 chat streams loop against `chat_base` (None: no chat)."""
    stop = time.perf_counter() + seconds
    body = {"model": model, "prompt": "def add(a, b):\n", "max_tokens": 16, "ignore_eos": True, "temperature": 0}
    latencies: list[float] = []

    async def typist() -> None:
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                async with session.post(lane + "/v1/completions", json=body) as response:
                    await response.read()
                latencies.append(1000 * (time.perf_counter() - started))

    chats: list[Awaitable[Any]] = []
    if chat_base is not None:
        chats.append(loop_streams(chat_base + "/v1/chat/completions", chat_body(model, 64), 16, seconds))
    await asyncio.gather(typist(), *chats)
    return statistics.median(latencies), quantile(latencies, 0.95)


async def keystrokes(bases: dict[str, str], model: str, rounds: int, seconds: float) -> dict[str, dict[str, float]]:
    cases: dict[str, str | None] = {"alone": None, "chat beside": bases["direct"]}
    cases |= {"chat through the chat lane": bases["lane"], "chat through the litellm path": bases["litellm"]}
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, chat_base in cases.items():
            found[name].append(await keystrokes_beside(bases["lane"], chat_base, model, seconds))
    return {
        name: {"p50_ms": statistics.median(p for p, _ in runs), "p95_ms": statistics.median(p for _, p in runs)}
        for name, runs in found.items()
    }


async def cancel(vllm: str, bases: dict[str, str], model: str, repeats: int = 5) -> dict[str, float]:
    long = {**chat_body(model, 480, "hi"), "temperature": 0}
    found: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, base in bases.items():
            for stream in (True, False):
                key = f"{name} {'streamed' if stream else 'whole'}"
                tokens, _ = await tokens_for_abandoned(vllm, base + "/v1/chat/completions", {**long, "stream": stream})
                found.setdefault(key, []).append(tokens)
    return {name: statistics.median(values) for name, values in found.items()}


async def chunk_rate(bases: dict[str, str], rounds: int, seconds: float) -> dict[str, float]:
    chat = {**chat_body("fake-model", 8, "FLOOD:62"), "stream": True}
    pieces = json.dumps([f"p{i}" for i in range(64)])
    completion = {"model": "fake-model", "prompt": f"REPLY:{pieces}", "max_tokens": 64, "stream": True}
    found: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, base in bases.items():
            cases = [("chat", "/v1/chat/completions", chat)]
            cases += [("completions", "/v1/completions", completion)] if name != "litellm" else []  # still the lane
            for kind, path, body in cases:
                _, events = await loop_streams(base + path, body, 16, seconds)
                found.setdefault(f"{kind} {name}", []).append(events / seconds)
    return {name: statistics.median(values) for name, values in found.items()}


def proxies(tmp: Path, upstream: str) -> tuple[list[Server], dict[str, str]]:
    env = {"KODIFY_DISCOVERY_INTERVAL": "10"}
    lane = kodify_proxy(tmp, upstreams_yaml(upstream), env=env, name="chat-lane").start()
    through = kodify_proxy(tmp, upstreams_yaml(upstream), env={**env, "KODIFY_CHAT_LANE": "litellm"}, name="litellm")
    through.start()
    return [lane, through], {"direct": upstream, "lane": lane.url, "litellm": through.url}


def run_all(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    fake = fake_upstream(tmp, ("fake-model",)).start()
    servers, bases = proxies(tmp / "fake", fake.url)
    try:
        results["fake chunks/s c=16"] = asyncio.run(chunk_rate(bases, args.rounds, args.seconds))
    finally:
        for server in [*servers, fake]:
            server.stop()
    if args.fake_only:
        return results
    vllm = args.vllm or start_vllm(tmp / "vllm")
    servers, bases = proxies(tmp / "vllm", vllm)
    measures: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
        "ttft and whole stream, 32 tokens": lambda: ttft(bases, args.model, args.rounds),
        "streams/s c=16, 64 tokens": lambda: concurrent(bases, args.model, args.rounds, args.seconds),
        "keystrokes with 16 chat streams": lambda: keystrokes(bases, args.model, args.rounds, args.seconds),
        "tokens after leaving at 0.15 s": lambda: cancel(vllm, bases, args.model),
    }
    try:
        with model_compute_niced(10):
            for name, measure in measures.items():
                results[name] = asyncio.run(measure())
                print(name, json.dumps(results[name], indent=1), flush=True)
        results["vllm generation tokens total"] = metric(vllm, "vllm:generation_tokens_total")
    finally:
        for server in servers:
            server.stop()
        if args.vllm is None:
            stop_vllm(tmp / "vllm")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm", help="a running vLLM server's base URL (default: start one)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fake-only", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as folder:
        results = run_all(Path(folder), args)
    print(json.dumps(results, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
