"""The loss test: PostgreSQL unreachable for part of the run, a SIGTERM while it is down, a restart.

Requests go through a real kodify-proxy (fake upstream); the journal database is reached through a TCP forwarder
that the test cuts and restores. At the end: requests sent = rows stored, no duplicates, nothing left spooled.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from kodify_proxy.database import parse_url
from kodify_proxy.journal.migrate import upgrade
from tests.journal_support import TcpForwarder, fresh_database, journal_rows, via_port, wait_for_rows
from tests.servers import Server, kodify_proxy, upstreams_yaml

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}
# (method, path, body, expected status): successes, a stream, and requests our hooks reject.
MIX: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("POST", "/v1/chat/completions", CHAT, 200),
    ("POST", "/v1/chat/completions", {**CHAT, "stream": True}, 200),
    ("POST", "/v1/completions", {"model": "fake-model", "prompt": "def f("}, 200),
    ("POST", "/v1/embeddings", {"model": "fake-embed", "input": "x"}, 200),
    ("POST", "/v1/chat/completions", {**CHAT, "n": 99}, 400),
    ("POST", "/v1/chat/completions", {**CHAT, "model": "no-such-model"}, 404),
    ("GET", "/v1/models", None, 200),
]
SLOWEST_ALLOWED = 5.0  # seconds: generous for a loaded CI box; a request never waits for the journal database


@pytest.fixture()
def journal_db(database_url: str) -> Iterator[str]:
    with fresh_database(database_url, prefix="kodify_journal_loss") as url:
        upgrade(parse_url(url))
        yield url


def send(proxy: Server, count: int, start: int) -> list[str]:
    """`count` requests from MIX (round robin from `start`); their ids. Each must answer as expected, fast."""
    ids = []
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        for i in range(start, start + count):
            method, path, body, status = MIX[i % len(MIX)]
            began = time.perf_counter()
            response = client.request(method, path, json=body)
            took = time.perf_counter() - began
            assert response.status_code == status, response.text
            assert took < SLOWEST_ALLOWED, f"{path} took {took:.2f} s"
            ids.append(response.headers["x-litellm-call-id"])
    return ids


def segments(spool: Path) -> list[Path]:
    return sorted(spool.glob("segment-*.jsonl"))


def test_nothing_is_lost_while_postgresql_is_unreachable(tmp_path: Path, upstream: Server, journal_db: str) -> None:
    target = make_url(journal_db)
    forwarder = TcpForwarder(target.host or "127.0.0.1", target.port or 5432).start()
    spool = tmp_path / "spool"
    env = {
        "LOGS": "True",
        "KODIFY_JOURNAL_URL": via_port(journal_db, forwarder.port),
        "KODIFY_JOURNAL_SPOOL_DIR": str(spool),
        "KODIFY_JOURNAL_FLUSH_INTERVAL": "0.05",
        "KODIFY_JOURNAL_RETRY_INTERVAL": "0.3",
        "KODIFY_JOURNAL_DB_TIMEOUT": "2",
        "KODIFY_JOURNAL_BODIES": "false",
    }
    config = upstreams_yaml(upstream.url)
    first = kodify_proxy(tmp_path, config, env=env, name="loss-1").start()
    second = kodify_proxy(tmp_path, config, env=env, name="loss-2")
    sent: list[str] = []
    try:
        sent += send(first, 21, 0)  # database up
        assert len(wait_for_rows(journal_db, len(sent))) == len(sent)

        forwarder.stop()  # database unreachable: requests keep working, rows go to the spool
        sent += send(first, 35, 21)
        deadline = time.monotonic() + 15
        while not segments(spool) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert segments(spool), "rows were not spooled while the database was down"
        assert len(journal_rows(journal_db)) == 21

        forwarder.start()  # back: the spool is replayed, then new rows follow
        sent += send(first, 14, 56)
        assert len(wait_for_rows(journal_db, len(sent))) == len(sent)

        forwarder.stop()  # down again, then SIGTERM: the buffer is flushed into the spool before exit
        sent += send(first, 15, 70)
        first.stop()
        assert first.process is not None and first.process.returncode is not None
        assert "Journal flushed" in first.log_text()
        assert len(journal_rows(journal_db)) == 70
        assert segments(spool), "rows of the SIGTERM flush are not in the spool"

        forwarder.start()  # a new process on the same spool stores what the old one left
        second.start()
        sent += send(second, 10, 85)
        second.stop()  # SIGTERM with the database up: flushed straight into it
    finally:
        first.stop()
        second.stop()
        forwarder.stop()
    rows = journal_rows(journal_db)
    stored = [r["request_id"] for r in rows]
    assert len(sent) == len(set(sent)) == 95
    assert len(stored) == len(set(stored)) == len(sent)
    assert set(stored) == set(sent)
    assert segments(spool) == []
    assert {r["request_body"] for r in rows} == {None}  # KODIFY_JOURNAL_BODIES=false: metadata only
    statuses = sorted({r["status"] for r in rows})
    assert statuses == [200, 400, 404]
    assert "Journal database unavailable" in first.log_text()
    assert "Journal database is back" in first.log_text()
