"""POST /v1/dev-data: the server CPU one Continue event costs (target <= 0.3 ms), beside Tabby's /v1/events.

Usage: .venv/bin/python -m bench.bench_dev_data [--seconds 5] [--rounds 3] [--concurrency 8] [--out FILE.json]

Two kodify-proxy processes side by side, one worker each, per-user tokens (PostgreSQL: TEST_DATABASE_URL's server, a
fresh database), in front of the fake upstream (no event asks it anything): `journal`, as administrators run it for
acceptance (LOGS on, the journal in that database, bodies off), and `no-journal` (LOGS off: the route's own cost).
`wrk` (C) posts one event body over and over with a user's token, servers and scenarios interleaved round by round:
  autocomplete-noCode    Continue's `autocomplete` event at `level: noCode` (what client-config writes)
  autocomplete-all       the same at `level: all`: prefix, suffix, prompt and completion in it (~3 KB)
  next-edit-noCode       a `nextEditOutcome` event at `level: noCode`
  tabby-view             Tabby's `view` event on /v1/events, for comparison
The bodies are built as core/data/log.ts builds them (tests/continue_dev_data.mjs, node and @continuedev/config-yaml).
For each: events/s, p50/p99, and the CPU the server process spent per event (utime + stime from /proc over the
measured runs: auth, the route, the record, the metrics and, with the journal, its writer's spool and inserts;
PostgreSQL's own CPU is not in it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.bench_lane import Target, wrk
from bench.bench_proxy import report
from bench.bench_workers import cpu_seconds, processes
from kodify_proxy.users import UserStore
from tests.journal_support import fresh_database
from tests.servers import Server, fake_upstream, kodify_proxy, upstreams_yaml
from tests.test_dev_data import DESTINATION, autocomplete, continue_bodies, next_edit

CODE = "def add(a, b):\n    return a + b\n\n" * 24  # ~800 characters of prefix, and of suffix


def scenarios() -> dict[str, tuple[str, dict[str, Any]]]:
    """Each scenario's path and body."""
    (no_code,) = continue_bodies([autocomplete("bench-1", True)])
    (with_code,) = continue_bodies(
        [{**autocomplete("bench-2", True), "prefix": CODE, "suffix": CODE}],
        {
            **DESTINATION,
            "level": "all",
        },
    )
    (edit,) = continue_bodies([next_edit("bench-3", "reject")])
    view = {"type": "view", "completion_id": "cmpl-bench", "choice_index": 0, "view_id": "view-1"}
    return {
        "autocomplete-noCode": ("/v1/dev-data", no_code),
        "autocomplete-all": ("/v1/dev-data", with_code),
        "next-edit-noCode": ("/v1/dev-data", edit),
        "tabby-view": ("/v1/events", view),
    }


def measure(
    servers: dict[str, Server], token: str, seconds: int, rounds: int, concurrency: int, tmp: Path
) -> dict[str, Any]:
    """Every scenario on every server `rounds` times, interleaved; events/s, latency and the server's CPU per event."""
    bodies = scenarios()
    cells = [(server, name) for server in servers for name in bodies]
    targets = {name: Target(name, server.url, {"Authorization": f"Bearer {token}"}) for name, server in servers.items()}
    for server, name in cells:
        wrk(targets[server], bodies[name][1], 2, concurrency, tmp, bodies[name][0])  # warm-up
    runs: dict[tuple[str, str], list[dict[str, float]]] = {cell: [] for cell in cells}
    cpu = dict.fromkeys(cells, 0.0)
    for _ in range(rounds):
        for server, name in cells:
            before = cpu_seconds(processes(servers[server]))
            runs[server, name].append(wrk(targets[server], bodies[name][1], seconds, concurrency, tmp, bodies[name][0]))
            cpu[server, name] += cpu_seconds(processes(servers[server])) - before
    results: dict[str, Any] = {}
    for (server, name), found in runs.items():
        events = sum(r["requests"] for r in found)
        elapsed = sum(r["duration_us"] for r in found) / 1e6
        results[f"{name} {server}"] = {
            "body_bytes": len(json.dumps(bodies[name][1]).encode()),
            "events_per_s": round(events / elapsed, 1),
            "p50_ms": round(statistics.median(r["p50_us"] for r in found) / 1000, 2),
            "p99_ms": round(statistics.median(r["p99_us"] for r in found) / 1000, 2),
            "cpu_ms_per_event": round(cpu[server, name] / events * 1000, 3),
            "server_cores": round(cpu[server, name] / elapsed, 2),
            "n": events,
        }
    return results


def journaled(url: str) -> int:
    """How many rows the journal holds (every event measured, and the warm-ups)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text("SELECT count(*) FROM kodify_journal")).scalar_one())
    finally:
        engine.dispose()


def proxies(tmp: Path, upstream: str, url: str) -> dict[str, Server]:
    """The two servers (not started): per-user tokens in the database at `url`, the journal there or none."""
    users = {"MTSAI_AUTH": "true", "AUTH_TYPE": "DB", "DB_URL": url}
    journal = {
        "LOGS": "True",
        "KODIFY_JOURNAL_URL": make_url(url).render_as_string(hide_password=False),
        "RUN_MIGRATIONS": "1",
        "KODIFY_JOURNAL_BODIES": "false",
    }
    return {
        "journal": kodify_proxy(tmp, upstreams_yaml(upstream), env={**users, **journal}, name="journal"),
        "no-journal": kodify_proxy(tmp, upstreams_yaml(upstream), env=users, name="no-journal"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    base = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    with tempfile.TemporaryDirectory() as name, fresh_database(base, prefix="kodify_bench_dev_data") as url:
        tmp = Path(name)
        store = UserStore.from_settings_values(url, "kodify_users", 5.0)
        store.ensure_table()
        token = store.add("bench", None).token
        store.close()
        upstream = fake_upstream(tmp).start()
        servers = proxies(tmp, upstream.url, url)
        try:
            for server in servers.values():
                server.start(timeout=180)
                assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {token}"}).is_success
            time.sleep(2)
            results = measure(servers, token, args.seconds, args.rounds, args.concurrency, tmp)
            time.sleep(3)  # the writer's last batch
            results["journaled_rows"] = journaled(url)
            results["load_average"] = os.getloadavg()
        finally:
            for server in servers.values():
                server.stop()
            upstream.stop()
    report(results, args.out)


if __name__ == "__main__":
    main()
