"""Per-request cost of auth: a token-cache hit vs a miss (a database lookup), side by side.

Usage: .venv/bin/python -m bench.bench_auth [--database-url URL] [--calls 5000] [--requests 300] [--skip-http]

1. In process: the gateway's auth, `kodify_proxy.auth.Authenticator.client`, for the dummy and one-token modes and
   for per-user tokens on a cache hit and on a miss (a verifier with TTL 0, so every call queries USERS_TABLE in a
   thread), against PostgreSQL and SQLite, plus LiteLLM's custom_auth handing the identity on (`user_api_key_auth`,
   which builds LiteLLM's UserAPIKeyAuth). Calls of all rows interleave.
2. Over HTTP: three kodify-proxy processes on one fake upstream, measured in interleaved rounds (GET /v1/models
   and a chat request, sequential, keep-alive): dummy auth (the baseline), per-user tokens with the default cache,
   and per-user tokens with KODIFY_AUTH_CACHE_TTL=0 (every request a database lookup).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from starlette.requests import Request

from kodify_proxy.auth import IDENTITY_SCOPE_KEY, Authenticator, Identity, TokenVerifier
from kodify_proxy.database import parse_url
from kodify_proxy.hooks import user_api_key_auth
from kodify_proxy.settings import load_settings
from kodify_proxy.users import UserStore
from tests.servers import Server, fake_upstream, kodify_proxy, upstreams_yaml

MASTER_KEY = "sk-bench-" + "1" * 24
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def summary(times_ms: list[float]) -> tuple[float, float]:
    """(median, p99) in milliseconds."""
    ordered = sorted(times_ms)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.99) - 1)]


def timed(env: dict[str, str], users: TokenVerifier | None, token: str | None) -> Callable[[], Awaitable[float]]:
    """One gateway auth call as a coroutine returning its wall time in ms."""
    authenticator = Authenticator(load_settings(env), MASTER_KEY, users)

    async def call() -> float:
        start = time.perf_counter()
        await authenticator.client(token)
        return (time.perf_counter() - start) * 1000

    return call


def timed_handoff() -> Callable[[], Awaitable[float]]:
    """LiteLLM's custom_auth on a request the gateway authenticated: the identity handed on as UserAPIKeyAuth."""
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    request = Request({**scope, IDENTITY_SCOPE_KEY: Identity("alice", "kodify-user-token", "0" * 64)})

    async def call() -> float:
        start = time.perf_counter()
        await user_api_key_auth(request, None)
        return (time.perf_counter() - start) * 1000

    return call


def db_env(url: str, table: str) -> dict[str, str]:
    return {"MTSAI_AUTH": "true", "AUTH_TYPE": "DB", "DB_URL": url, "USERS_TABLE": table}


def verifier(url: str, table: str, ttl: float) -> tuple[TokenVerifier, str]:
    """A verifier on a fresh users table with one user; returns it and that user's token."""
    store = UserStore.from_settings_values(url, table, 3.0)
    store.ensure_table()
    token = store.add(f"bench-{uuid.uuid4().hex[:8]}", None).token
    return TokenVerifier(store, ttl=ttl, negative_ttl=0, timeout=3.0), token


