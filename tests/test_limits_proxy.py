"""Fair share through real servers: two kodify-proxy processes sharing one count in the real Redis, a client leaving
mid-stream, Redis stopped mid-run (a redis-server of the test's own), a 429 journaled and counted, and the OpenAI SDK
waiting out Retry-After. Each test is its own client address (X-Forwarded-For, trusted from 127.0.0.1 as uvicorn
trusts it by default), so its counts are its own."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import create_engine, make_url, text

from tests.servers import Server, free_port, kodify_proxy, upstreams_yaml

REDIS = "redis://127.0.0.1:6379/0"
LIMITS = {
    "KODIFY_LIMIT_CHAT_RPM": "3",
    "KODIFY_LIMIT_COMPLETIONS_CONCURRENCY": "1",
    "KODIFY_LIMIT_EMBEDDINGS_TOKENS_PER_DAY": "20",
}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def client_address() -> dict[str, str]:
    """A client address of the test's own (IPv6's documentation range), as a trusted proxy forwards it."""
    return {"X-Forwarded-For": f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, upstream: Server) -> Iterator[tuple[Server, Server, Path]]:
    """Two servers, one Redis count; the first journals (SQLite)."""
    tmp = tmp_path_factory.mktemp("limits")
    journal = tmp / "journal.db"
    env = {**LIMITS, "REDIS_URL": REDIS}
    first = kodify_proxy(
        tmp,
        upstreams_yaml(upstream.url),
        {**env, "LOGS": "True", "KODIFY_JOURNAL_URL": f"sqlite:///{journal}", "RUN_MIGRATIONS": "1"},
        name="limits-a",
    )
    second = kodify_proxy(tmp, upstreams_yaml(upstream.url), env, name="limits-b")
    for server in (first, second):
        server.start(expect_ready=False)
    try:
        for server in (first, second):
            server.wait_ready(180)
        yield first, second, journal
    finally:
        for server in (first, second):
            server.stop()


def test_two_servers_share_one_count_and_the_429_says_which_limit(
    pair: tuple[Server, Server, Path], upstream: Server
) -> None:
    first, second, journal = pair
    who = client_address()
    statuses = [
        httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=who, timeout=30)
        for server in (first, second, first, second)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    refused = statuses[-1]
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "chat_requests_per_minute"
    assert error["message"].startswith(f"Rate limit reached for client {who['X-Forwarded-For']}:")  # as forwarded
    assert 55 <= int(refused.headers["retry-after"]) <= 60
    marker = uuid.uuid4().hex  # a refused request never reaches the upstream
    unsent = {**CHAT, "messages": [{"role": "user", "content": marker}]}
    assert httpx.post(second.url + "/v1/chat/completions", json=unsent, headers=who, timeout=30).status_code == 429
    assert httpx.get(upstream.url + "/_count", params={"contains": marker}).json() == 0
    # the other kinds, and other clients, are not touched by it
    assert httpx.post(second.url + "/v1/chat/completions", json=CHAT, headers=client_address()).status_code == 200
    body = {"model": "fake-model", "prompt": "x", "max_tokens": 2}
    assert httpx.post(second.url + "/v1/completions", json=body, headers=who, timeout=30).status_code == 200
    # journaled and counted where it was refused
    on_first = httpx.post(first.url + "/v1/chat/completions", json=CHAT, headers=who, timeout=30)
    assert on_first.status_code == 429
    request_id = on_first.headers["x-litellm-call-id"]
    deadline = time.monotonic() + 10
    row = None
    while row is None and time.monotonic() < deadline:
        with sqlite3.connect(journal) as db:
            row = db.execute(
                "SELECT status, error_type, error_message FROM kodify_journal WHERE request_id = ?", (request_id,)
            ).fetchone()
        time.sleep(0.2)
    assert row is not None and row[:2] == (429, "rate_limit_error") and "3 chat requests per minute" in row[2]
    metrics = httpx.get(first.url + "/metrics").text
    assert 'kodify_rate_limited_total{limit="chat_requests_per_minute",route="/v1/chat/completions"} 1.0' in metrics


def test_a_slot_in_flight_frees_when_its_client_leaves(pair: tuple[Server, Server, Path]) -> None:
    first, second, _ = pair
    who = client_address()
    slow = {"model": "fake-model", "prompt": "DRIP:5 slow", "stream": True}
    with socket.create_connection(("127.0.0.1", first.port)) as held:  # a raw client that will just hang up
        payload = httpx.Request("POST", first.url + "/v1/completions", json=slow, headers=who)
        head = "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        head += f"x-forwarded-for: {who['X-Forwarded-For']}\r\ncontent-length: {len(payload.read())}\r\n\r\n"
        held.sendall(head.encode() + payload.read())
        assert held.recv(100).startswith(b"HTTP/1.1 200")  # streaming: the slot is taken
        body = {"model": "fake-model", "prompt": "x", "max_tokens": 2}
        busy = httpx.post(second.url + "/v1/completions", json=body, headers=who, timeout=30)
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "completions_concurrency"
        assert busy.headers["retry-after"] == "1"
        tabby = {"language": "python", "segments": {"prefix": "x = ", "suffix": "\n"}}  # the same kind of work
        for path in ("/v1/completions", "/tabby/v1/completions"):
            held_too = httpx.post(second.url + path, json=tabby, headers=who, timeout=30)
            assert held_too.status_code == 429 and held_too.json()["error"]["code"] == "completions_concurrency"
    deadline = time.monotonic() + 5  # the client left: the upstream call is cancelled and the slot freed
    while httpx.post(second.url + "/v1/completions", json=body, headers=who, timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the slot was not freed after the client left"
        time.sleep(0.1)


def test_tokens_per_day_count_what_the_upstream_reported(pair: tuple[Server, Server, Path]) -> None:
    first, second, _ = pair
    who = client_address()
    body = {"model": "fake-embed", "input": "one two three"}
    used = 0
    statuses = []
    for server in (first, second) * 8:  # the fake upstream reports 2 tokens per embedding
        response = httpx.post(server.url + "/v1/embeddings", json=body, headers=who, timeout=30)
        statuses.append(response.status_code)
        if response.status_code == 200:
            used += response.json()["usage"]["total_tokens"]
            time.sleep(0.3)  # counted once the request is recorded
    refused_at = statuses.index(429)
    assert statuses[refused_at:] == [429] * (len(statuses) - refused_at)
    assert used >= 20 and used - 20 < used / refused_at + 1  # refused once the day's total reached the limit


def test_the_openai_sdk_waits_out_retry_after_and_gets_its_answer(pair: tuple[Server, Server, Path]) -> None:
    first, _, _ = pair
    client = openai.OpenAI(base_url=first.url + "/v1", api_key="x", default_headers=client_address(), max_retries=2)
    for _ in range(3):
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    started = time.monotonic()
    answer = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    waited = time.monotonic() - started
    assert answer.choices[0].message.content
    assert 50 <= waited <= 65, waited  # the window's first request left it; the SDK slept as Retry-After said
    client.close()


# --- Redis stopped mid-run ---------------------------------------------------------------------------------------


class RedisServer:
    """A redis-server of the test's own (Debian's package) on a free port, no persistence."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is needed (Debian's redis-server package)"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._args = [binary, "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", str(directory)]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(self._args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_stopped_mid_run_lets_requests_through_loudly_then_limits_again(
    tmp_path: Path, upstream: Server, own_redis: RedisServer
) -> None:
    env = {"KODIFY_LIMIT_CHAT_RPM": "2", "REDIS_URL": own_redis.url}
    proxy = kodify_proxy(tmp_path, upstreams_yaml(upstream.url), env, name="limits-redis").start(timeout=180)
    try:
        who = client_address()

        def chat() -> int:
            return httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=who, timeout=30).status_code

        assert [chat() for _ in range(3)] == [200, 200, 429]
        own_redis.stop()
        assert [chat() for _ in range(4)] == [200] * 4  # fail open: limits are about fairness, not access
        metrics = httpx.get(proxy.url + "/metrics").text
        errors = next(line for line in metrics.splitlines() if line.startswith("kodify_rate_limiter_errors_total"))
        assert float(errors.split()[1]) >= 4
        assert "Rate limiter: the check failed" in proxy.log_text()
        own_redis.start()  # an empty Redis: the window starts again
        statuses = [chat() for _ in range(3)]
        assert statuses == [200, 200, 429]  # counted again (the client reconnects by itself)
    finally:
        proxy.stop()


