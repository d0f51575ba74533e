"""Next edit: Continue's Instinct request and Zed's zeta1 request, vLLM direct and through kodify-proxy, in one run.

Usage: .venv/bin/python -m bench.bench_next_edit [--vllm URL] [--rounds 3] [--per-round 20] [--long 8] [--out FILE]

A real vLLM serves the tiny model as deploy/compose.next-edit.yaml serves Instinct (prefix caching, n-gram
speculation; tests/test_deploy_next_edit.py's flags) under the names `instinct-tiny` and `zeta`, 2048 tokens of context,
unless --vllm names one serving both. kodify-proxy runs in front of it with one shared token and the default ENV's FIM
config (qwen.json). vLLM's compute threads run at niceness 10 for every target alike (bench_lane's
model_compute_niced: on a GPU box the model's compute does not take the proxy's CPU).

The requests are the clients' own (tests/next_edit_clients.py) for the sample module being typed into (line 50):
  continue   the non-streamed chat of Continue's openai provider: a 40-line editable region in a 51-line window
             (~915 prompt tokens of the tiny model)
  zed        the non-streamed completion of Zed's OpenAI-compatible provider: zeta1's 40-line excerpt, its 20 middle
             lines editable, 4 stop strings (~750 prompt tokens)
Successive requests are successive keystrokes (one more character typed each time), as in an editor.
  latency    sequential requests answering 16 tokens (the prompt dominates) and, for Continue, 400 tokens (about the
             editable region rewritten), greedy and with `ignore_eos` (the only changes to the clients' bytes) so that
             direct and through us generate the same tokens: p50/p99 per target, in interleaved rounds (direct first
             in odd rounds, through us first in even ones)
  cancel     the clients' own bytes for a 1024-token answer, left after 0.15 s (the user typed again): the tokens vLLM
             generated for each, median of 5, and how many vLLM finished all the same, direct and through us
  prefix     vLLM's prefix-cache hit rate over 10 successive keystrokes of a file of their own, direct and through us
The load average of the machine (shared with other work) is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.bench_lane import metric, model_compute_niced, stop_vllm
from tests.clients import abandon_sync
from tests.next_edit_clients import (
    SAMPLE_DIFF,
    continue_chat_body,
    instinct_user_prompt,
    sample_excerpt,
    sample_zeta_input,
    zed_completions_body,
    zeta1_prompt,
)
from tests.servers import REPO, Server, free_port, kodify_proxy, upstreams_yaml
from tests.test_deploy_next_edit import NEXT_EDIT_VLLM_FLAGS

INSTINCT, ZETA = "instinct-tiny", "zeta"
TOKEN = "sk-kodify-bench-next-edit"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
PATHS = {"continue": "/v1/chat/completions", "zed": "/v1/completions"}
Body = Callable[[int, int], dict[str, Any]]  # (keystroke, max tokens) -> the request


def continue_body(stroke: int, max_tokens: int, path: str = "file:///work/boxes.py") -> dict[str, Any]:
    """Continue's Instinct chat after `stroke` more characters typed, greedy and exactly `max_tokens` long."""
    _, excerpt = sample_excerpt(region_lines=40, typed=stroke % 12)
    body = json.loads(continue_chat_body(INSTINCT, instinct_user_prompt(excerpt, path, [SAMPLE_DIFF]), max_tokens))
    return {**body, "temperature": 0, "ignore_eos": True}


def zed_body(stroke: int, max_tokens: int, path: str = "boxes.py") -> dict[str, Any]:
    """Zed's zeta1 completion after `stroke` more characters typed, greedy and exactly `max_tokens` long."""
    body = json.loads(zed_completions_body(ZETA, zeta1_prompt(*sample_zeta_input(stroke % 12, path)), 1))
    return {**body, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}


