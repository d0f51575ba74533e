"""Kodify as administrators run it: `docker compose up -d` with the guide's ENV file on a real Docker engine, vLLM on
the CPU (deploy/compose.cpu.yaml) serving the generated tiny model, everything checked over the published port.

The tests run in order on one deployment: started, answering, checked, stopped and started again, then switched to
per-user tokens."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from tests.compose.conftest import PASSWORD, REPORT, SERVED_MODEL, TOKEN
from tests.compose.project import Project
from tests.servers import REPO

pytestmark = pytest.mark.compose
STREAMS = 4
STREAM_TOKENS = 1500  # the tiny model's context is 2048: each stream still runs when the stop comes
TABBY = {"language": "python", "segments": {"prefix": "def add(a, b):\n    return ", "suffix": "\n"}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chat_body(content: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    body = {"model": SERVED_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return {**body, "stream": True, "ignore_eos": True} if stream else body


def data_lines(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def wait_for_rows(project: Project, request_ids: set[str], timeout: float = 60) -> list[dict[str, Any]]:
    """The journal once it has a row for each of `request_ids` (rows are written in batches, after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = project.journal()
        if request_ids <= {row["request_id"] for row in rows} or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_every_service_is_healthy_and_migrate_ran_once(deployment: Project) -> None:
    containers = deployment.containers()
    assert Counter(c["Service"] for c in containers) == {"vllm": 1, "postgres": 1, "migrate": 1, "kodify-proxy": 1}
    assert {c["Service"]: c["Health"] for c in containers if c["Service"] != "migrate"} == dict.fromkeys(
        ("vllm", "postgres", "kodify-proxy"), "healthy"
    )
    (migrate,) = [c for c in containers if c["Service"] == "migrate"]
    assert (migrate["State"], migrate["ExitCode"]) == ("exited", 0)
    scripts = ScriptDirectory.from_config(Config(str(REPO / "alembic.ini")))
    revisions = list(scripts.walk_revisions())
    assert deployment.compose("logs", "--no-color", "migrate").count("Running upgrade") == len(revisions)
    proxy_log = deployment.compose("logs", "--no-color", "kodify-proxy")
    assert "Running upgrade" not in proxy_log  # RUN_MIGRATIONS=0 in the service: migrate applied them
    query = ["psql", "-U", "kodify", "-d", "kodify", "-Atc", "SELECT version_num FROM kodify_alembic_version"]
    assert deployment.exec("postgres", *query).stdout.split() == [scripts.get_current_head()]
    workers = proxy_log.count("Application startup complete.")
    assert workers >= 1
    REPORT.add(f"migrate: exited 0 once, {len(revisions)} revisions applied; kodify-proxy workers started: {workers}")


def test_chat_streamed_chat_and_tabby_completion_are_answered(deployment: Project) -> None:
    url = deployment.url
    chat = httpx.post(f"{url}/v1/chat/completions", json=chat_body("Say hello", 16), headers=bearer(TOKEN), timeout=60)
    assert chat.status_code == 200, chat.text
    answer = chat.json()["choices"][0]["message"]["content"]
    assert answer and chat.json()["model"] == SERVED_MODEL
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json=chat_body("Count", 24, stream=True),
        headers=bearer(TOKEN),
        timeout=60,
    ) as stream:
        lines = data_lines(stream)
    assert stream.status_code == 200 and lines[-1] == "[DONE]"
    streamed = "".join(json.loads(line)["choices"][0]["delta"].get("content") or "" for line in lines[:-1])
    assert streamed
    tabby = httpx.post(f"{url}/v1/completions", json=TABBY, headers=bearer(TOKEN), timeout=60)
    assert tabby.status_code == 200, tabby.text
    (choice,) = tabby.json()["choices"]
    assert choice["index"] == 0 and isinstance(choice["text"], str)
    refused = httpx.post(f"{url}/v1/chat/completions", json=chat_body("hi", 4), timeout=60)
    assert refused.status_code == 401 and set(refused.json()["error"]) == {"message", "type", "param", "code"}
    ids = {r.headers["x-litellm-call-id"] for r in (chat, stream, tabby)}
    rows = {row["request_id"]: row for row in wait_for_rows(deployment, ids)}
    assert [(rows[i]["status"], rows[i]["completion_tokens"] > 0) for i in sorted(ids)] == [(200, True)] * 3
    REPORT.add(f"chat: {answer!r}")
    REPORT.add(f"streamed chat: {streamed!r}")
    REPORT.add(f"Tabby completion: {choice['text']!r}")


