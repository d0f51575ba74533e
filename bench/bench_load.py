"""200 concurrent streams for a bounded time, vLLM direct vs through kodify-proxy: errors, latency, the proxy's RSS.

Usage: .venv/bin/python -m bench.bench_load [--vllm URL] [--streams 200] [--seconds 60] [--max-tokens 64]
                                            [--kind chat|completions|both] [--out FILE.json]

Each of `--streams` clients sends one streamed request after another (chat: LiteLLM's path; completions: the
lane), reads it to `[DONE]`, and counts what it got: a complete stream, an HTTP error (by status), a stream that
ended with an error event, a broken connection. Direct and proxied runs follow each other; the proxy's RSS is
sampled every second. Without --vllm a real vLLM server is started (scripts/vllm-serve.sh, the tiny model).
The load generator is aiohttp (lighter than httpx at this concurrency, so it leaves the two cores to the servers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.bench_lane import stop_vllm
from bench.bench_proxy import percentile
from bench.bench_tabby import start_vllm
from tests.servers import Server, kodify_proxy, upstreams_yaml


def body_of(kind: str, model: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
    """The path and body one client repeats."""
    common = {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": 0.8}
    if kind == "chat":
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": "Write a haiku."}]}
    return "/v1/completions", {**common, "prompt": "def fib(n):\n"}


async def one_stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any], tally: Counter[str]) -> float:
    """One streamed request read to its end; its latency to the last byte."""
    started = time.perf_counter()
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                tally[f"http_{response.status}"] += 1
                await response.read()
                return time.perf_counter() - started
            data = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally[f"connection_{type(exc).__name__}"] += 1
        return time.perf_counter() - started
    if b'data: {"error"' in data:
        tally["error_event"] += 1
    elif not data.rstrip().endswith(b"data: [DONE]"):
        tally["incomplete"] += 1
    else:
        tally["ok"] += 1
    return time.perf_counter() - started


def rss_mb(pid: int) -> float:
    """Resident memory of a process tree's root, MB."""
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def load(url: str, body: dict[str, Any], streams: int, seconds: float, pid: int | None) -> dict[str, Any]:
    """`streams` clients for `seconds`: counts, p50/p99 to the last byte, RSS samples of `pid`."""
    tally: Counter[str] = Counter()
    latencies: list[float] = []
    rss: list[float] = []
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            latencies.append(await one_stream(session, url, body, tally))

    async def sample() -> None:
        while pid is not None and time.monotonic() < deadline:
            rss.append(rss_mb(pid))
            await asyncio.sleep(1.0)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        await asyncio.gather(sample(), *(client(session) for _ in range(streams)))
        wall = time.monotonic() - started
    errors = sum(count for key, count in tally.items() if key != "ok")
    return {
        "requests": sum(tally.values()),
        "ok": tally["ok"],
        "errors": errors,
        "by_kind": dict(tally),
        "p50_s": round(statistics.median(latencies), 3),
        "p99_s": round(percentile(latencies, 99), 3),
        "streams_per_s": round(sum(tally.values()) / wall, 2),
        "rss_mb": {"start": round(rss[0], 1), "max": round(max(rss), 1), "end": round(rss[-1], 1)} if rss else None,
    }


def render(results: dict[str, Any]) -> str:
    """Markdown."""
    lines = ["| kind | target | requests | errors | p50 s | p99 s | streams/s | RSS MB start/max/end |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for key, row in results.items():
        kind, target = key.split(" ")
        rss = row["rss_mb"]
        shown = f"{rss['start']}/{rss['max']}/{rss['end']}" if rss else ""
        cells = [kind, target, row["requests"], f"{row['errors']} {row['by_kind']}", row["p50_s"], row["p99_s"]]
        lines.append("| " + " | ".join(str(c) for c in [*cells, row["streams_per_s"], shown]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm", help="a running vLLM server's base URL (default: start one)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--kind", choices=["chat", "completions", "both"], default="both")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kodify-bench-load-"))
    upstream, started = args.vllm, False
    proxy: Server | None = None
    results: dict[str, Any] = {}
    try:
        if upstream is None:
            upstream, started = start_vllm(tmp / "vllm"), True
        proxy = kodify_proxy(tmp, upstreams_yaml(upstream), env={"KODIFY_DISCOVERY_INTERVAL": "10"}).start()
        assert proxy.process is not None
        for kind in ("chat", "completions") if args.kind == "both" else (args.kind,):
            path, body = body_of(kind, args.model, args.max_tokens)
            for name, base, pid in (("direct", upstream, None), ("kodify-proxy", proxy.url, proxy.process.pid)):
                results[f"{kind} {name}"] = asyncio.run(load(base + path, body, args.streams, args.seconds, pid))
                print(json.dumps({f"{kind} {name}": results[f"{kind} {name}"]}))
        health = proxy.health()
    finally:
        if proxy is not None:
            proxy.stop()
        if started:
            stop_vllm(tmp / "vllm")
    meta = {
        "streams": args.streams,
        "seconds": args.seconds,
        "max_tokens": args.max_tokens,
        "cpus": os.cpu_count(),
        "loadavg_after": os.getloadavg(),
        "health_after": health["status"],
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(render(results))
    print(json.dumps(meta))
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
