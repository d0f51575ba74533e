"""The Tabby route's added latency against calling vLLM directly with the same prompt, side by side.

Usage: .venv/bin/python -m bench.bench_tabby [--vllm URL | --fake] [--requests 200] [--rounds 4] [--max-tokens 8]
                                             [--out FILE.json]

Without --vllm it starts a real vLLM server (scripts/vllm-serve.sh, the tiny model) and stops it at the end; --fake
uses tests/fake_upstream.py instead (the proxy's own cost only). It starts kodify-proxy (dummy auth) with qwen.json
made greedy (temperature 0, max_tokens --max-tokens), then measures in interleaved rounds, sequentially (a user waits
on one completion per keystroke) from one httpx client with keep-alive:
  direct  POST {vllm}/v1/completions with the prompt and stops the Tabby route builds (fim.build_prompt)
  openai  POST {proxy}/v1/completions with that same prompt (LiteLLM's path with our hooks)
  tabby   POST {proxy}/v1/completions with the Tabby body (dispatch + prompt building + LiteLLM + post-processing)
Greedy decoding with the same prompt and stops makes every target generate the same tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.bench_proxy import percentile
from kodify_proxy import fim
from kodify_proxy.preprocess import load_shipped
from tests.servers import REPO, Server, fake_upstream, free_port, kodify_proxy, upstreams_yaml

PREFIX = "import os\n\n\ndef fib(n):\n    if n <= 1:\n        return n\n    return "
SUFFIX = "\n\n\nprint(fib(10))\n"


@dataclass(frozen=True)
class Call:
    """One measured request."""

    name: str
    url: str
    body: dict[str, Any]


def start_vllm(workdir: Path) -> str:
    """A real vLLM server via scripts/vllm-serve.sh; its base URL."""
    command = ["bash", str(REPO / "scripts/vllm-serve.sh"), "--port", str(free_port()), "--workdir", str(workdir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"vLLM did not start:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def calls(upstream: str, model: str, proxy: str, max_tokens: int) -> list[Call]:
    """The three requests, built so that they ask the model for exactly the same thing."""
    config = load_shipped("qwen")
    built = fim.build_prompt(fim.FimInput(PREFIX, SUFFIX, "python"), config)
    direct = {
        "model": model,
        "prompt": built.prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stop": list(built.stop),
    }
    tabby = {"language": "python", "segments": {"prefix": PREFIX, "suffix": SUFFIX}, "temperature": 0}
    return [
        Call("direct", upstream + "/v1/completions", direct),
        Call("openai", proxy + "/v1/completions", direct),
        Call("tabby", proxy + "/v1/completions", tabby),
    ]


def run(client: httpx.Client, call: Call, count: int) -> list[float]:
    """`count` sequential requests; latencies in seconds."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post(call.url, json=call.body)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"{call.name}: {response.status_code} {response.text[:300]}")
    return latencies


def measure(targets: list[Call], requests: int, rounds: int) -> dict[str, dict[str, float]]:
    """Interleaved rounds so load drift hits every target alike."""
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    with httpx.Client(timeout=120) as client:
        for target in targets:
            run(client, target, 10)  # warm-up
        for _ in range(rounds):
            for target in targets:
                samples[target.name] += run(client, target, requests // rounds)
    return {
        name: {
            "p50_ms": round(statistics.median(lat) * 1000, 2),
            "p90_ms": round(percentile(lat, 90) * 1000, 2),
            "p99_ms": round(percentile(lat, 99) * 1000, 2),
            "n": len(lat),
        }
        for name, lat in samples.items()
    }


def render_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown, with the added p50 over the direct call."""
    direct = results["direct"]["p50_ms"]
    lines = ["| target | p50 ms | p90 ms | p99 ms | added p50 ms |", "|---|---|---|---|---|"]
    for name, row in results.items():
        added = "" if name == "direct" else f"{row['p50_ms'] - direct:+.2f}"
        lines.append(f"| {name} | {row['p50_ms']} | {row['p90_ms']} | {row['p99_ms']} | {added} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm", help="a running vLLM server's base URL (default: start one)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--fake", action="store_true", help="use the fake upstream instead of vLLM")
    parser.add_argument("--requests", type=int, default=200, help="requests per target")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kodify-bench-tabby-"))
    servers: list[Server] = []
    started_vllm = False
    try:
        model = "fake-model" if args.fake else args.model
        upstream = args.vllm
        if args.fake:
            servers.append(fake_upstream(tmp, (model,)).start())
            upstream = servers[-1].url
        elif upstream is None:
            upstream, started_vllm = start_vllm(tmp / "vllm"), True
        data = load_shipped("qwen").model_dump()
        data["temperature"], data["max_tokens"]["default"] = 0.0, args.max_tokens
        (tmp / "qwen-greedy.json").write_text(json.dumps(data))
        env = {"COMPLETIONS_PREPROCESSING_CONFIG": str(tmp / "qwen-greedy.json"), "KODIFY_DISCOVERY_INTERVAL": "10"}
        servers.append(kodify_proxy(tmp, upstreams_yaml(upstream), env=env).start())
        results = measure(calls(upstream, model, servers[-1].url, args.max_tokens), args.requests, args.rounds)
    finally:
        for server in reversed(servers):
            server.stop()
        if started_vllm:
            subprocess.run(["bash", str(REPO / "scripts/vllm-stop.sh"), "--workdir", str(tmp / "vllm")], check=False)
    meta = {
        "upstream": "fake" if args.fake else "vllm",
        "max_tokens": args.max_tokens,
        "requests": args.requests,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "loadavg_after": os.getloadavg(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(render_table(results))
    print(json.dumps(meta))
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
