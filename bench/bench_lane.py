"""The autocompletion lane against vLLM direct, the LiteLLM path and bare LiteLLM, side by side in one run.

Usage: .venv/bin/python -m bench.bench_lane [--fake | --vllm URL] [--requests 200] [--rounds 4] [--max-tokens 16]
                                            [--cancel] [--prefix-cache] [--out FILE.json]

Targets, measured in interleaved rounds from one client process (httpx, keep-alive):
  direct        POST {upstream}/v1/completions with the FIM prompt the lane builds (fim.build_prompt, qwen.json)
  lane          kodify-proxy (KODIFY_COMPLETIONS_LANE=direct, the default)
  litellm-path  kodify-proxy with KODIFY_COMPLETIONS_LANE=litellm (the same checks, then LiteLLM's pipeline)
  bare-litellm  `litellm --config` with the same deployment and nothing of ours (OpenAI body only)
Bodies: `openai` (the FIM prompt, greedy, max_tokens) on every target, `tabby` (the same prefix and suffix as a
Tabby `segments` body) on the two kodify targets, compared with `direct` for the same prompt. Each scenario runs
sequentially (c=1: p50/p99, a user waiting on each keystroke) and with 16 concurrent clients (c=16: req/s).
Without --fake a real vLLM server is started (scripts/vllm-serve.sh, the tiny model) unless --vllm names one.

--cancel (real vLLM): a client asks for 480 tokens and hangs up after 0.15 s (a raw socket, as tabby-agent's abort);
  the tokens vLLM generated for it (`vllm:generation_tokens_total`), through each target and directly.
--prefix-cache (real vLLM): a second vLLM server; one file's keystrokes are successive FIM prompts sharing the
  file's start. vLLM's prefix-cache hit rate (`vllm:prefix_cache_hits_total / _queries_total`) for one upstream
  called directly, and through the lane over two upstreams with cache affinity on and off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.bench_proxy import MASTER_KEY, percentile, start_bare_litellm
from bench.bench_tabby import PREFIX, SUFFIX, start_vllm
from kodify_proxy import fim
from kodify_proxy.preprocess import load_shipped
from tests.clients import abandon
from tests.servers import REPO, Server, fake_upstream, kodify_proxy, upstreams_yaml


@dataclass(frozen=True)
class Target:
    """One thing to measure: a base URL and the headers it needs."""

    name: str
    base: str
    headers: dict[str, str]


def openai_body(model: str, max_tokens: int) -> dict[str, Any]:
    """The FIM completion the lane sends for PREFIX/SUFFIX, greedy."""
    built = fim.build_prompt(fim.FimInput(PREFIX, SUFFIX, "python"), load_shipped("qwen"))
    return {"model": model, "prompt": built.prompt, "max_tokens": max_tokens, "temperature": 0, "stop": list(built.stop)}


def tabby_body() -> dict[str, Any]:
    """The same completion as a Tabby client asks for it."""
    return {"language": "python", "segments": {"prefix": PREFIX, "suffix": SUFFIX}, "temperature": 0}


async def run_round(
    client: httpx.AsyncClient, target: Target, body: dict[str, Any], count: int, concurrency: int
) -> tuple[list[float], float]:
    """`count` requests with `concurrency` in flight; latencies (s) and wall time."""
    latencies: list[float] = []
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            started = time.perf_counter()
            response = await client.post(target.base + "/v1/completions", json=body, headers=target.headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{target.name}: {response.status_code} {response.text[:300]}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def measure(
    scenarios: dict[str, list[tuple[Target, dict[str, Any]]]], requests: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Every scenario at c=1 and c=16, targets interleaved round by round."""
    results: dict[str, dict[str, float]] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for scenario, pairs in scenarios.items():
            for concurrency in (1, 16):
                for target, body in pairs:
                    await run_round(client, target, body, 20, concurrency)  # warm-up
                samples: dict[str, list[float]] = {t.name: [] for t, _ in pairs}
                walls = dict.fromkeys(samples, 0.0)
                for _ in range(rounds):
                    for target, body in pairs:
                        lat, wall = await run_round(client, target, body, requests // rounds, concurrency)
                        samples[target.name] += lat
                        walls[target.name] += wall
                for name, lat in samples.items():
                    results[f"{scenario} c={concurrency} {name}"] = {
                        "p50_ms": round(statistics.median(lat) * 1000, 2),
                        "p99_ms": round(percentile(lat, 99) * 1000, 2),
                        "rps": round(len(lat) / walls[name], 1),
                        "n": len(lat),
                    }
    return results


def render_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: each target with its ratio to direct (p50 at c=1, req/s at c=16)."""
    lines = ["| body | c | target | p50 ms | p99 ms | req/s | vs direct |", "|---|---|---|---|---|---|---|"]
    for key, row in results.items():
        scenario, conc, name = key.split(" ")
        direct = results[f"{scenario} {conc} direct"]
        ratio = row["p50_ms"] / direct["p50_ms"] if conc == "c=1" else row["rps"] / direct["rps"]
        shown = "" if name == "direct" else f"{ratio:.3f}x {'p50' if conc == 'c=1' else 'req/s'}"
        lines.append(f"| {scenario} | {conc[2:]} | {name} | {row['p50_ms']} | {row['p99_ms']} | {row['rps']} | {shown} |")
    return "\n".join(lines)


def metric(base: str, name: str) -> float:
    """A counter from vLLM's /metrics (summed over its label sets)."""
    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)", text, re.MULTILINE))


