"""`serve --workers 1` against `--workers 2` on a fast fake upstream: the lane's and the chat lane's throughput.

Usage: .venv/bin/python -m bench.bench_workers [--seconds 5] [--rounds 3] [--concurrency 16] [--out FILE.json]

Both servers run side by side (dummy auth, no journal) in front of bench/fast_upstream.py (canned answers from a bare
asyncio protocol, ~180k req/s on one core here, so the proxy is what is measured). `wrk` (Debian's package, C) drives
keep-alive connections, servers interleaved round by round so load drift hits both alike:
  completions   POST /v1/completions, one whole answer (the autocompletion lane)
  chat-stream   POST /v1/chat/completions with "stream": true: 16 content chunks + role, finish, usage, [DONE]
For each: req/s, chunks/s (stream events per second), p50/p99, and the CPU the server's processes spent per request
(utime + stime of the arbiter and its workers from /proc, over the measured runs), which is what a bigger box scales
by; and each process's RSS.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.bench_lane import Target, wrk
from bench.bench_proxy import report
from tests.servers import Server, free_port, kodify_proxy, upstreams_yaml

SCENARIOS: dict[str, tuple[str, dict[str, Any], int]] = {  # path, body, stream events per answer
    "completions": ("/v1/completions", {"model": "fast-model", "prompt": "def add(a, b):\n", "max_tokens": 16}, 0),
    "chat-stream": (
        "/v1/chat/completions",
        {"model": "fast-model", "messages": [{"role": "user", "content": "Write a haiku."}], "stream": True},
        20,  # role + 16 content + finish + usage + [DONE]
    ),
}


def processes(server: Server) -> list[int]:
    """The server's process and its children (gunicorn's workers)."""
    assert server.process is not None
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids`."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def measure(
    servers: dict[int, Server], upstream: Server, seconds: int, rounds: int, concurrency: int, tmp: Path
) -> dict[str, Any]:
    """Each scenario on each server, interleaved; per server the cores its processes, wrk and the upstream used."""
    results: dict[str, Any] = {}
    for scenario, (path, body, events) in SCENARIOS.items():
        for server in servers.values():
            wrk(Target(f"workers-{len(servers)}", server.url, {}), body, 2, concurrency, tmp, path)  # warm-up
        runs: dict[int, list[dict[str, float]]] = {n: [] for n in servers}
        cpu: dict[int, float] = dict.fromkeys(servers, 0.0)
        others: dict[int, float] = dict.fromkeys(servers, 0.0)  # wrk and the upstream
        for _ in range(rounds):
            for workers, server in servers.items():
                pids, upstream_pids = processes(server), processes(upstream)
                before, upstream_before = cpu_seconds(pids), cpu_seconds(upstream_pids)
                run = wrk(Target(f"workers-{workers}", server.url, {}), body, seconds, concurrency, tmp, path)
                runs[workers].append(run)
                cpu[workers] += cpu_seconds(pids) - before
                others[workers] += cpu_seconds(upstream_pids) - upstream_before + run["cpu_s"]
        for workers, found in runs.items():
            requests = sum(r["requests"] for r in found)
            elapsed = sum(r["duration_us"] for r in found) / 1e6
            rps = requests / elapsed
            results[f"{scenario} workers={workers}"] = {
                "rps": round(rps, 1),
                "chunks_per_s": round(rps * events, 1) if events else None,
                "p50_ms": round(statistics.median(r["p50_us"] for r in found) / 1000, 2),
                "p99_ms": round(statistics.median(r["p99_us"] for r in found) / 1000, 2),
                "cpu_ms_per_request": round(cpu[workers] / requests * 1000, 3),
                "proxy_cores": round(cpu[workers] / elapsed, 2),
                "wrk_and_upstream_cores": round(others[workers] / elapsed, 2),
                "n": requests,
            }
        one, two = results[f"{scenario} workers=1"]["rps"], results[f"{scenario} workers=2"]["rps"]
        results[f"{scenario} ratio"] = round(two / one, 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        port = free_port()
        upstream = Server(
            "fast-upstream",
            [sys.executable, "-m", "bench.fast_upstream", "--port", str(port)],
            port,
            tmp / "fast-upstream.log",
            ready_path="/v1/models",
        ).start()
        servers = {
            n: kodify_proxy(tmp, upstreams_yaml(upstream.url), {"KODIFY_WORKERS": str(n)}, name=f"workers-{n}")
            for n in (1, 2)
        }
        try:
            for server in servers.values():
                server.start(timeout=180)
            assert httpx.get(servers[2].url + "/v1/models").status_code == 200
            time.sleep(2)
            results = measure(servers, upstream, args.seconds, args.rounds, args.concurrency, tmp)
            results["rss_mb"] = {n: [rss_mb(pid) for pid in processes(s)] for n, s in servers.items()}
            results["cpus"] = len(os.sched_getaffinity(0))
        finally:
            for server in servers.values():
                server.stop()
            upstream.stop()
    report(results, args.out)


if __name__ == "__main__":
    main()
