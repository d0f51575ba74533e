"""Benchmark of the request journal: writer throughput (rows/s) and request latency with LOGS on vs off.

Usage (from the repo root, PostgreSQL reachable at $TEST_DATABASE_URL or 127.0.0.1:5432):

    .venv/bin/python bench/bench_journal.py [--rows 20000] [--requests 300]

Part 1 feeds ready-made rows (about 1.2 KB of bodies each) into the writer as fast as `submit` takes them and
times until the database holds all of them: PostgreSQL and SQLite, default batch settings. Part 2 starts one fake
upstream and two kodify-proxy processes, LOGS off and LOGS on (PostgreSQL, bodies on), and sends the same
requests to both alternately, one at a time, so both see the same machine load. Method and results:
docs/journal.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kodify_proxy.database import parse_url  # noqa: E402
from kodify_proxy.journal.database import journal_engine  # noqa: E402
from kodify_proxy.journal.migrate import upgrade  # noqa: E402
from kodify_proxy.journal.record import JournalRow  # noqa: E402
from kodify_proxy.journal.spool import Spool  # noqa: E402
from kodify_proxy.journal.writer import JournalStore, JournalWriter, WriterConfig  # noqa: E402
from tests.journal_support import fresh_database, journal_rows  # noqa: E402
from tests.servers import fake_upstream, kodify_proxy, upstreams_yaml  # noqa: E402

DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUEST_BODY = '{"model":"fake-model","messages":[{"role":"user","content":"' + "x" * 600 + '"}]}'
RESPONSE_BODY = '{"id":"chatcmpl-1","choices":[{"message":{"content":"' + "y" * 600 + '"}}]}'


def make_rows(count: int) -> list[JournalRow]:
    now = datetime.now(UTC)
    return [
        JournalRow(
            request_id=f"bench-{i:08d}",
            started_at=now,
            user_id="bench",
            method="POST",
            route="/v1/chat/completions",
            model="fake-model",
            upstream="http://127.0.0.1:8000",
            status=200,
            latency_ms=12.0,
            prompt_tokens=600,
            completion_tokens=300,
            request_bytes=len(REQUEST_BODY),
            request_body=REQUEST_BODY,
            response_bytes=len(RESPONSE_BODY),
            response_body=RESPONSE_BODY,
        )
        for i in range(count)
    ]


def writer_throughput(url: str, rows: list[JournalRow], spool_dir: Path) -> tuple[float, float]:
    """(rows/s until all are stored, microseconds per submit)."""
    upgrade(parse_url(url))
    writer = JournalWriter(JournalStore(journal_engine(parse_url(url))), Spool(spool_dir), WriterConfig())
    writer.start()
    started = time.perf_counter()
    for row in rows:
        writer.submit(row)
    submitted = time.perf_counter() - started
    while writer.stored < len(rows):
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    writer.close()
    writer.store.engine.dispose()
    return len(rows) / elapsed, submitted / len(rows) * 1e6


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100)
    return f"{statistics.median(ordered):6.1f} {q[94]:6.1f} {q[98]:6.1f} {statistics.fmean(ordered):6.1f}"


def timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    response = call()
    took = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    return took


def latency_side_by_side(requests: int, workdir: Path, url: str) -> dict[str, dict[str, list[float]]]:
    """Per proxy (off/on) and kind (chat/stream): request latencies in ms, requests sent alternately."""
    upstream = fake_upstream(workdir, ("fake-model",)).start()
    config = upstreams_yaml(upstream.url)
    off = kodify_proxy(workdir, config, env={"LOGS": "false"}, name="logs-off")
    on = kodify_proxy(workdir, config, env={"LOGS": "True", "KODIFY_JOURNAL_URL": url}, name="logs-on")
    results: dict[str, dict[str, list[float]]] = {"off": {"chat": [], "stream": []}, "on": {"chat": [], "stream": []}}
    try:
        off.start()
        on.start()
        chat = {"model": "fake-model", "messages": [{"role": "user", "content": "x" * 600}]}
        with httpx.Client(timeout=30) as client:
            for server in (off, on):  # warm-up, not measured
                for _ in range(20):
                    client.post(f"{server.url}/v1/chat/completions", json=chat)
            for i in range(requests):
                order = (("off", off), ("on", on)) if i % 2 == 0 else (("on", on), ("off", off))
                for name, server in order:
                    endpoint = f"{server.url}/v1/chat/completions"
                    results[name]["chat"].append(timed(functools.partial(client.post, endpoint, json=chat)))
                    streamed = {**chat, "stream": True}
                    results[name]["stream"].append(timed(functools.partial(client.post, endpoint, json=streamed)))
        deadline = time.monotonic() + 30
        expected = 2 * requests + 20
        while len(journal_rows(url)) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        stored = len(journal_rows(url))
        print(f"journal check: {stored} rows stored for {expected} requests sent to the LOGS=True proxy")
    finally:
        on.stop()
        off.stop()
        upstream.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    rows = make_rows(args.rows)
    print(f"## Writer throughput ({args.rows} rows, {len(REQUEST_BODY) + len(RESPONSE_BODY)} bytes of bodies each)")
    print("| database | rows/s (submit to stored) | submit, us/row |")
    print("|---|---|---|")
    with fresh_database(DATABASE_URL, prefix="kodify_journal_bench") as url:
        rate, submit = writer_throughput(url, rows, workdir / "spool-pg")
        print(f"| PostgreSQL | {rate:,.0f} | {submit:.1f} |")
    rate, submit = writer_throughput(f"sqlite:///{workdir / 'journal.db'}", rows, workdir / "spool-sqlite")
    print(f"| SQLite | {rate:,.0f} | {submit:.1f} |")

    with fresh_database(DATABASE_URL, prefix="kodify_journal_bench") as url:
        upgrade(parse_url(url))
        results = latency_side_by_side(args.requests, workdir, url)
    print(f"\n## Request latency, ms ({args.requests} requests per kind and proxy, alternating, sequential)")
    print("| request | LOGS | p50 | p95 | p99 | mean |")
    print("|---|---|---|---|---|---|")
    for kind in ("chat", "stream"):
        for name in ("off", "on"):
            p50, p95, p99, mean = percentiles(results[name][kind]).split()
            print(f"| {kind} | {name} | {p50} | {p95} | {p99} | {mean} |")


if __name__ == "__main__":
    main()
