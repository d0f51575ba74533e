"""SIGTERM with 12 chats streaming from the real vLLM server (one shared token, the journal in PostgreSQL): every
client gets its whole answer and every request its row; nothing is reset."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SERVED_MODEL
from tests.journal_support import fresh_database, journal_rows
from tests.servers import Server, kodify_proxy, upstreams_yaml

pytestmark = pytest.mark.e2e
TOKEN = "sk-sigterm"
IN_FLIGHT = 12
TOKENS = 450  # max_model_len is 512: the longest answer, so the signal comes while every stream is running


def chat(base: str, i: int, started: threading.Event, results: list[Any]) -> None:
    """One streamed chat; `started` is set at its first line, the result is (status, whether it ended with [DONE])."""
    body = {
        "model": SERVED_MODEL,
        "messages": [{"role": "user", "content": f"chat {i}"}],
        "max_tokens": TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers=headers, timeout=120) as response:
            lines = []
            for line in response.iter_lines():
                started.set()
                lines.append(line)
            results[i] = (response.status_code, "data: [DONE]" in lines[-2:])
    except httpx.HTTPError as exc:
        results[i] = type(exc).__name__
    finally:
        started.set()


def sigterm_amid_chats(proxy: Server, results: list[Any]) -> int:
    """Start the chats, send SIGTERM once every one is streaming, wait for them; how many were running then."""
    started = [threading.Event() for _ in range(IN_FLIGHT)]
    threads = [threading.Thread(target=chat, args=(proxy.url, i, started[i], results)) for i in range(IN_FLIGHT)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for event in started:  # every stream has begun: the signal comes while they run
        assert event.wait(max(0.0, deadline - time.monotonic())), "a chat did not start streaming"
    assert proxy.process is not None
    os.kill(proxy.process.pid, signal.SIGTERM)
    still_running = sum(result is None for result in results)
    for thread in threads:
        thread.join(120)
    return still_running


def test_sigterm_lets_every_chat_in_flight_finish_with_its_row(tmp_path: Path, vllm: str, database_url: str) -> None:
    with fresh_database(database_url, prefix="kodify_e2e_sigterm") as url:
        env = {"LOGS": "True", "KODIFY_JOURNAL_URL": url, "RUN_MIGRATIONS": "1", "VLLM_API_KEY": TOKEN}
        proxy = kodify_proxy(tmp_path, upstreams_yaml(vllm), env={**env, "KODIFY_SHUTDOWN_GRACE": "60"}).start()
        results: list[Any] = [None] * IN_FLIGHT
        try:
            still_running = sigterm_amid_chats(proxy, results)
            exit_status = proxy.wait_exit(60)
        finally:
            proxy.stop()  # gone already after the signal; this stops it when the test failed before
        assert results == [(200, True)] * IN_FLIGHT
        assert still_running > 0  # the signal did come while chats were streaming
        assert exit_status in (0, -signal.SIGTERM)
        rows = journal_rows(url)
        assert sorted((row["route"], row["status"]) for row in rows) == [("/v1/chat/completions", 200)] * IN_FLIGHT
        assert all(row["completion_tokens"] == TOKENS for row in rows)
