"""Real parts for the journal tests: a throwaway PostgreSQL database, a TCP forwarder to cut it off, a slow upstream.

`python -m tests.journal_support slow-upstream --port P` serves `slow-model`, whose streamed chat answer sends
one chunk every 0.2 s (20 chunks), so a client can leave mid-stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from kodify_proxy.journal.record import JournalRow
from tests.servers import Server, free_port

SLOW_MODEL = "slow-model"


@contextlib.contextmanager
def fresh_database(base_url: str, prefix: str = "kodify_journal_test") -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of `base_url` (dropped afterwards); yields its URL."""
    url = make_url(base_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def via_port(url: str, port: int) -> str:
    """`url` with its port replaced (to go through a TcpForwarder)."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def fill_journal(url: str, rows: Sequence[JournalRow]) -> None:
    """Migrate the journal at `url` to head and store `rows` in it."""
    from kodify_proxy.database import parse_url
    from kodify_proxy.journal.database import journal_engine
    from kodify_proxy.journal.migrate import upgrade
    from kodify_proxy.journal.writer import JournalStore

    upgrade(parse_url(url))
    engine = journal_engine(parse_url(url))
    try:
        JournalStore(engine).insert(rows)
    finally:
        engine.dispose()


@contextlib.contextmanager
def filled_journal(kind: str, rows: Sequence[JournalRow], database_url: str, folder: Path) -> Iterator[str]:
    """A journal holding `rows`: a fresh PostgreSQL database (`kind` "postgresql") or an SQLite file in `folder`."""
    if kind == "sqlite":
        url = f"sqlite:///{folder / 'journal.db'}"
        fill_journal(url, rows)
        yield url
        return
    with fresh_database(database_url) as url:
        fill_journal(url, rows)
        yield url


def journal_rows(url: str, order: str = "started_at") -> list[dict[str, Any]]:
    """Every row of kodify_journal."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            result = connection.execute(sa.text(f"SELECT * FROM kodify_journal ORDER BY {order}"))
            return [dict(row) for row in result.mappings()]
    finally:
        engine.dispose()


def wait_for_rows(url: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Poll until the journal holds at least `count` rows; the rows."""
    deadline = time.monotonic() + timeout
    rows = journal_rows(url)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = journal_rows(url)
    return rows


class TcpForwarder:
    """Forwards 127.0.0.1:port to a target; `stop()` refuses new and cuts live connections, `start()` restores."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> TcpForwarder:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._thread is not None:
            self._thread.join(2)
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def slow_upstream(tmp: Path) -> Server:
    """The slow streaming upstream process (not started)."""
    port = free_port()
    args = [sys.executable, "-m", "tests.journal_support", "slow-upstream", "--port", str(port)]
    return Server(f"slow-upstream:{port}", args, port, tmp / f"slow-upstream-{port}.log", ready_path="/v1/models")


def _slow_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": SLOW_MODEL, "object": "model", "owned_by": "vllm"}]})

    async def chat(request: Request) -> Response:
        body = await request.json()

        async def chunks() -> Any:
            for index in range(20):
                delta = {"role": "assistant", "content": f"w{index} "}
                chunk = {
                    "id": "chatcmpl-slow",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(0.2)
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["slow-upstream"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(_slow_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
