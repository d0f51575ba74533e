"""Fair share on real vLLM: one user floods chat while another types, through kodify-proxy without and with limits.

Usage: .venv/bin/python -m bench.bench_fair [--vllm URL] [--flood 64] [--keystrokes 40] [--out FILE.json]

Both servers run side by side (dummy auth; the two users are two client addresses, forwarded as a trusted proxy
forwards them): `open` has no limit, `limited` has KODIFY_LIMIT_CHAT_CONCURRENCY (default 2) counted in the real Redis
on 127.0.0.1:6379. For each server:
  alone   the typist sends --keystrokes autocompletions one after the other (greedy, 16 tokens): p50/p95.
  flood   the flooder keeps --flood chats in flight (each streamed to the end, 64 tokens; on a 429 it waits out
          Retry-After, as the OpenAI SDKs do) while the typist types again; the typist's p50/p95, the flooder's
          answers and 429s, and vLLM's queue and batch (`vllm:num_requests_waiting`, `_running`, every 0.25 s).
Then the limiter's own cost: Limiter.admit + release against the same Redis, in process, per request.
Without --vllm a real vLLM server is started (scripts/vllm-serve.sh, the tiny model).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.bench_lane import stop_vllm
from bench.bench_proxy import percentile, report
from bench.bench_tabby import PREFIX, SUFFIX, start_vllm
from kodify_proxy.limits import Limiter, Limits, RedisCounts
from tests.servers import kodify_proxy, upstreams_yaml

REDIS = "redis://127.0.0.1:6379/0"
TYPIST, FLOODER = "2001:db8::7", "2001:db8::f"


def served_model(base: str) -> str:
    return str(httpx.get(base + "/v1/models", timeout=10).json()["data"][0]["id"])


async def keystrokes(session: aiohttp.ClientSession, base: str, model: str, count: int) -> list[float]:
    """`count` autocompletions in sequence, each a little longer prefix (a user typing); latencies in ms."""
    latencies = []
    for i in range(count):
        body = {"model": model, "prompt": PREFIX + "x" * i + SUFFIX, "max_tokens": 16, "temperature": 0}
        started = time.perf_counter()
        async with session.post(base + "/v1/completions", json=body, headers={"X-Forwarded-For": TYPIST}) as r:
            await r.read()
            assert r.status == 200, r.status
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def flood(
    session: aiohttp.ClientSession, base: str, model: str, stop: asyncio.Event, seen: dict[str, int]
) -> None:
    """One of the flooder's chat loops: stream to the end, again; on a 429 sleep Retry-After (as the SDKs do)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Write a long story {uuid.uuid4().hex}."}],
        "max_tokens": 64,
        "stream": True,
    }
    while not stop.is_set():
        async with session.post(base + "/v1/chat/completions", json=body, headers={"X-Forwarded-For": FLOODER}) as r:
            if r.status == 429:
                seen["429"] += 1
                retry = float(r.headers.get("retry-after", "1"))
                await r.read()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), retry)
                continue
            async for _ in r.content:
                pass
            seen[str(r.status)] = seen.get(str(r.status), 0) + 1


async def queue_samples(vllm: str, stop: asyncio.Event, samples: dict[str, list[float]]) -> None:
    """vLLM's queue and batch (`vllm:num_requests_waiting`, `_running`) every 0.25 s."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            async with session.get(vllm + "/metrics") as r:
                text = await r.text()
            for name, values in samples.items():
                found = re.findall(rf"^vllm:num_requests_{name}\{{[^}}]*\}} (\S+)", text, re.MULTILINE)
                values.append(sum(float(v) for v in found))
            await asyncio.sleep(0.25)


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"p50_ms": round(statistics.median(ordered), 1), "p95_ms": round(percentile(ordered, 95), 1)}


async def measure(base: str, vllm: str, model: str, flooders: int, strokes: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        await keystrokes(session, base, model, 5)  # warm-up
        alone = summary(await keystrokes(session, base, model, strokes))
        stop, seen = asyncio.Event(), {"200": 0, "429": 0}
        vllm_state: dict[str, list[float]] = {"waiting": [], "running": []}
        floods = [asyncio.create_task(flood(session, base, model, stop, seen)) for _ in range(flooders)]
        sampler = asyncio.create_task(queue_samples(vllm, stop, vllm_state))
        await asyncio.sleep(5)  # the flood is under way
        started = time.monotonic()
        during = summary(await keystrokes(session, base, model, strokes))
        elapsed = time.monotonic() - started
        stop.set()
        await asyncio.gather(*floods, sampler, return_exceptions=True)
    return {
        "alone": alone,
        "flood": during,
        "ratio_p50": round(during["p50_ms"] / alone["p50_ms"], 2),
        "flooder_answers": seen.get("200", 0),
        "flooder_429": seen["429"],
        "flood_seconds": round(elapsed + 5, 1),
        **{
            f"vllm_{name}_{how}": round(pick(values), 1) if values else None
            for name, values in vllm_state.items()
            for how, pick in (("mean", statistics.mean), ("max", max))
        },
    }


async def limiter_cost(rounds: int = 2000) -> dict[str, float]:
    """Limiter.admit + release (the Lua scripts) against Redis on localhost, per request, in microseconds."""
    defaults = {"completions": Limits(rpm=10**6, concurrency=10**6), "chat": Limits(), "embeddings": Limits()}
    limiter = Limiter(defaults, RedisCounts(REDIS), 600)  # type: ignore[arg-type]
    key = f"bench:{uuid.uuid4().hex}"
    try:
        started = time.perf_counter()
        for i in range(rounds):
            request_id = f"r{i}"
            await limiter.admit(key, "completions", request_id, "bench")
            await limiter.release(key, "completions", request_id, 10)
        return {"admit_and_release_us": round((time.perf_counter() - started) / rounds * 1e6, 1)}
    finally:
        await limiter.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm", default=None)
    parser.add_argument("--flood", type=int, default=64)
    parser.add_argument("--keystrokes", type=int, default=40)
    parser.add_argument("--chat-concurrency", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        vllm = args.vllm or start_vllm(tmp / "vllm")
        model = served_model(vllm)
        limits = {"KODIFY_LIMIT_CHAT_CONCURRENCY": str(args.chat_concurrency), "REDIS_URL": REDIS}
        servers = {
            "open": kodify_proxy(tmp, upstreams_yaml(vllm), name="open"),
            "limited": kodify_proxy(tmp, upstreams_yaml(vllm), limits, name="limited"),
        }
        results: dict[str, Any] = {"model": model, "flooders": args.flood, "limits": limits}
        try:
            for server in servers.values():
                server.start(timeout=180)
            for name_, server in servers.items():
                results[name_] = asyncio.run(measure(server.url, vllm, model, args.flood, args.keystrokes))
                time.sleep(5)  # vLLM drains what the flood left
            results["limiter"] = asyncio.run(limiter_cost())
        finally:
            for server in servers.values():
                server.stop()
            if args.vllm is None:
                stop_vllm(tmp / "vllm")
    report(results, args.out)


if __name__ == "__main__":
    main()
