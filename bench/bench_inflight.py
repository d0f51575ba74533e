"""Cost per request of the journal's in-flight record (what lets a dead worker's requests be journaled), in process.

Usage: .venv/bin/python -m bench.bench_inflight [--requests 20000] [--rounds 7] [--out FILE.json]

Each round runs `--requests` requests through each target, targets interleaved round by round so drift in machine
load hits all alike; a request is the record's whole life: begin, identify (user, model), respond (status), end,
and its release once its row is spooled (in batches of 200, as the writer spools); then each step of the table
alone. Targets:

- `slot table`: `journal.inflight.InflightTable`, slots in a shared mapping of a file (what ships);
- `recorder, ledger` vs `recorder, no ledger`: the same through `RequestRecorder` (begin, identified, responding,
  end), with the table and without (LOGS off); the difference is what a request pays in the server;
- `append log`: the alternative measured against it, one write() per step to an append-only file (as durable
  across a process's death: the page cache), the release one write per batch;
- `append log + fdatasync`: the same, made to survive the machine too, one fdatasync per request.
Method and results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bench_proxy import report
from kodify_proxy.exchange import Exchange
from kodify_proxy.journal.inflight import InflightTable
from kodify_proxy.journal.record import JournalRow
from kodify_proxy.request_recorder import RequestRecorder

BATCH = 200  # rows per spool append: the writer's batch size
SCOPE = {"method": "POST", "path": "/v1/chat/completions"}


def exchanges(count: int) -> list[Exchange]:
    """Requests as the gateway has them when each step is recorded."""
    made = []
    for i in range(count):
        exchange = Exchange(
            request_id=f"{i:08d}-8d0f-4a57-a0a6-2d2b4b0e7f11",
            method="POST",
            route="/v1/chat/completions",
            path="/v1/chat/completions",
            started_at=datetime.now(UTC),
            t0=0.0,
            user_id="alice@example.com",
            key_alias="alice-laptop",
            model="qwen2.5-coder-7b-instruct",
            request_body=b"x" * 600,
            status=200,
            content_type="text/event-stream",
            ended_at=0.5,
            completed=True,
        )
        made.append(exchange)
    return made


def rows_of(batch: Sequence[Exchange]) -> list[JournalRow]:
    """The spooled rows a release is given (only their request ids are read)."""
    return [JournalRow.model_construct(request_id=e.request_id) for e in batch]


def run_table(table: InflightTable, requests: list[Exchange], batches: list[list[JournalRow]]) -> float:
    """Seconds for every request's begin, identify, respond, end and release."""
    started = time.perf_counter()
    for index, exchange in enumerate(requests):
        exchange.slot = table.begin(exchange)
        table.identify(exchange)
        table.respond(exchange)
        table.end(exchange, 500.0)
        if index % BATCH == BATCH - 1 or index == len(requests) - 1:
            table.release(batches[index // BATCH])
    return time.perf_counter() - started


def run_steps(table: InflightTable, requests: list[Exchange], batches: list[list[JournalRow]]) -> dict[str, float]:
    """Microseconds per request of each step alone (a clock read around each: slightly dearer than `run_table`)."""
    spent = dict.fromkeys(("begin", "identify", "respond", "end", "release"), 0.0)
    clock = time.perf_counter
    for index, exchange in enumerate(requests):
        t0 = clock()
        exchange.slot = table.begin(exchange)
        t1 = clock()
        table.identify(exchange)
        t2 = clock()
        table.respond(exchange)
        t3 = clock()
        table.end(exchange, 500.0)
        t4 = clock()
        spent["begin"], spent["identify"] = spent["begin"] + t1 - t0, spent["identify"] + t2 - t1
        spent["respond"], spent["end"] = spent["respond"] + t3 - t2, spent["end"] + t4 - t3
        if index % BATCH == BATCH - 1 or index == len(requests) - 1:
            t5 = clock()
            table.release(batches[index // BATCH])
            spent["release"] += clock() - t5
    return {step: round(seconds / len(requests) * 1e6, 2) for step, seconds in spent.items()}


def run_recorder(recorder: RequestRecorder, count: int) -> float:
    """Seconds for `count` requests' steps through the recorder (a new exchange each, as in the server), and with
    a ledger their release in batches (it reads only the request ids, which an exchange has as a row does)."""
    started = time.perf_counter()
    done: list[Any] = []
    for _ in range(count):
        exchange = recorder.begin("/v1/chat/completions", SCOPE)
        exchange.user_id, exchange.model, exchange.status = "alice@example.com", "qwen2.5-coder-7b-instruct", 200
        recorder.identified(exchange)
        recorder.responding(exchange)
        exchange.completed, exchange.ended_at = True, exchange.t0 + 0.5
        recorder.end(exchange)
        if isinstance(recorder.ledger, InflightTable):
            done.append(exchange)
            if len(done) == BATCH:
                recorder.ledger.release(done)
                done = []
    if isinstance(recorder.ledger, InflightTable):
        recorder.ledger.release(done)
    return time.perf_counter() - started


class AppendLog:
    """The alternative: each step one write() of a small line to an append-only file; fdatasync per request if
    asked (a real design would also need compaction, left out: it only adds cost)."""

    def __init__(self, path: Path, sync: bool) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
        self.sync = sync

    def run(self, requests: list[Exchange]) -> float:
        started = time.perf_counter()
        done: list[bytes] = []
        for exchange in requests:
            rid = exchange.request_id.encode()
            line = b"B %s %f %s %s\n" % (rid, exchange.started_at.timestamp(), b"POST", exchange.path.encode())
            os.write(self.fd, line)
            if self.sync:
                os.fdatasync(self.fd)
            user, model = (exchange.user_id or "").encode(), (exchange.model or "").encode()
            os.write(self.fd, b"I %s %s %s %d\n" % (rid, user, model, len(exchange.request_body)))
            os.write(self.fd, b"S %s %d\n" % (rid, exchange.status or 0))
            os.write(self.fd, b"E %s %d %f\n" % (rid, exchange.final_status(), 500.0))
            done.append(rid)
            if len(done) == BATCH:
                os.write(self.fd, b"F " + b" ".join(done) + b"\n")
                done = []
        return time.perf_counter() - started

    def close(self) -> None:
        os.close(self.fd)


def measure(count: int, rounds: int, folder: Path) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Microseconds per request of each target, one figure per round; and of each of the table's steps."""
    requests = exchanges(count)
    batches = [rows_of(requests[i : i + BATCH]) for i in range(0, count, BATCH)]
    table = InflightTable(folder / "bench.slots")
    ledgered = RequestRecorder([], ledger=InflightTable(folder / "recorder.slots"))
    bare = RequestRecorder([])
    logs = {"append log": AppendLog(folder / "a.log", False), "append log + fdatasync": AppendLog(folder / "b", True)}
    targets: dict[str, Callable[[], float]] = {
        "slot table": lambda: run_table(table, requests, batches),
        "recorder, ledger": lambda: run_recorder(ledgered, count),
        "recorder, no ledger": lambda: run_recorder(bare, count),
        "append log": lambda: logs["append log"].run(requests),
        "append log + fdatasync": lambda: logs["append log + fdatasync"].run(requests[: max(1, count // 20)]),
    }
    sizes = {name: count for name in targets} | {"append log + fdatasync": max(1, count // 20)}
    results: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, run in targets.items():
            results[name].append(run() / sizes[name] * 1e6)
    for log in logs.values():
        log.close()
    return results, run_steps(table, requests, batches)


def summary(results: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median and best round per target, and the ledger's cost in the recorder (the difference of medians)."""
    found = {name: {"median_us": statistics.median(v), "best_us": min(v)} for name, v in results.items()}
    ledger = found["recorder, ledger"]["median_us"] - found["recorder, no ledger"]["median_us"]
    found["ledger in the recorder"] = {"median_us": ledger, "best_us": ledger}
    return {name: {k: round(v, 2) for k, v in figures.items()} for name, figures in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load, when = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="bench-inflight-") as folder:
        results, steps = measure(args.requests, args.rounds, Path(folder))
    print("| target | median us/request | best round |\n|---|---|---|")
    for name, figures in summary(results).items():
        print(f"| {name} | {figures['median_us']} | {figures['best_us']} |")
    print("steps, us/request:", ", ".join(f"{step} {us}" for step, us in steps.items()))
    report({"summary": summary(results), "steps": steps, "rounds": results, "load": load, "time": when}, args.out)


if __name__ == "__main__":
    main()