BODIES: dict[str, Body] = {"continue": continue_body, "zed": zed_body}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def timed(client: httpx.Client, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    response = client.post(url, json=body, headers=HEADERS)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
    return elapsed


def latency(bases: dict[str, str], client_name: str, tokens: int, rounds: int, per_round: int) -> dict[str, Any]:
    """p50/p99 of sequential keystroke requests per target, in interleaved rounds."""
    make, path = BODIES[client_name], PATHS[client_name]
    samples: dict[str, list[float]] = {name: [] for name in bases}
    with httpx.Client(timeout=300) as client:
        for base in bases.values():
            timed(client, base + path, make(0, tokens))  # warm-up, and the file's prefix into vLLM's cache
        for round_ in range(rounds):
            order = list(bases.items()) if round_ % 2 == 0 else list(reversed(bases.items()))  # neither always first
            for name, base in order:
                samples[name] += [timed(client, base + path, make(i, tokens)) for i in range(1, per_round + 1)]
    return {
        name: {
            "p50_ms": round(1000 * statistics.median(values), 1),
            "p99_ms": round(1000 * percentile(values, 99), 1),
            "n": len(values),
        }
        for name, values in samples.items()
    }


def wait_idle(vllm: str) -> None:
    while metric(vllm, "vllm:num_requests_running") + metric(vllm, "vllm:num_requests_waiting"):
        time.sleep(0.1)


def superseded(stroke: int) -> dict[str, bytes]:
    """Each client's own bytes for a 1024-token answer (Continue's budget for Instinct's 32k context; Zed's
    max_output_tokens 256): sampled as the clients ask, so generation runs at the model's ordinary pace."""
    _, excerpt = sample_excerpt(region_lines=40, typed=stroke % 12)
    prompt = instinct_user_prompt(excerpt, "file:///work/boxes.py", [SAMPLE_DIFF])
    return {
        "continue": continue_chat_body(INSTINCT, prompt, 1024),
        "zed": zed_completions_body(ZETA, zeta1_prompt(*sample_zeta_input(stroke % 12)), 256),
    }


def finished(vllm: str) -> dict[str, float]:
    """vLLM's requests finished so far by their finish reason (`vllm:request_success_total`, which counts no aborted
    request)."""
    text = httpx.get(vllm + "/metrics", timeout=10).text
    found = re.findall(r'^vllm:request_success_total\{[^}]*finished_reason="(\w+)"[^}]*\} (\S+)', text, re.M)
    return {reason: float(value) for reason, value in found}


def cancel(vllm: str, bases: dict[str, str], repeats: int = 5) -> dict[str, Any]:
    """Tokens vLLM generated for a 1024-token request whose client left after 0.15 s (median, and each), and those
    of them vLLM finished all the same, by reason: `stop` (the random model's end of sequence came first), `length`
    (it ran to max_tokens: the abort did not reach it)."""
    found: dict[str, list[float]] = {}
    ended: dict[str, dict[str, float]] = {}
    for stroke in range(repeats):
        for client_name, body in superseded(stroke).items():
            for name, base in bases.items():
                key = f"{client_name} {name}"
                wait_idle(vllm)
                tokens, before = metric(vllm, "vllm:generation_tokens_total"), finished(vllm)
                abandon_sync(base + PATHS[client_name], body, after=0.15, headers=HEADERS)
                wait_idle(vllm)
                found.setdefault(key, []).append(metric(vllm, "vllm:generation_tokens_total") - tokens)
                bucket = ended.setdefault(key, {})
                for reason, count in finished(vllm).items():
                    if count > before.get(reason, 0):
                        bucket[reason] = bucket.get(reason, 0) + count - before.get(reason, 0)
    return {
        key: {"median": statistics.median(values), "each": values, "finished": ended[key]}
        for key, values in found.items()
    }


def prefix_cache(vllm: str, bases: dict[str, str], strokes: int = 10) -> dict[str, float]:
    """vLLM's prefix-cache hit rate over successive keystrokes of a file of each target's own."""
    rates: dict[str, float] = {}
    names = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total")
    with httpx.Client(timeout=120) as client:
        for client_name in BODIES:
            for name, base in bases.items():
                before = [metric(vllm, n) for n in names]
                for stroke in range(strokes):
                    if client_name == "continue":
                        body = continue_body(stroke, 1, path=f"file:///work/{name}/boxes.py")
                    else:
                        body = zed_body(stroke, 1, path=f"{name}/boxes.py")
                    timed(client, base + PATHS[client_name], body)
                hits, queries = (metric(vllm, n) - b for n, b in zip(names, before, strict=True))
                rates[f"{client_name} {name}"] = round(hits / queries, 3) if queries else 0.0
    return rates


def start_vllm(workdir: Path) -> str:
    """The tiny model served as compose.next-edit.yaml serves Instinct, as `instinct-tiny` and `zeta`."""
    args = ["--served-model-name", INSTINCT, ZETA, "--max-model-len", "2048", *NEXT_EDIT_VLLM_FLAGS]
    command = ["bash", str(REPO / "scripts/vllm-serve.sh"), "--port", str(free_port()), "--workdir", str(workdir)]
    result = subprocess.run([*command, "--", *args], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"vLLM did not start:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def render_table(results: dict[str, Any]) -> str:
    """Markdown: p50/p99 per scenario and target, and the p50 added through us."""
    lines = ["| request | answer | target | p50 ms | p99 ms | added p50 ms |", "|---|---|---|---|---|---|"]
    for key, rows in results["latency"].items():
        client_name, tokens = key.split(" ")
        for name, row in rows.items():
            added = "" if name == "direct" else f"{row['p50_ms'] - rows['direct']['p50_ms']:+.1f}"
            lines.append(f"| {client_name} | {tokens} | {name} | {row['p50_ms']} | {row['p99_ms']} | {added} |")
    return "\n".join(lines)


def run_all(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    vllm = args.vllm or start_vllm(tmp / "vllm")
    env = {"VLLM_API_KEY": TOKEN, "COMPLETIONS_PREPROCESSING_CONFIG": str(REPO / "preprocess_configs/qwen.json")}
    proxy: Server = kodify_proxy(tmp, upstreams_yaml(vllm), env=env, name="next-edit").start()
    bases = {"direct": vllm, "through us": proxy.url}
    results: dict[str, Any] = {"load average at start": os.getloadavg(), "latency": {}}
    scenarios = [("continue", 16, args.per_round), ("zed", 16, args.per_round), ("continue", 400, args.long)]
    try:
        with model_compute_niced(10):
            for client_name, tokens, per_round in scenarios:
                found = latency(bases, client_name, tokens, args.rounds, per_round)
                results["latency"][f"{client_name} {tokens}"] = found
                print(client_name, tokens, json.dumps(found), flush=True)
            results["tokens after leaving at 0.15 s, of 1024"] = cancel(vllm, bases)
            results["prefix cache hit rate, 10 keystrokes"] = prefix_cache(vllm, bases)
        drafts = metric(vllm, "vllm:spec_decode_num_draft_tokens_total")
        results["n-gram drafts accepted"] = round(
            metric(vllm, "vllm:spec_decode_num_accepted_tokens_total") / drafts, 3
        )
        results["load average at end"] = os.getloadavg()
    finally:
        proxy.stop()
        if args.vllm is None:
            stop_vllm(tmp / "vllm")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm", help="a running vLLM serving `instinct-tiny` and `zeta` (default: start one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=20, help="16-token requests per target and round")
    parser.add_argument("--long", type=int, default=8, help="400-token requests per target and round")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-next-edit-") as folder:
        results = run_all(Path(folder), args)
    print(json.dumps(results, indent=1))
    print(render_table(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