async def run_in_process(pg_url: str, sqlite_url: str, table: str, calls: int) -> dict[str, list[float]]:
    """Every row's per-call times, the rows' calls interleaved."""
    pg_hit, pg_token = verifier(pg_url, table, ttl=300)
    pg_miss, _ = verifier(pg_url, table, ttl=0)
    sqlite_miss, sqlite_token = verifier(sqlite_url, "kodify_users", ttl=0)
    rows = {
        "dummy (no token)": timed({}, None, None),
        "one token (VLLM_API_KEY)": timed({"VLLM_API_KEY": "team-secret"}, None, "team-secret"),
        "user token, cache hit": timed(db_env(pg_url, table), pg_hit, pg_token),
        "user token, miss: PostgreSQL query": timed(db_env(pg_url, table), pg_miss, pg_token),
        "user token, miss: SQLite query": timed(db_env(sqlite_url, "kodify_users"), sqlite_miss, sqlite_token),
        "LiteLLM custom_auth handing the identity on": timed_handoff(),
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(50):
        for call in rows.values():
            await call()
    for _ in range(calls):
        for name, call in rows.items():
            times[name].append(await call())
    for closing in (pg_hit, pg_miss, sqlite_miss):
        closing.close()
    return times


def start_proxies(tmp: Path, pg_url: str, table: str) -> tuple[Server, dict[str, Server], str]:
    """The fake upstream and three proxies (started together); returns a user token valid on the DB ones."""
    upstream = fake_upstream(tmp, ("fake-model",)).start()
    config = upstreams_yaml(upstream.url)
    store = UserStore.from_settings_values(pg_url, table, 3.0)
    store.ensure_table()
    token = store.add(f"bench-http-{uuid.uuid4().hex[:8]}", None).token
    store.close()
    proxies = {
        "dummy auth": kodify_proxy(tmp, config, {}, name="dummy"),
        "user token, cached (TTL 5 s)": kodify_proxy(tmp, config, db_env(pg_url, table), name="cached"),
        "user token, TTL 0 (DB each time)": kodify_proxy(
            tmp,
            config,
            {**db_env(pg_url, table), "KODIFY_AUTH_CACHE_TTL": "0", "KODIFY_AUTH_NEGATIVE_TTL": "0"},
            name="uncached",
        ),
    }
    for proxy in proxies.values():
        proxy.start(expect_ready=False)
    for proxy in proxies.values():
        proxy.wait_ready(240)
    return upstream, proxies, token


def run_http(proxies: dict[str, Server], token: str, requests: int) -> dict[str, list[float]]:
    """Per-request times per (proxy, route), sequential, proxies interleaved request by request."""
    kinds: dict[str, tuple[str, str, Any]] = {
        "GET /v1/models": ("GET", "/v1/models", None),
        "POST chat": ("POST", "/v1/chat/completions", CHAT),
    }
    times: dict[str, list[float]] = {}
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        for kind, (method, path, body) in kinds.items():
            for _ in range(20):
                for proxy in proxies.values():
                    client.request(method, proxy.url + path, json=body).raise_for_status()
            for _ in range(requests):
                for name, proxy in proxies.items():
                    start = time.perf_counter()
                    client.request(method, proxy.url + path, json=body).raise_for_status()
                    times.setdefault(f"{kind} | {name}", []).append((time.perf_counter() - start) * 1000)
    return times


def print_table(title: str, times: dict[str, list[float]], baseline: str | None) -> None:
    base = summary(times[baseline])[0] if baseline else 0.0
    print(f"\n{title}\n\n| what | median | p99 | added median |\n|---|---|---|---|")
    for name, values in times.items():
        median, p99 = summary(values)
        added = f"{median - base:+.3f} ms" if baseline and name != baseline else ""
        print(f"| {name} | {median:.3f} ms | {p99:.3f} ms | {added} |")


def drop_schema(url: str, schema: str) -> None:
    engine = create_engine(parse_url(url))
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def main() -> None:
    """Run both parts and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url", default=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    schema = f"kodify_bench_{uuid.uuid4().hex[:8]}"
    table = f"{schema}.users"
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            in_process = asyncio.run(
                run_in_process(args.database_url, f"sqlite:///{tmp / 'users.db'}", table, args.calls)
            )
            print_table(f"In process: gateway auth, {args.calls} calls per row", in_process, "dummy (no token)")
            if not args.skip_http:
                upstream, proxies, token = start_proxies(tmp, args.database_url, table)
                try:
                    over_http = run_http(proxies, token, args.requests)
                finally:
                    for server in (*proxies.values(), upstream):
                        server.stop()
                for kind in ("GET /v1/models", "POST chat"):
                    rows = {k: v for k, v in over_http.items() if k.startswith(kind)}
                    print_table(
                        f"Over HTTP: {kind}, {args.requests} sequential requests per proxy",
                        rows,
                        f"{kind} | dummy auth",
                    )
        finally:
            drop_schema(args.database_url, schema)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
