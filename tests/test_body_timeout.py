"""KODIFY_BODY_TIMEOUT: a client that stalls mid-request gets a 408 and its connection closed, while everyone else is
served. A real kodify-proxy journaling into a real PostgreSQL, raw sockets for the stalled clients; and
`asgi.read_body` in process, against a receive that never finishes."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from io import BufferedReader
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive

from kodify_proxy.asgi import read_body
from kodify_proxy.errors import RequestTimeout
from kodify_proxy.settings import SettingsError, load_settings
from tests.journal_support import SLOW_MODEL, fresh_database, journal_rows
from tests.servers import Server, kodify_proxy, upstreams_yaml

TIMEOUT = 2  # KODIFY_BODY_TIMEOUT of the proxy below; below uvicorn's 5 s keep-alive, so a keep-alive test can idle
CLOSED_WITHIN = TIMEOUT + 5
COMPLETION = {"model": "fake-model", "prompt": "def add(a, b):", "max_tokens": 4}
STALLED_BODY = (  # then 8 bytes of the 1000 promised
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
)
STALLED_HEADERS = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty"
MODELS = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def timed(
    tmp_path_factory: pytest.TempPathFactory, upstream: Server, slow: Server, database_url: str
) -> Iterator[tuple[Server, str]]:
    """The proxy in front of the fake and slow upstreams with KODIFY_BODY_TIMEOUT=2, journaling into an empty
    database."""
    with fresh_database(database_url) as url:
        env = {
            "KODIFY_BODY_TIMEOUT": str(TIMEOUT),
            "LOGS": "True",
            "KODIFY_JOURNAL_URL": url,
            "RUN_MIGRATIONS": "1",
            "KODIFY_JOURNAL_FLUSH_INTERVAL": "0.05",
        }
        tmp = tmp_path_factory.mktemp("body-timeout")
        server = kodify_proxy(tmp, upstreams_yaml(upstream.url, slow.url), env=env, name="body-timeout").start()
        yield server, url
        server.stop()


def connect(server: Server, sent: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=CLOSED_WITHIN)
    sock.sendall(sent)
    return sock


def read_response(reader: BufferedReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length or chunked): status, headers (lowercase names), body."""
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") != "chunked":
        return status, headers, reader.read(int(headers["content-length"]))
    body = b""
    while size := int(reader.readline(), 16):
        body += reader.read(size + 2)[:-2]  # each chunk ends with CRLF
    reader.readline()
    return status, headers, body


def answer_then_close(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The one response the server sends, after which it must close the socket (recv gives b"", not a timeout)."""
    with sock, sock.makefile("rb") as reader:
        status, headers, body = read_response(reader)
        assert reader.read() == b""
    return status, headers, json.loads(body)


def timeout_error(what: str, param: str | None) -> dict[str, Any]:
    message = f"The request {what} did not arrive within {TIMEOUT} s (KODIFY_BODY_TIMEOUT); send the whole "
    message += "body at once" if what == "body" else "request at once"
    return {"error": {"message": message, "type": "timeout_error", "param": param, "code": "request_timeout"}}


def test_stalled_clients_get_a_408_and_are_closed_while_others_are_served(timed: tuple[Server, str]) -> None:
    server, url = timed
    started = time.monotonic()
    stalled_bodies = [connect(server, STALLED_BODY + b'{"model"') for _ in range(20)]
    stalled_headers = [connect(server, STALLED_HEADERS) for _ in range(20)]

    assert httpx.post(server.url + "/v1/completions", json=COMPLETION, timeout=30).status_code == 200
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 200

    request_ids = set()
    for sock in stalled_bodies:
        status, headers, body = answer_then_close(sock)
        assert (status, headers["connection"], body) == (408, "close", timeout_error("body", None))
        request_ids.add(headers["x-litellm-call-id"])
    for sock in stalled_headers:
        status, headers, body = answer_then_close(sock)
        assert (status, headers["connection"], body) == (408, "close", timeout_error("headers", "request"))
        assert "x-litellm-call-id" not in headers  # no request ever began: nothing to journal
    assert time.monotonic() - started < CLOSED_WITHIN  # a bound, not a speed: the clock starts at connect

    # Every stalled body is one journal row with its 408; stalled headers have no route, so no row.
    rows = wait_for_408_rows(url, len(request_ids))
    assert {row["request_id"] for row in rows} == request_ids
    assert {(row["route"], row["error_type"]) for row in rows} == {("/v1/completions", "timeout_error")}


def wait_for_408_rows(url: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = [row for row in journal_rows(url) if row["status"] == 408]
    return rows


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(timed: tuple[Server, str]) -> None:
    with connect(timed[0], b"") as sock:
        assert sock.recv(65536) == b""  # a browser's preconnect must not find a stray 408 there


def test_keep_alive_and_pipelining_still_work(timed: tuple[Server, str]) -> None:
    with connect(timed[0], MODELS + MODELS) as sock, sock.makefile("rb") as reader:
        assert [read_response(reader)[0] for _ in range(2)] == [200, 200]
        time.sleep(TIMEOUT * 1.5)  # idle between requests: uvicorn's keep-alive timer's business, not ours
        sock.sendall(MODELS)
        assert read_response(reader)[0] == 200


def test_stalled_headers_pipelined_behind_a_long_response_wait_for_it_whole(timed: tuple[Server, str]) -> None:
    chat = json.dumps({"model": SLOW_MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(chat)
    with connect(timed[0], head + chat + STALLED_HEADERS) as sock:
        with sock.makefile("rb") as reader:
            status, _, stream = read_response(reader)  # 20 chunks 0.2 s apart: longer than the timeout
            assert status == 200 and b'"w19 "' in stream and stream.endswith(b"data: [DONE]\n\n")
        status, headers, body = answer_then_close(sock)
    assert (status, headers["connection"], body) == (408, "close", timeout_error("headers", "request"))


# --- asgi.read_body in process -----------------------------------------------------------------------------------


def trickling(chunks: int) -> Receive:
    """A receive giving `chunks` one-byte chunks 10 ms apart, then the rest of the body; -1: never the rest."""
    sent = 0

    async def receive() -> Message:
        nonlocal sent
        await asyncio.sleep(0.01)
        sent += 1
        return {"type": "http.request", "body": b"x", "more_body": chunks < 0 or sent < chunks}

    return receive


def test_read_body_bounds_the_whole_body_from_the_start_of_reading_not_each_chunk() -> None:
    assert asyncio.run(read_body(trickling(3), 1024, 5.0)) == b"xxx"
    with pytest.raises(RequestTimeout) as caught:
        asyncio.run(read_body(trickling(-1), 1024, 0.2))
    assert caught.value.message == (
        "The request body did not arrive within 0.2 s (KODIFY_BODY_TIMEOUT); send the whole body at once"
    )
    assert caught.value.headers == {"connection": "close"}


def test_the_setting_is_read_and_validated() -> None:
    assert load_settings({}).body_timeout == 30.0
    assert load_settings({"KODIFY_BODY_TIMEOUT": "0.5"}).body_timeout == 0.5
    with pytest.raises(SettingsError) as caught:
        load_settings({"KODIFY_BODY_TIMEOUT": "0"})
    assert caught.value.problems == [
        "KODIFY_BODY_TIMEOUT='0' is invalid (Input should be greater than 0); accepted: seconds > 0 a client may "
        "take to send a request's headers, then its body"
    ]