# --- per-user limits ---------------------------------------------------------------------------------------------


def test_a_users_own_limit_applies_to_them_alone(tmp_path: Path, upstream: Server, database_url: str) -> None:
    """Per-user tokens, no default limit, counted in the server itself (no REDIS_URL); alice gets 1 chat a minute."""
    env = {
        "MTSAI_AUTH": "true",
        "AUTH_TYPE": "DB",
        "DB_URL": make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False),
        "USERS_TABLE": f"limits_users_{uuid.uuid4().hex[:8]}",
        "KODIFY_AUTH_CACHE_TTL": "1",
    }

    def users(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "kodify_proxy.cli", "users", *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    alice, bob = users("add", "alice"), users("add", "bob")
    users("limit", "alice", "--chat-rpm", "1")
    proxy = kodify_proxy(tmp_path, upstreams_yaml(upstream.url), env, name="limits-users").start(timeout=180)
    try:

        def chat(token: str) -> httpx.Response:
            auth = {"Authorization": f"Bearer {token}"}
            return httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=auth, timeout=30)

        assert [chat(alice).status_code, chat(bob).status_code, chat(bob).status_code] == [200, 200, 200]
        refused = chat(alice)
        assert refused.status_code == 429
        assert refused.json()["error"]["message"].startswith("Rate limit reached for user alice: 1 chat requests")
        users("limit", "alice", "--chat-rpm", "default")  # no default set: unlimited, once the cache has let go
        time.sleep(1.2)
        assert chat(alice).status_code == 200
    finally:
        proxy.stop()
        engine = create_engine(database_url)
        with engine.begin() as connection:
            for table in (env["USERS_TABLE"], env["USERS_TABLE"] + "_limits"):
                connection.execute(text(f'DROP TABLE IF EXISTS "{table}"'))
        engine.dispose()