async def tokens_after_leaving(vllm: str, url: str, body: dict[str, Any]) -> float:
    """Tokens vLLM generated for a request whose client hung up after 0.15 s."""
    before = metric(vllm, "vllm:generation_tokens_total")
    await abandon(url, body, after=0.15)
    await asyncio.sleep(4.0)  # 480 tokens take ~3 s here: by now vLLM finished or aborted
    return metric(vllm, "vllm:generation_tokens_total") - before


async def measure_cancel(vllm: str, proxy: str, model: str, repeats: int = 3) -> dict[str, float]:
    """Median tokens generated after a 0.15 s disconnect, per path."""
    long = {"model": model, "max_tokens": 480, "ignore_eos": True, "temperature": 0}
    completion = {**long, "prompt": "def f(x):\n"}
    chat = {**long, "messages": [{"role": "user", "content": "hi"}]}
    cases = {
        "completions direct": (vllm, "/v1/completions", completion),
        "completions lane": (proxy, "/v1/completions", completion),
        "completions stream direct": (vllm, "/v1/completions", {**completion, "stream": True}),
        "completions stream lane": (proxy, "/v1/completions", {**completion, "stream": True}),
        "chat direct": (vllm, "/v1/chat/completions", chat),
        "chat litellm": (proxy, "/v1/chat/completions", chat),
        "chat stream direct": (vllm, "/v1/chat/completions", {**chat, "stream": True}),
        "chat stream litellm": (proxy, "/v1/chat/completions", {**chat, "stream": True}),
    }
    found: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (base, path, body) in cases.items():
            found[name].append(await tokens_after_leaving(vllm, base + path, body))
    return {name: statistics.median(values) for name, values in found.items()}


def file_texts(count: int) -> list[str]:
    """`count` different pieces of real Python, ~1,000 characters each (a file's start)."""
    sources = sorted(Path(os.__file__).parent.glob("*.py"))[:count]
    return [path.read_text(encoding="utf-8", errors="ignore")[:1000] for path in sources]


async def keystrokes(base: str, model: str, files: list[str], strokes: int) -> None:
    """Each file's keystrokes, files interleaved as several users typing: successive FIM prompts per file."""
    async with httpx.AsyncClient(timeout=120) as client:
        for stroke in range(strokes):
            for index, text in enumerate(files):
                prefix = text + f"\nvalue_{index} = compute({stroke}"
                body = {"model": model, "prompt": f"<|fim_prefix|>{prefix}<|fim_suffix|>\n<|fim_middle|>"}
                response = await client.post(base + "/v1/completions", json={**body, "max_tokens": 4, "temperature": 0})
                response.raise_for_status()


def hit_rate(upstreams: list[str], run: Any) -> float:
    """vLLM's prefix-cache hit rate (over all `upstreams`) for the requests `run` sends."""
    names = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total")
    before = [[metric(u, n) for n in names] for u in upstreams]
    asyncio.run(run)
    after = [[metric(u, n) for n in names] for u in upstreams]
    hits = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    queries = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    return round(hits / queries, 4) if queries else 0.0


