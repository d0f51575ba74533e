"""Auth: the guide's three modes as real kodify-proxy processes (real PostgreSQL and SQLite, fake upstream).

Servers (started together once): one-token mode; two per-user servers on one PostgreSQL table, one of them
through a TCP forwarder process that a test kills to take the database away; a per-user server on SQLite.
The session `proxy` fixture is the dummy mode. Run as `python -m tests.test_auth forward LISTEN HOST PORT`,
this file is that forwarder.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from kodify_proxy.auth import select_mode
from kodify_proxy.settings import SettingsError, load_settings
from kodify_proxy.users import UserStore, hash_token, new_token
from tests.servers import REPO, Server, free_port, kodify_proxy, upstreams_yaml

TTL = 5.0  # KODIFY_AUTH_CACHE_TTL's default: the stated bound for a revoke or rotate to take effect
SLACK = 1.0  # polling step, request time and process scheduling on a busy 2-core machine
SHARED = "team-" + secrets.token_urlsafe(24)
ISSUED: list[str] = [SHARED]  # every secret this module handed out: none may appear in a server log
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
MODEL_ROUTES = [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", {"model": "fake-model", "prompt": "def"}),
    ("POST", "/v1/embeddings", {"model": "fake-embed", "input": ["a"]}),
    ("GET", "/v1/models", None),
]
# LiteLLM's administration and what LiteLLM itself answers the master key without its own database (1.106.12):
# the routes that need the database fail in LiteLLM (500), the others answer.
ADMIN_ROUTES = {
    ("GET", "/key/list"): 500,
    ("GET", "/get/config/callbacks"): 200,
    ("GET", "/debug/asyncio-tasks"): 200,
    ("GET", "/user/info"): 500,
    ("GET", "/global/spend/logs"): 500,
    ("GET", "/model/info"): 200,
    ("POST", "/key/generate"): 500,
}


# --- the guide's mode table and contradictory settings (pure) ---

DB = {"MTSAI_AUTH": "true", "AUTH_TYPE": "DB", "DB_URL": "postgresql://kodify:hunter2@db:5432/kodify"}


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, "dummy"),
        ({"MTSAI_AUTH": "false", "AUTH_TYPE": "NO"}, "dummy"),
        ({"VLLM_API_KEY": "x"}, "shared"),
        ({"MTSAI_AUTH": "False", "AUTH_TYPE": "NO", "VLLM_API_KEY": "x"}, "shared"),
        (DB, "db"),
        ({**DB, "MTSAI_AUTH": "True", "USERS_TABLE": "auth.users"}, "db"),
        ({**DB, "MTSAI_AUTH": "1", "DB_URL": "sqlite:///users.db"}, "db"),
    ],
)
def test_the_guides_mode_table(env: dict[str, str], mode: str) -> None:
    assert select_mode(load_settings(env)) == mode


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"MTSAI_AUTH": "true"},
            [
                "MTSAI_AUTH=true (per-user tokens) needs AUTH_TYPE=DB; set AUTH_TYPE=DB, or",
                "MTSAI_AUTH=true needs DB_URL, the users database: DB_URL=postgresql://",
            ],
        ),
        ({"MTSAI_AUTH": "true", "AUTH_TYPE": "DB"}, ["MTSAI_AUTH=true needs DB_URL"]),
        ({"MTSAI_AUTH": "true", "DB_URL": DB["DB_URL"]}, ["MTSAI_AUTH=true (per-user tokens) needs AUTH_TYPE=DB"]),
        ({"AUTH_TYPE": "DB", "DB_URL": DB["DB_URL"]}, ["AUTH_TYPE=DB needs MTSAI_AUTH=true (per-user tokens)"]),
        ({"MTSAI_AUTH": "false", "AUTH_TYPE": "DB"}, ["AUTH_TYPE=DB needs MTSAI_AUTH=true"]),
        ({**DB, "VLLM_API_KEY": "x"}, ["VLLM_API_KEY is set but MTSAI_AUTH=true uses per-user tokens"]),
        ({"DB_URL": DB["DB_URL"]}, ["DB_URL set, but MTSAI_AUTH=false turns per-user tokens off"]),
        ({"VLLM_API_KEY": "x", "USERS_TABLE": "users"}, ["USERS_TABLE set, but MTSAI_AUTH=false"]),
        ({**DB, "USERS_TABLE": "a.b.c"}, ["USERS_TABLE='a.b.c' is invalid: 'a.b.c' is not a table name"]),
        ({**DB, "DB_URL": "mysql://k:hunter2@db/k"}, ["DB_URL=<hidden> is invalid: database 'mysql' is not"]),
        ({**DB, "DB_URL": "sqlite:///u.db", "USERS_TABLE": "auth.users"}, ["names schema 'auth', but SQLite"]),
    ],
)
def test_contradictory_or_incomplete_settings_are_refused_by_name(env: dict[str, str], expected: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    problems = caught.value.problems
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert start in problem
    assert "hunter2" not in str(caught.value)


# --- real processes: a TCP forwarder in front of PostgreSQL, and the servers ---


def forward(listen_port: int, host: str, port: int) -> None:
    """Relay 127.0.0.1:listen_port to host:port until killed (which cuts every relayed connection)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))

    async def main() -> None:
        server = await asyncio.start_server(relay, "127.0.0.1", listen_port)
        await server.serve_forever()

    asyncio.run(main())


