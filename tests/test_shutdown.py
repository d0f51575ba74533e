"""SIGTERM with requests in flight: the server stops accepting, lets them finish, journals them, then exits."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import Server, kodify_proxy, upstreams_yaml

IN_FLIGHT = 12


def send_all(proxy: Server, results: list[int | str]) -> list[threading.Thread]:
    """Half lane completions, half LiteLLM chats, each taking 2 s upstream."""

    def one(i: int) -> None:
        body: dict[str, Any]
        if i % 2:
            path, body = "/v1/completions", {"model": "fake-model", "prompt": f"DRIP:2 lane {i}"}
        else:
            path = "/v1/chat/completions"
            body = {"model": "fake-model", "messages": [{"role": "user", "content": f"DRIP:2 chat {i}"}]}
        try:
            results[i] = httpx.post(proxy.url + path, json=body, timeout=30).status_code
        except httpx.HTTPError as exc:
            results[i] = type(exc).__name__

    threads = [threading.Thread(target=one, args=(i,)) for i in range(IN_FLIGHT)]
    for thread in threads:
        thread.start()
    return threads


def test_sigterm_lets_requests_in_flight_finish_and_journals_them(tmp_path: Path, upstream: Server) -> None:
    journal = tmp_path / "journal.db"
    env = {
        "LOGS": "True",
        "KODIFY_JOURNAL_URL": f"sqlite:///{journal}",
        "RUN_MIGRATIONS": "1",
        "KODIFY_SHUTDOWN_GRACE": "15",
    }
    proxy = kodify_proxy(tmp_path, upstreams_yaml(upstream.url), env=env, name="sigterm").start()
    results: list[int | str] = [0] * IN_FLIGHT
    before = int(httpx.get(upstream.url + "/_count", params={"contains": "DRIP:2"}).json())
    threads = send_all(proxy, results)
    deadline = time.monotonic() + 10
    while int(httpx.get(upstream.url + "/_count", params={"contains": "DRIP:2"}).json()) < before + IN_FLIGHT:
        assert time.monotonic() < deadline, "the requests did not reach the upstream"
        time.sleep(0.05)
    assert proxy.process is not None  # every request is in flight at the upstream now
    os.kill(proxy.process.pid, signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):  # no new connections once the signal is in
        httpx.get(proxy.url + "/health", timeout=2)
    for thread in threads:
        thread.join(30)
    assert results == [200] * IN_FLIGHT, results
    assert proxy.wait_exit(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT route, status FROM kodify_journal").fetchall()
    assert sorted(rows) == sorted([("/v1/chat/completions", 200)] * 6 + [("/v1/completions", 200)] * 6)
    log = proxy.log_text()
    assert "Journal flushed: 12 rows stored this run" in log and "Traceback" not in log


def test_connections_open_before_sigterm_are_served_not_reset(tmp_path: Path, upstream: Server) -> None:
    """A client that connected before the signal but had not sent its request yet (or whose request the server had
    not read yet) gets its answer, on a connection then closed: closing it at once would reset it."""
    proxy = kodify_proxy(tmp_path, upstreams_yaml(upstream.url), name="drain").start()
    body = b'{"model": "fake-model", "prompt": "drain"}'
    request = (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    clients = [socket.create_connection(("127.0.0.1", proxy.port), timeout=10) for _ in range(3)]
    time.sleep(0.2)  # accepted by the server, idle
    assert proxy.process is not None
    os.kill(proxy.process.pid, signal.SIGTERM)
    time.sleep(0.3)  # the server is shutting down now: no new connections
    with pytest.raises(httpx.ConnectError):
        httpx.get(proxy.url + "/health", timeout=2)
    answers = []
    for client in clients:
        client.sendall(request)
        answers.append(read_until_closed(client))
    for answer in answers:
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower(), answer
        assert b'"text"' in rest
    assert proxy.wait_exit(30) in (0, -signal.SIGTERM)


def read_until_closed(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    client.close()
    return b"".join(chunks)