def measure_prefix_cache(tmp: Path, first: str, model: str, files: int = 16, strokes: int = 6) -> dict[str, float]:
    """Hit rates: one upstream direct; two upstreams through the lane, affinity on and off (fresh files each)."""
    second = start_vllm(tmp / "vllm-2")
    texts = file_texts(files * 3)
    results: dict[str, float] = {}
    servers: list[Server] = []
    try:
        results["one upstream, direct"] = hit_rate([first], keystrokes(first, model, texts[:files], strokes))
        for offset, affinity in ((1, "true"), (2, "false")):
            env = {"KODIFY_CACHE_AFFINITY": affinity, "KODIFY_DISCOVERY_INTERVAL": "10"}
            proxy = kodify_proxy(tmp, upstreams_yaml(first, second), env=env, name=f"prefix-{affinity}").start()
            servers.append(proxy)
            chunk = texts[offset * files : (offset + 1) * files]
            label = f"two upstreams, lane, affinity {'on' if affinity == 'true' else 'off'}"
            results[label] = hit_rate([first, second], keystrokes(proxy.url, model, chunk, strokes))
    finally:
        for server in servers:
            server.stop()
        stop_vllm(tmp / "vllm-2")
    return results


def stop_vllm(workdir: Path) -> None:
    import subprocess

    subprocess.run(["bash", str(REPO / "scripts/vllm-stop.sh"), "--workdir", str(workdir)], check=False)


def start_targets(tmp: Path, upstream: str, model: str, max_tokens: int) -> tuple[list[Server], dict[str, Target]]:
    """kodify-proxy in both lanes (greedy qwen.json capped at `max_tokens`) and bare LiteLLM."""
    data = load_shipped("qwen").model_dump()
    data["temperature"], data["max_tokens"]["default"], data["max_tokens"]["maximum"] = 0.0, max_tokens, max_tokens
    (tmp / "qwen-greedy.json").write_text(json.dumps(data))
    env = {"COMPLETIONS_PREPROCESSING_CONFIG": str(tmp / "qwen-greedy.json"), "KODIFY_DISCOVERY_INTERVAL": "10"}
    lane = kodify_proxy(tmp, upstreams_yaml(upstream), env=env, name="lane").start()
    litellm_env = {**env, "KODIFY_COMPLETIONS_LANE": "litellm"}
    through = kodify_proxy(tmp, upstreams_yaml(upstream), env=litellm_env, name="litellm-path").start()
    bare = start_bare_litellm(tmp, upstream, model)
    targets = {
        "direct": Target("direct", upstream, {}),
        "lane": Target("lane", lane.url, {}),
        "litellm-path": Target("litellm-path", through.url, {}),
        "bare-litellm": Target("bare-litellm", bare.url, {"Authorization": f"Bearer {MASTER_KEY}"}),
    }
    return [lane, through, bare], targets


def scenarios(targets: dict[str, Target], model: str, max_tokens: int) -> dict[str, list[tuple[Target, dict[str, Any]]]]:
    """The OpenAI body on every target; the Tabby body on ours, beside direct with the same prompt."""
    openai, tabby = openai_body(model, max_tokens), tabby_body()
    return {
        "openai": [(targets[name], openai) for name in ("direct", "lane", "litellm-path", "bare-litellm")],
        "tabby": [(targets["direct"], openai), (targets["lane"], tabby), (targets["litellm-path"], tabby)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm", help="a running vLLM server's base URL (default: start one)")
    parser.add_argument("--fake", action="store_true", help="the fake upstream instead of vLLM (our own cost)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--requests", type=int, default=200, help="requests per target, scenario and concurrency")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--cancel", action="store_true")
    parser.add_argument("--prefix-cache", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kodify-bench-lane-"))
    servers: list[Server] = []
    started_vllm = False
    report: dict[str, Any] = {}
    try:
        model = "fake-model" if args.fake else args.model
        upstream = args.vllm
        if args.fake:
            servers.append(fake_upstream(tmp, (model,)).start())
            upstream = servers[-1].url
        elif upstream is None:
            upstream, started_vllm = start_vllm(tmp / "vllm"), True
        started, targets = start_targets(tmp, upstream, model, args.max_tokens)
        servers += started
        report["latency"] = asyncio.run(measure(scenarios(targets, model, args.max_tokens), args.requests, args.rounds))
        print(render_table(report["latency"]))
        if args.cancel and not args.fake:
            report["tokens_after_disconnect"] = asyncio.run(measure_cancel(upstream, targets["lane"].base, model))
            print(json.dumps(report["tokens_after_disconnect"], indent=1))
        if args.prefix_cache and not args.fake:
            report["prefix_cache_hit_rate"] = measure_prefix_cache(tmp, upstream, model)
            print(json.dumps(report["prefix_cache_hit_rate"], indent=1))
    finally:
        for server in reversed(servers):
            server.stop()
        if started_vllm:
            stop_vllm(tmp / "vllm")
    report["meta"] = {
        "upstream": "fake" if args.fake else "vllm",
        "max_tokens": args.max_tokens,
        "requests": args.requests,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "loadavg_after": os.getloadavg(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(report["meta"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