@dataclass
class Forwarder:
    """`forward` as its own process group, so a test can kill it like a crashed database host."""

    listen_port: int
    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "tests.test_auth", "forward", str(self.listen_port), self.host, str(self.port)]
        self.process = subprocess.Popen(args, cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.listen_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"forwarder on port {self.listen_port} did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def install_metadata_recorder() -> None:
    """LITELLM_WORKER_STARTUP_HOOKS entry, run inside a proxy: write each call's auth metadata to a file."""
    import litellm
    from litellm.integrations.custom_logger import CustomLogger

    path = Path(os.environ["KODIFY_TEST_METADATA_FILE"])

    class Recorder(CustomLogger):
        async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            meta = (kwargs.get("standard_logging_object") or {}).get("metadata") or {}
            line = {k: meta.get(f"user_api_key_{k}") for k in ("user_id", "alias", "hash")}
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")

    litellm.callbacks.append(Recorder())


@dataclass
class Servers:
    """The auth test servers and what they share."""

    shared: Server
    via_forwarder: Server  # per-user tokens, PostgreSQL through `forwarder`
    direct: Server  # per-user tokens, the same PostgreSQL table directly
    sqlite: Server
    forwarder: Forwarder
    pg_env: dict[str, str]  # the users-table settings of the PostgreSQL servers (for the `users` commands)
    sqlite_env: dict[str, str]
    pg_store: UserStore
    metadata_file: Path


def _guide_url(url: str, forwarder_port: int | None = None) -> str:
    """`url` in the guide's postgresql:// form; with `forwarder_port`, pointing at the local forwarder instead."""
    parsed = make_url(url).set(drivername="postgresql")
    if forwarder_port is not None:
        parsed = parsed.set(host="127.0.0.1", port=forwarder_port)
    return parsed.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, upstream: Server, database_url: str) -> Iterator[Servers]:
    """Start every auth server at once (the machine has 2 cores: waiting in parallel saves ~20 s)."""
    tmp = tmp_path_factory.mktemp("auth")
    schema = f"kodify_auth_test_{uuid.uuid4().hex[:10]}"
    target = make_url(database_url)
    forwarder = Forwarder(free_port(), target.host or "127.0.0.1", target.port or 5432)
    forwarder.start()
    config = upstreams_yaml(upstream.url)
    pg_env = {
        "MTSAI_AUTH": "true",
        "AUTH_TYPE": "DB",
        "USERS_TABLE": f"{schema}.users",
        "DB_URL": _guide_url(database_url),
    }
    sqlite_env = {
        "MTSAI_AUTH": "true",
        "AUTH_TYPE": "DB",
        "USERS_TABLE": "kodify_users",
        "DB_URL": f"sqlite:///{tmp / 'sqlite' / 'users.db'}",
    }
    metadata_file = tmp / "metadata.jsonl"
    recorder = {  # LiteLLM's own callbacks see chat only on its path: these two servers keep chat there
        "LITELLM_WORKER_STARTUP_HOOKS": "tests.test_auth:install_metadata_recorder",
        "KODIFY_TEST_METADATA_FILE": str(metadata_file),
        "KODIFY_CHAT_LANE": "litellm",
    }
    started = [
        kodify_proxy(tmp, config, {"VLLM_API_KEY": SHARED}, name="shared"),
        kodify_proxy(
            tmp,
            config,
            {**pg_env, "DB_URL": _guide_url(database_url, forwarder.listen_port), **recorder},
            name="via-forwarder",
        ),
        kodify_proxy(tmp, config, {**pg_env, **recorder}, name="direct"),
        kodify_proxy(tmp, config, sqlite_env, name="sqlite"),
    ]
    for server in started:
        server.start(expect_ready=False)
    store = UserStore.from_settings_values(pg_env["DB_URL"], pg_env["USERS_TABLE"], 3.0)
    try:
        for server in started:
            server.wait_ready(240)
        shared, via_forwarder, direct, sqlite = started
        yield Servers(shared, via_forwarder, direct, sqlite, forwarder, pg_env, sqlite_env, store, metadata_file)
    finally:
        for server in started:
            server.stop()
        forwarder.kill()
        store.close()
        engine = create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chat(server: Server, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=30)


