"""SIGTERM with 12 chats in flight at the real vLLM server (one shared token, the journal in PostgreSQL): every
client gets its whole answer and every request its row; nothing is reset."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SERVED_MODEL
from tests.journal_support import fresh_database, journal_rows
from tests.servers import kodify_proxy, upstreams_yaml

pytestmark = pytest.mark.e2e
TOKEN = "sk-sigterm"
IN_FLIGHT = 12
TOKENS = 450  # max_model_len is 512; with N choices each, all 12 requests are surely open at vLLM together
N = 3
_IN_FLIGHT = re.compile(r"^kodify_upstream_in_flight\{[^}]*\} ([0-9.]+)$", re.MULTILINE)


def in_flight_at(proxy: str) -> int:
    """Requests the lane has open at vLLM (the proxy's own gauge; vLLM's gauges lag behind by seconds)."""
    return int(sum(float(value) for value in _IN_FLIGHT.findall(httpx.get(proxy + "/metrics").text)))


def chat(base: str, i: int, results: list[Any]) -> None:
    body = {
        "model": SERVED_MODEL,
        "messages": [{"role": "user", "content": f"chat {i}"}],
        "max_tokens": TOKENS,
        "ignore_eos": True,
        "n": N,
        "temperature": 1.0,
        "seed": i,
        "stream": i % 2 == 0,
    }
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        response = httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=120)
        complete = response.text.endswith("data: [DONE]\n\n") if body["stream"] else "usage" in response.json()
        results[i] = (response.status_code, complete)
    except httpx.HTTPError as exc:
        results[i] = type(exc).__name__


def test_sigterm_lets_every_chat_in_flight_finish_with_its_row(tmp_path: Path, vllm: str, database_url: str) -> None:
    with fresh_database(database_url, prefix="kodify_e2e_sigterm") as url:
        env = {"LOGS": "True", "KODIFY_JOURNAL_URL": url, "RUN_MIGRATIONS": "1", "VLLM_API_KEY": TOKEN}
        proxy = kodify_proxy(tmp_path, upstreams_yaml(vllm), env={**env, "KODIFY_SHUTDOWN_GRACE": "60"}).start()
        results: list[Any] = [None] * IN_FLIGHT
        threads = [threading.Thread(target=chat, args=(proxy.url, i, results)) for i in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()
        deadline, most = time.monotonic() + 30, 0
        while (most := max(most, in_flight_at(proxy.url))) < IN_FLIGHT:
            assert time.monotonic() < deadline, f"at most {most} requests were open at vLLM together: {results}"
            time.sleep(0.01)
        assert proxy.process is not None
        os.kill(proxy.process.pid, signal.SIGTERM)
        for thread in threads:
            thread.join(120)
        assert results == [(200, True)] * IN_FLIGHT
        assert proxy.wait_exit(60) in (0, -signal.SIGTERM)
        rows = journal_rows(url)
        assert sorted((row["route"], row["status"]) for row in rows) == [("/v1/chat/completions", 200)] * IN_FLIGHT
        assert all(row["completion_tokens"] == N * TOKENS for row in rows)