def test_check_is_clean_inside_the_container(deployment: Project) -> None:
    result = deployment.exec("kodify-proxy", "kodify-proxy", "check")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[-1] == "all checks passed" and not [line for line in lines if line.startswith("problem:")]
    assert "ok: upstream http://vllm:8000 serves tiny" in lines
    assert "ok: authorization: one shared token (VLLM_API_KEY)" in lines
    assert any(line.startswith("ok: journal database postgresql") and line.endswith("answers") for line in lines)
    REPORT.add(f"check in the container: {sum(line.startswith('ok:') for line in lines)} ok, exit status 0")


def stream_chat(url: str, i: int, started: threading.Event, results: list[Any]) -> None:
    """One long streamed chat; `started` is set at its first line, its result is (status, last data line, id)."""
    body = chat_body(f"stream {i}", STREAM_TOKENS, stream=True)
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=bearer(TOKEN), timeout=300) as r:
            lines = []
            for line in r.iter_lines():
                started.set()
                lines.append(line)
            data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
            results[i] = (r.status_code, data[-1] if data else None, r.headers.get("x-litellm-call-id"))
    except httpx.HTTPError as exc:
        results[i] = type(exc).__name__
    finally:
        started.set()


def during(action: Callable[[], str], url: str) -> tuple[list[Any], int, float]:
    """`action` run once STREAMS chats are streaming; their results, how many were unfinished when it began, and
    the seconds it took."""
    results: list[Any] = [None] * STREAMS
    started = [threading.Event() for _ in range(STREAMS)]
    threads = [threading.Thread(target=stream_chat, args=(url, i, started[i], results)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    assert all(event.wait(120) for event in started), "a chat did not start streaming"
    unfinished = sum(result is None for result in results)
    begun = time.monotonic()
    action()
    seconds = time.monotonic() - begun
    for thread in threads:
        thread.join(300)
    return results, unfinished, seconds


def test_stop_drains_streams_and_the_journal_keeps_every_row(deployment: Project) -> None:
    before = {row["request_id"] for row in deployment.journal()}
    results, unfinished, stop_seconds = during(lambda: deployment.compose("stop", timeout=300), deployment.url)
    assert unfinished > 0  # the engine's SIGTERM came while chats were streaming
    assert [(status, last) for status, last, _ in results] == [(200, "[DONE]")] * STREAMS
    (proxy,) = [c for c in deployment.containers() if c["Service"] == "kodify-proxy"]
    assert (proxy["State"], proxy["ExitCode"]) == ("exited", 0)  # drained in time, not killed after the grace period
    restart = deployment.up()
    streamed = {request_id for _, _, request_id in results}
    after = deployment.journal()
    assert {row["request_id"] for row in after} == before | streamed
    assert [
        (row["status"], row["stream"], row["completion_tokens"]) for row in after if row["request_id"] in streamed
    ] == [(200, True, STREAM_TOKENS)] * STREAMS
    REPORT.add(f"stop with {unfinished} of {STREAMS} streams in flight: {stop_seconds:.0f} s, every one ended [DONE]")
    REPORT.add(f"journal rows: {len(before)} before the stop, {len(after)} after up -d again ({len(streamed)} drained)")
    REPORT.add(f"up -d again to every service healthy: {restart}")


def test_per_user_tokens_with_a_user_added_through_compose_exec(deployment: Project) -> None:
    env = deployment.read_env()
    del env["VLLM_API_KEY"]
    env |= {"MTSAI_AUTH": "true", "AUTH_TYPE": "DB", "USERS_TABLE": "kodify_users"}
    env["DB_URL"] = f"postgresql://kodify:{PASSWORD}@postgres:5432/kodify"
    deployment.write_env(env)
    switched = deployment.up()
    added = deployment.exec("kodify-proxy", "kodify-proxy", "users", "add", "alice")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    url = f"{deployment.url}/v1/chat/completions"
    served = httpx.post(url, json=chat_body("Hello", 8), headers=bearer(token), timeout=60)
    assert served.status_code == 200, served.text
    shared = httpx.post(url, json=chat_body("Hello", 8), headers=bearer(TOKEN), timeout=60)
    assert shared.status_code == 401 and shared.json()["error"]["type"]
    request_id = served.headers["x-litellm-call-id"]
    (row,) = [row for row in wait_for_rows(deployment, {request_id}) if row["request_id"] == request_id]
    assert (row["user_id"], row["status"]) == ("alice", 200)
    REPORT.add(f"per-user tokens: up -d to healthy again {switched}; alice's token served, the shared one 401")