def add_user(store: UserStore, name: str, expires_at: datetime | None = None) -> str:
    token = store.add(name, expires_at).token
    ISSUED.append(token)
    return token


def users_command(env: dict[str, str], *args: str) -> str:
    """`kodify-proxy users ARGS` as a real process; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "kodify_proxy.cli", "users", *args],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("sk-kodify-"):
        ISSUED.append(done.stdout.strip())
    return done.stdout.strip()


def assert_error(response: httpx.Response, status: int, text_in_message: str) -> str:
    """An OpenAI-shaped error with `status` whose message says `text_in_message` and echoes no secret."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    expected_code = "invalid_api_key" if status == 401 else "route_not_found" if status == 404 else str(status)
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == expected_code
    assert text_in_message in error["message"], error["message"]
    assert not any(secret in response.text for secret in ISSUED)
    return str(error["message"])


def wait_for_status(servers: list[Server], token: str, status: int, within: float) -> float:
    """Seconds until every server answers `token` with `status`; fails after `within` seconds."""
    start = time.monotonic()
    pending = list(servers)
    while pending and time.monotonic() - start < within + 5:
        pending = [s for s in pending if chat(s, bearer(token)).status_code != status]
        if pending:
            time.sleep(0.1)
    elapsed = time.monotonic() - start
    assert not pending, f"{[s.name for s in pending]} still not {status} after {elapsed:.1f} s"
    return elapsed


# --- the dummy mode (the session proxy) ---


def test_dummy_mode_warns_loudly_and_lets_everyone_use_models(proxy: Server) -> None:
    assert "*** AUTH IS OFF (dummy mode): MTSAI_AUTH=false and no VLLM_API_KEY" in proxy.log_text()
    assert chat(proxy, {}).status_code == 200
    assert chat(proxy, bearer("anything")).status_code == 200


def test_dummy_mode_keeps_admin_routes_for_the_master_key(proxy: Server) -> None:
    master = (Path(proxy.env["KODIFY_STATE_DIR"]) / "master_key").read_text().strip()
    for path in ("/get/config/callbacks", "/debug/asyncio-tasks"):
        assert_error(httpx.get(proxy.url + path), 404, f"No route {path} on this server")
        assert httpx.get(proxy.url + path, headers=bearer(master)).status_code == 200


# --- the one-token mode ---


def test_shared_mode_accepts_only_vllm_api_key(servers: Servers) -> None:
    server = servers.shared
    assert "Auth: one shared token (VLLM_API_KEY) for every client" in server.log_text()
    assert chat(server, bearer(SHARED)).status_code == 200
    assert chat(server, {"x-api-key": SHARED}).status_code == 200
    assert_error(chat(server, bearer(SHARED + "x")), 401, "Invalid API key: it does not match the server's token")
    assert_error(chat(server, {}), 401, "Missing API key: send the header 'Authorization: Bearer <token>'")
    assert_error(chat(server, {"Authorization": SHARED}), 401, "Malformed Authorization header")


