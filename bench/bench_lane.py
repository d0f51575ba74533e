"""The autocompletion lane against vLLM direct, the LiteLLM path and bare LiteLLM, side by side in one run.

Usage: .venv/bin/python -m bench.bench_lane [--fake | --vllm URL] [--seconds 5] [--rounds 4] [--max-tokens 16]
                                            [--cancel] [--prefix-cache] [--out FILE.json]

Targets, measured in interleaved rounds by `wrk` (Debian's package; keep-alive connections; a C load generator, so
its own cost stays out of the figures), driven from this one process:
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
With real vLLM, its compute threads run at niceness --nice-model (10) during the latency and --cancel runs, for every
target alike (model_compute_niced): on these two vCPUs vLLM's busy worker threads otherwise keep the proxy, and
the client's own timer, waiting for a core (the proxy uses ~2 % CPU then, and still waits).
--prefix-cache (real vLLM): a second vLLM server; one file's keystrokes are successive FIM prompts sharing the
  file's start. vLLM's prefix-cache hit rate (`vllm:prefix_cache_hits_total / _queries_total`) for one upstream
  called directly, and through the lane over two upstreams with cache affinity on and off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.bench_proxy import MASTER_KEY, start_bare_litellm
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


Scenarios = dict[str, list[tuple[Target, dict[str, Any]]]]


def openai_body(model: str, max_tokens: int) -> dict[str, Any]:
    """The FIM completion the lane sends for PREFIX/SUFFIX, greedy."""
    built = fim.build_prompt(fim.FimInput(PREFIX, SUFFIX, "python"), load_shipped("qwen"))
    return {
        "model": model,
        "prompt": built.prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stop": list(built.stop),
    }


def tabby_body() -> dict[str, Any]:
    """The same completion as a Tabby client asks for it."""
    return {"language": "python", "segments": {"prefix": PREFIX, "suffix": SUFFIX}, "temperature": 0}


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
local file = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.body = file:read("*a")
file:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\\n', summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(
    target: Target,
    body: dict[str, Any],
    seconds: float,
    concurrency: int,
    tmp: Path,
    path: str = "/v1/completions",
) -> dict[str, float]:
    """One run of wrk (C, so the load generator's own cost stays out of the numbers); `cpu_s` is what wrk spent."""
    script, body_file = tmp / "bench.lua", tmp / f"body-{abs(hash(json.dumps(body)))}.json"
    script.write_text(WRK_SCRIPT)
    body_file.write_text(json.dumps(body))
    env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_AUTH": target.headers.get("Authorization", "")}
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "60s", "-s", str(script)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([*command, target.base + path], capture_output=True, text=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"requests"')]
    if not lines:
        raise RuntimeError(f"{target.name}: wrk said\n{done.stdout}{done.stderr}")
    result: dict[str, float] = json.loads(lines[-1])
    if result["status_errors"] or result["socket_errors"] or not result["requests"]:
        raise RuntimeError(f"{target.name}: {result}\n{done.stdout}{done.stderr}")
    result["cpu_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return result


def measure(scenarios: Scenarios, seconds: float, rounds: int, tmp: Path) -> dict[str, dict[str, float]]:
    """Every scenario at c=1 and c=16, targets interleaved round by round (so load drift hits all alike)."""
    results: dict[str, dict[str, float]] = {}
    for scenario, pairs in scenarios.items():
        for concurrency in (1, 16):
            for target, body in pairs:
                wrk(target, body, 2, concurrency, tmp)  # warm-up
            runs: dict[str, list[dict[str, float]]] = {t.name: [] for t, _ in pairs}
            for _ in range(rounds):
                for target, body in pairs:
                    runs[target.name].append(wrk(target, body, seconds, concurrency, tmp))
            for name, found in runs.items():
                requests = sum(r["requests"] for r in found)
                results[f"{scenario} c={concurrency} {name}"] = {
                    "p50_ms": round(statistics.median(r["p50_us"] for r in found) / 1000, 2),
                    "p99_ms": round(statistics.median(r["p99_us"] for r in found) / 1000, 2),
                    "rps": round(requests / (sum(r["duration_us"] for r in found) / 1e6), 1),
                    "n": requests,
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
        lines.append(
            f"| {scenario} | {conc[2:]} | {name} | {row['p50_ms']} | {row['p99_ms']} | {row['rps']} | {shown} |"
        )
    return "\n".join(lines)


def metric(base: str, name: str) -> float:
    """A counter from vLLM's /metrics (summed over its label sets)."""
    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)", text, re.MULTILINE))


async def wait_idle(vllm: str) -> None:
    """Until vLLM runs no request (the previous case's tokens must not count in the next)."""
    while metric(vllm, "vllm:num_requests_running") > 0:
        await asyncio.sleep(0.2)


async def tokens_for_abandoned(vllm: str, url: str, body: dict[str, Any]) -> tuple[float, float]:
    """(tokens vLLM generated for a request whose client hung up after 0.15 s, seconds until it really hung up).

    The second figure is there because on two shared cores a busy proxy delays even its clients' own timers.
    """
    await wait_idle(vllm)
    before = metric(vllm, "vllm:generation_tokens_total")
    started = time.monotonic()
    await abandon(url, body, after=0.15)
    left = time.monotonic() - started
    await asyncio.sleep(4.0)  # 480 tokens take ~3 s here: by now vLLM finished or aborted
    return metric(vllm, "vllm:generation_tokens_total") - before, left


@contextlib.contextmanager
def model_compute_niced(niceness: int) -> Iterator[int]:
    """vLLM's compute processes (its `VLLM::EngineCore` and `VLLM::Worker` threads) at `niceness` for a measurement,
    and back afterwards; how many threads were changed. On a GPU server the model's compute does not take the
    proxy's CPU; on these two vCPUs it does, and the client's own timer starves with it: a client that meant to
    leave after 0.15 s left after up to 0.8 s. vLLM's HTTP front end keeps its priority; every path gets the same."""
    threads: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().startswith("VLLM::"):
                threads |= {
                    int(t.name): os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in (proc / "task").iterdir()
                }
        except OSError:  # a process that just ended
            continue
    for thread in threads if niceness else ():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, thread, niceness)
    try:
        yield len(threads) if niceness else 0
    finally:
        for thread, before in threads.items() if niceness else ():
            with contextlib.suppress(OSError):  # not root: a lower priority cannot be raised back; the thread ended
                os.setpriority(os.PRIO_PROCESS, thread, before)


async def measure_cancel(vllm: str, proxy: str, model: str, repeats: int = 5) -> dict[str, dict[str, Any]]:
    """Median tokens generated for a request abandoned after 0.15 s, per path, and when the client left."""
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
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (base, path, body) in cases.items():
            found[name].append(await tokens_for_abandoned(vllm, base + path, body))
    return {
        name: {
            "tokens": statistics.median(t for t, _ in runs),
            "left_after_s": round(statistics.median(left for _, left in runs), 3),
            "tokens_each": [t for t, _ in runs],
        }
        for name, runs in found.items()
    }


def file_texts(count: int) -> list[str]:
    """`count` different pieces of real Python, 700 characters each (a file's start: ~300 tokens of the tiny model)."""
    sources = sorted(Path(os.__file__).parent.glob("*.py"))[:count]
    return [path.read_text(encoding="utf-8", errors="ignore")[:700] for path in sources]


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


def scenarios(
    targets: dict[str, Target], model: str, max_tokens: int
) -> dict[str, list[tuple[Target, dict[str, Any]]]]:
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
    parser.add_argument("--seconds", type=float, default=5, help="seconds per target, scenario, concurrency and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--cancel", action="store_true")
    parser.add_argument(
        "--nice-model", type=int, default=10, help="real vLLM: its compute threads at this niceness (0: unchanged)"
    )
    parser.add_argument("--prefix-cache", action="store_true")
    parser.add_argument("--skip-latency", action="store_true", help="only the --cancel / --prefix-cache parts")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.skip_latency and shutil.which("wrk") is None:
        parser.error("the latency runs need wrk (Debian's package: apt-get install wrk); or pass --skip-latency")
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
        with model_compute_niced(0 if args.fake else args.nice_model) as niced:
            report["model_threads_niced"] = {"threads": niced, "niceness": args.nice_model if niced else 0}
            if not args.skip_latency:
                found = measure(scenarios(targets, model, args.max_tokens), args.seconds, args.rounds, tmp)
                report["latency"] = found
                print(render_table(found), flush=True)
            if args.cancel and not args.fake:
                report["tokens_after_disconnect"] = asyncio.run(measure_cancel(upstream, targets["lane"].base, model))
                print(json.dumps(report["tokens_after_disconnect"], indent=1), flush=True)
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
        "seconds_per_round": args.seconds,
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
