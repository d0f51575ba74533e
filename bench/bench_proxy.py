"""Added latency and throughput of kodify-proxy vs the upstream called directly vs bare LiteLLM, side by side.

Usage: .venv/bin/python -m bench.bench_proxy [--upstream URL --model NAME] [--requests 300] [--out FILE.json]

Without --upstream it starts the fake upstream (tests/fake_upstream.py), so the numbers are the proxies' own
cost. It starts kodify-proxy (dummy auth, our hooks) and bare `litellm --config` with the same model_list and a
master key, then measures the three targets in interleaved rounds from one client process (httpx, keep-alive):
sequential requests (concurrency 1) and 16 concurrent clients, for chat, text completions and streamed chat
(read to the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.servers import REPO, Server, fake_upstream, free_port, kodify_proxy, upstreams_yaml

MASTER_KEY = "sk-bench-" + "0" * 24


@dataclass(frozen=True)
class Target:
    """One thing to measure: a base URL and the headers it needs."""

    name: str
    base: str
    headers: dict[str, str]


def bodies(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The request of each kind, the same for every target."""
    return {
        "chat": (
            "/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "def fib(n):"}], "max_tokens": 8},
        ),
        "text": ("/v1/completions", {"model": model, "prompt": "def fib(n):", "max_tokens": 8}),
        "stream": (
            "/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "def fib(n):"}], "max_tokens": 8, "stream": True},
        ),
    }


def start_bare_litellm(tmp: Path, upstream: str, model: str) -> Server:
    """`litellm --config` with the same deployment kodify-proxy builds, but none of our plugin."""
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"hosted_vllm/{model}",
                    "api_base": f"{upstream}/v1",
                    "timeout": 600,
                    "max_retries": 0,
                },
            }
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "litellm_settings": {"request_timeout": 600, "num_retries": 0},
    }
    path = tmp / "bare.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    litellm_bin = str(Path(sys.executable).with_name("litellm"))
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_DISABLE_LATEST_RELEASE_CHECK": "true"}
    server = Server(
        "bare-litellm",
        [litellm_bin, "--config", str(path), "--port", str(port), "--host", "127.0.0.1"],
        port,
        tmp / "bare.log",
        env=env,
        ready_path="/health/liveliness",
    )
    return server.start(timeout=120)


async def run_round(
    client: httpx.AsyncClient, target: Target, path: str, body: dict[str, Any], count: int, concurrency: int
) -> tuple[list[float], float]:
    """`count` requests with `concurrency` in flight; per-request latencies (s) and wall time."""
    latencies: list[float] = []
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            started = time.perf_counter()
            response = await client.post(target.base + path, json=body, headers=target.headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{target.name}: {response.status_code} {response.text[:300]}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def report(results: Any, out: Path | None) -> None:
    """Print the results as JSON, and write them to `out` (--out) when given."""
    text = json.dumps(results, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def measure(targets: list[Target], model: str, requests: int, rounds: int) -> dict[str, Any]:
    """Interleave targets round by round so drift in machine load hits all of them alike."""
    results: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for kind, (path, body) in bodies(model).items():
            for concurrency in (1, 16):
                for target in targets:  # warm-up
                    await run_round(client, target, path, body, 20, concurrency)
                samples: dict[str, list[float]] = {t.name: [] for t in targets}
                walls: dict[str, float] = {t.name: 0.0 for t in targets}
                for _ in range(rounds):
                    for target in targets:
                        lat, wall = await run_round(client, target, path, body, requests // rounds, concurrency)
                        samples[target.name] += lat
                        walls[target.name] += wall
                for target in targets:
                    lat = samples[target.name]
                    results[f"{kind} c={concurrency} {target.name}"] = {
                        "p50_ms": round(statistics.median(lat) * 1000, 2),
                        "p99_ms": round(percentile(lat, 99) * 1000, 2),
                        "rps": round(len(lat) / walls[target.name], 1),
                        "n": len(lat),
                    }
    return results


def render_table(results: dict[str, Any]) -> str:
    """A markdown table with the added latency over the direct upstream."""
    lines = ["| request | target | p50 ms | p99 ms | req/s | added p50 ms |", "|---|---|---|---|---|---|"]
    for key, row in results.items():
        kind, conc, name = key.split(" ")
        direct = results[f"{kind} {conc} direct"]["p50_ms"]
        added = "" if name == "direct" else f"{row['p50_ms'] - direct:+.2f}"
        lines.append(f"| {kind} {conc} | {name} | {row['p50_ms']} | {row['p99_ms']} | {row['rps']} | {added} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", help="an existing OpenAI-compatible upstream (default: start the fake one)")
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--requests", type=int, default=300, help="requests per target and scenario")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kodify-bench-"))
    servers: list[Server] = []
    try:
        upstream = args.upstream
        if upstream is None:
            servers.append(fake_upstream(tmp, (args.model,)).start())
            upstream = servers[-1].url
        servers.append(kodify_proxy(tmp, upstreams_yaml(upstream), env={"KODIFY_DISCOVERY_INTERVAL": "10"}).start())
        kodify = servers[-1]
        servers.append(start_bare_litellm(tmp, upstream, args.model))
        bare = servers[-1]
        targets = [
            Target("direct", upstream, {}),
            Target("bare-litellm", bare.url, {"Authorization": f"Bearer {MASTER_KEY}"}),
            Target("kodify-proxy", kodify.url, {}),
        ]
        results = asyncio.run(measure(targets, args.model, args.requests, args.rounds))
    finally:
        for server in reversed(servers):
            server.stop()
    meta = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_after": os.getloadavg(),
        "upstream": args.upstream or "fake",
        "requests": args.requests,
        "rounds": args.rounds,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "repo": str(REPO),
    }
    report = {"meta": meta, "results": results}
    print(render_table(results))
    print(json.dumps(meta))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