@pytest.mark.parametrize(("method", "path", "body"), MODEL_ROUTES)
def test_every_model_route_needs_the_token(servers: Servers, method: str, path: str, body: Any) -> None:
    for server, token in ((servers.shared, SHARED), (servers.direct, None)):
        if token is None:
            token = add_user(servers.pg_store, f"routes-{uuid.uuid4().hex[:8]}")
        assert_error(httpx.request(method, server.url + path, json=body), 401, "Missing API key")
        allowed = httpx.request(method, server.url + path, json=body, headers=bearer(token), timeout=30)
        assert allowed.status_code == 200, allowed.text


TABBY_ROUTES = [
    ("GET", "/v1/health", None),
    ("POST", "/v1/health", None),
    ("GET", "/v1beta/server_setting", None),
    ("POST", "/v1/events", {"type": "view", "completion_id": "cmpl-1", "choice_index": 0}),
    ("POST", "/v1/completions", {"language": "python", "segments": {"prefix": "def f(", "suffix": "):"}}),
]


@pytest.mark.parametrize(("method", "path", "body"), TABBY_ROUTES)
def test_tabby_routes_need_a_user_token(servers: Servers, method: str, path: str, body: Any) -> None:
    server, token = servers.direct, add_user(servers.pg_store, f"tabby-{uuid.uuid4().hex[:8]}")
    assert_error(httpx.request(method, server.url + path, json=body), 401, "Missing API key")
    assert_error(httpx.request(method, server.url + path, json=body, headers=bearer(new_token())), 401, "Invalid")
    allowed = httpx.request(method, server.url + path, json=body, headers=bearer(token), timeout=30)
    assert allowed.status_code == 200, allowed.text


def test_health_stays_open(servers: Servers) -> None:
    for server in (servers.shared, servers.direct, servers.sqlite):
        response = httpx.get(server.url + "/health")
        assert response.status_code == 200 and response.json()["status"] == "ok"
        if server is not servers.shared:
            assert response.json()["databases"]["users"] == {"healthy": True}  # no table or host for anyone
            users_db = server.health()["databases"]["users"]
            assert users_db["healthy"] is True and "table" in users_db["where"]


# --- per-user tokens ---


def test_the_users_table_is_created_on_first_start(servers: Servers) -> None:
    schema, table = servers.pg_env["USERS_TABLE"].split(".")
    assert inspect(servers.pg_store.engine).has_table(table, schema=schema)
    assert "Auth: per-user tokens in table " + servers.pg_env["USERS_TABLE"] in servers.direct.log_text()
    sqlite = create_engine(servers.sqlite_env["DB_URL"])
    assert inspect(sqlite).has_table("kodify_users")
    sqlite.dispose()


def test_each_rejection_has_its_own_401_that_never_echoes_the_token(servers: Servers) -> None:
    server, store = servers.direct, servers.pg_store
    expires_at = datetime.now(UTC) + timedelta(seconds=3)
    expiring = add_user(store, "rejected-expired", expires_at)
    assert chat(server, bearer(expiring)).status_code == 200  # now cached, and expires while cached
    revoked = add_user(store, "rejected-revoked")
    store.revoke("rejected-revoked")
    unknown = new_token()
    ISSUED.append(unknown)
    cases = [
        ({}, "Missing API key"),
        ({"Authorization": f"Token {revoked}"}, "Malformed Authorization header"),
        (bearer(revoked[:-1]), "Malformed API key: user tokens look like sk-kodify-<43 characters>"),
        (bearer(unknown), "Invalid API key: no user has this token"),
        (bearer(revoked), "API key revoked: an administrator revoked this user's token"),
    ]
    messages = [assert_error(chat(server, headers), 401, says) for headers, says in cases]
    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds() + 0.2))
    messages.append(assert_error(chat(server, bearer(expiring)), 401, "API key expired at 20"))
    assert len(set(messages)) == 6


def test_user_tokens_cannot_reach_admin_routes_but_the_master_key_can(servers: Servers) -> None:
    server = servers.direct
    token = add_user(servers.pg_store, "not-an-admin")
    master = (Path(server.env["KODIFY_STATE_DIR"]) / "master_key").read_text().strip()
    for (method, path), litellms in ADMIN_ROUTES.items():
        url = server.url + path
        body: dict[str, Any] | None = {} if method == "POST" else None
        assert_error(httpx.request(method, url, json=body, headers=bearer(token)), 404, f"No route {path}")
        assert_error(httpx.request(method, url, json=body), 404, f"No route {path}")
        # The master key passes our auth to LiteLLM's; the answer is then LiteLLM's own, never our 404.
        answer = httpx.request(method, url, json=body, headers=bearer(master))
        assert answer.status_code == litellms and "No route" not in answer.text, (path, answer.text)
    for path in ("/get/config/callbacks", "/debug/asyncio-tasks", "/v1/models"):
        assert httpx.get(server.url + path, headers=bearer(master)).status_code == 200


def recorded_metadata(servers: Servers, user_ids: set[str], count: int) -> list[dict[str, Any]]:
    """The recorder's lines for `user_ids`, once there are `count` of them (LiteLLM logs after responding)."""
    deadline = time.monotonic() + 15
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        text_now = servers.metadata_file.read_text() if servers.metadata_file.exists() else ""
        lines = [json.loads(line) for line in text_now.splitlines()]
        lines = [line for line in lines if line["user_id"] in user_ids]
        if len(lines) >= count:
            break
        time.sleep(0.2)
    return lines


def test_the_user_id_reaches_litellm_logging_metadata(servers: Servers) -> None:
    token = add_user(servers.pg_store, "logged-user")
    assert chat(servers.direct, bearer(token)).status_code == 200
    lines = recorded_metadata(servers, {"logged-user"}, 1)
    assert lines == [{"user_id": "logged-user", "alias": "kodify-user-token", "hash": hash_token(token)}]


def test_revoke_takes_effect_within_the_ttl_on_every_server(servers: Servers) -> None:
    both = [servers.via_forwarder, servers.direct]
    token = users_command(servers.pg_env, "add", "to-revoke")
    assert all(chat(s, bearer(token)).status_code == 200 for s in both)  # cached as valid on both
    users_command(servers.pg_env, "revoke", "to-revoke")
    elapsed = wait_for_status(both, token, 401, TTL + SLACK)
    assert elapsed <= TTL + SLACK
    assert_error(chat(servers.direct, bearer(token)), 401, "API key revoked")


def test_rotate_takes_effect_within_the_ttl_and_the_new_token_works_at_once(servers: Servers) -> None:
    both = [servers.via_forwarder, servers.direct]
    old = users_command(servers.pg_env, "add", "to-rotate")
    assert all(chat(s, bearer(old)).status_code == 200 for s in both)
    new = users_command(servers.pg_env, "rotate", "to-rotate")
    assert all(chat(s, bearer(new)).status_code == 200 for s in both)
    elapsed = wait_for_status(both, old, 401, TTL + SLACK)
    assert elapsed <= TTL + SLACK
    assert_error(chat(servers.direct, bearer(old)), 401, "Invalid API key: no user has this token")


def test_100_parallel_requests_from_10_users(servers: Servers) -> None:
    tokens = {f"crowd-{i}": add_user(servers.pg_store, f"crowd-{i}") for i in range(10)}

    async def crowd() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            calls = [
                client.post(servers.direct.url + "/v1/chat/completions", json=CHAT, headers=bearer(token))
                for _ in range(10)
                for token in tokens.values()
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(crowd())
    assert [r.status_code for r in responses] == [200] * 100
    lines = recorded_metadata(servers, set(tokens), 100)
    assert Counter(line["user_id"] for line in lines) == {name: 10 for name in tokens}
    assert {line["hash"] for line in lines} == {hash_token(token) for token in tokens.values()}


def test_sqlite_mode_adds_revokes_and_rejects(servers: Servers) -> None:
    server, env = servers.sqlite, servers.sqlite_env
    token = users_command(env, "add", "solo")
    assert chat(server, bearer(token)).status_code == 200
    assert_error(chat(server, bearer(new_token())), 401, "Invalid API key")
    assert "solo" in users_command(env, "list")
    users_command(env, "revoke", "solo")
    assert wait_for_status([server], token, 401, TTL + SLACK) <= TTL + SLACK
    assert_error(chat(server, bearer(token)), 401, "API key revoked")


def test_database_unreachable_mid_run(servers: Servers) -> None:
    """Cached tokens keep working until their TTL, others get 503; it all resumes when the database is back."""
    server, store = servers.via_forwarder, servers.pg_store
    known = add_user(store, "outage-known")
    assert chat(server, bearer(known)).status_code == 200
    validated_at = time.monotonic()
    servers.forwarder.kill()
    assert chat(server, bearer(known)).status_code == 200  # from the cache
    later = add_user(store, "outage-later")  # exists, but this server can't look it up now
    for token in (later, new_token()):
        assert_error(chat(server, bearer(token)), 503, "Cannot check the API key right now: the user database")
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["databases"]["users"] == {"healthy": False}
    assert chat(servers.direct, bearer(later)).status_code == 200  # the database itself is fine
    time.sleep(max(0.0, validated_at + TTL + 0.3 - time.monotonic()))
    assert_error(chat(server, bearer(known)), 503, "is unavailable")
    servers.forwarder.start()
    assert wait_for_status([server], known, 200, 3.0) <= 3.0
    assert chat(server, bearer(later)).status_code == 200
    assert httpx.get(server.url + "/health").json()["databases"]["users"]["healthy"] is True
    log = server.log_text()
    assert "the user database (table" in log and "is unavailable" in log
    assert "The user database answers again" in log


def test_serve_refuses_to_start_when_the_user_database_is_unreachable(tmp_path: Path, upstream: Server) -> None:
    env = {"MTSAI_AUTH": "true", "AUTH_TYPE": "DB", "DB_URL": f"postgresql://k:hunter2@127.0.0.1:{free_port()}/k"}
    server = kodify_proxy(tmp_path, upstreams_yaml(upstream.url), env, name="no-db")
    server.start(expect_ready=False)
    assert server.wait_exit(120) == 1
    log = server.log_text()
    assert "error: the user database (table kodify_users at postgresql+psycopg://k:***@127.0.0.1:" in log
    assert "Start the database or fix DB_URL" in log and "hunter2" not in log


def test_serve_refuses_contradictory_auth_settings(tmp_path: Path, upstream: Server) -> None:
    server = kodify_proxy(tmp_path, upstreams_yaml(upstream.url), {"AUTH_TYPE": "DB"}, name="contradictory")
    server.start(expect_ready=False)
    assert server.wait_exit(60) == 2
    assert "error: AUTH_TYPE=DB needs MTSAI_AUTH=true (per-user tokens)" in server.log_text()


def test_no_token_appears_in_any_log_or_rendered_config(servers: Servers, proxy: Server) -> None:
    config = servers.shared.args[list(servers.shared.args).index("--config") + 1]
    rendered = subprocess.run(
        [sys.executable, "-m", "kodify_proxy.cli", "render-config", "--config", config],
        env={**os.environ, **servers.shared.env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    shared_config = servers.shared.instance_dir / "litellm_config.yaml"
    texts = {s.name: s.log_text() for s in (servers.shared, servers.via_forwarder, servers.direct, servers.sqlite)}
    texts |= {
        "dummy": proxy.log_text(),
        "render-config": rendered.stdout + rendered.stderr,
        "litellm_config.yaml": shared_config.read_text(),
    }
    assert SHARED in ISSUED and len(ISSUED) > 1  # non-vacuous even when run alone (-k)
    leaks = [(name, secret[:14]) for name, body in texts.items() for secret in ISSUED if secret in body]
    assert leaks == []


if __name__ == "__main__" and sys.argv[1:2] == ["forward"]:
    forward(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
