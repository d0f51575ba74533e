"""Drive the real tabby-agent (npm, 1.5.0) against a server, and record what it sent and what it got back.

tabby-agent 1.5.0 has two stdio modes. `--lsp --stdio` answers `textDocument/completion` but reads its endpoint
and token only from `$HOME/.tabby-client/agent/config.toml` and never posts events; its default JSON-lines mode
(`[id, {"func", "args"}]` per line) exposes `provideCompletions` and `postEvent`, the only 1.5.0 path that sends
`POST /v1/events`. A recording relay between the agent and the server keeps each request's method, path and status.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.servers import REPO
from tests.test_clients_doc import client_config

AGENT_VERSION = "1.5.0"


def install_agent() -> Path:
    """scripts/tabby-agent.sh: the pinned agent from npm in the cache dir (installed once); its cli.js."""
    result = subprocess.run(["bash", str(REPO / "scripts/tabby-agent.sh")], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"installing tabby-agent failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def write_agent_config(home: Path, endpoint: str, token: str | None) -> None:
    """The agent's config file under `home`: docs/clients.md's config.toml for `endpoint` and `token` (the token
    line left out without one), plus debug logs."""
    config = home / ".tabby-client" / "agent" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    text = client_config("tabby-agent config.toml", {"<kodify-proxy>": endpoint, "<token>": token or ""})
    lines = [line for line in text.splitlines() if token or not line.startswith("token =")]
    lines += ["", "[logs]", 'level = "debug"', ""]
    config.write_text("\n".join(lines))


@dataclass(frozen=True)
class Seen:
    """One request the agent made, with the status it got."""

    method: str
    path: str
    status: int
    body: bytes
    answer: bytes
    seconds: float


@dataclass
class RecordingRelay:
    """An HTTP relay on 127.0.0.1 that forwards every request to `target` and records it (a recorder, not a fake)."""

    target: str
    seen: list[Seen] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _client: httpx.Client | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> RecordingRelay:
        relay = self
        client = self._client = httpx.Client(timeout=120)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                hop = ("host", "content-length", "connection", "keep-alive", "transfer-encoding")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                started = time.perf_counter()
                answer = client.request(self.command, relay.target + self.path, headers=headers, content=body)
                seconds = time.perf_counter() - started
                relay.seen.append(Seen(self.command, self.path, answer.status_code, body, answer.content, seconds))
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._client is not None:
            self._client.close()

    def paths(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of everything seen, in order."""
        return [(s.method, s.path, s.status) for s in self.seen]


class _Agent:
    """A tabby-agent child process with `HOME` set to a private directory; stderr (its log) goes to a file."""

    def __init__(self, cli: Path, home: Path, args: list[str]) -> None:
        self.log_path = home / f"agent-{'lsp' if args else 'jsonl'}.stderr"
        env = {**os.environ, "HOME": str(home), "NODE_NO_WARNINGS": "1"}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["node", str(cli), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=home,  # its log rotator writes audit.json into the working directory
                start_new_session=True,
            )
        self.messages: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def stop(self) -> None:
        """End the agent (by its PID) if it has not exited."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for pipe in (self.process.stdin, self.process.stdout):  # the reader thread has seen the end by now
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class LspAgent(_Agent):
    """`tabby-agent --lsp --stdio`: JSON-RPC with Content-Length framing."""

    def __init__(self, cli: Path, home: Path) -> None:
        super().__init__(cli, home, ["--lsp", "--stdio"])
        self._next_id = 0

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b"\n"):
                if not line:
                    return
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.messages.put(json.loads(stream.read(length)))

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self._write(b"Content-Length: %d\r\n\r\n" % len(data) + data)

    def notify(self, method: str, params: Any) -> None:
        """A notification (no answer)."""
        self._send({"method": method, "params": params})

    def request(self, method: str, params: Any, timeout: float = 60) -> Any:
        """A request; answers the agent's own requests (null) while waiting for ours."""
        self._next_id += 1
        wanted = self._next_id
        self._send({"id": wanted, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while True:
            message = self.messages.get(timeout=max(deadline - time.monotonic(), 0.01))
            if "method" in message and "id" in message:
                self._send({"id": message["id"], "result": None})
            elif message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message.get("result")


class JsonLinesAgent(_Agent):
    """tabby-agent's default mode: `[id, {"func": name, "args": [...]}]` per line, answers `[id, result]`."""

    def __init__(self, cli: Path, home: Path) -> None:
        self.noise: list[bytes] = []
        super().__init__(cli, home, [])
        self._next_id = 0

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        for line in stream:
            try:
                self.messages.put(json.loads(line))
            except ValueError:
                self.noise.append(line)  # anything else on stdout (kept for failure messages)

    def call(self, func: str, *args: Any, timeout: float = 60) -> Any:
        """Call agent function `func`; agent events (`[0, {...}]`) are skipped."""
        self._next_id += 1
        wanted = self._next_id
        self._write(json.dumps([wanted, {"func": func, "args": list(args)}]).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            message = self.messages.get(timeout=max(deadline - time.monotonic(), 0.01))
            if message[0] == wanted:
                return message[1]


CLIENT_INFO = {"name": "kodify-e2e", "version": "0.1.0"}


def lsp_complete(
    cli: Path,
    home: Path,
    text: str,
    line: int,
    character: int,
    language: str = "python",
    uri: str = "file:///workspace/demo/fib.py",
    attempts: int = 5,
) -> dict[str, Any]:
    """initialize -> didOpen -> textDocument/completion (until it has items) -> shutdown; the last completion list."""
    agent = LspAgent(cli, home)
    try:
        agent.request(
            "initialize",
            {
                "processId": os.getpid(),
                "rootUri": "file:///workspace/demo",
                "capabilities": {},
                "clientInfo": CLIENT_INFO,
            },
        )
        agent.notify("initialized", {})
        agent.notify(
            "textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}}
        )
        result: dict[str, Any] = {}
        for _ in range(attempts):
            result = agent.request(
                "textDocument/completion",
                {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}},
            )
            if result and result.get("items"):
                break
            time.sleep(0.5)
        agent.request("shutdown", None)
        agent.notify("exit", None)
        agent.process.wait(10)
        return result
    finally:
        agent.stop()


def jsonl_complete_and_post_events(
    cli: Path, home: Path, endpoint: str, token: str | None, text: str, position: int, language: str = "python"
) -> tuple[dict[str, Any], list[bool]]:
    """JSON-lines mode: initialize -> provideCompletions (full context) -> postEvent view, select, dismiss."""
    agent = JsonLinesAgent(cli, home)
    try:
        server: dict[str, Any] = {"endpoint": endpoint, **({"token": token} if token else {})}
        agent.call(
            "initialize",
            {
                "config": {"server": server, "anonymousUsageTracking": {"disable": True}},
                "clientProperties": {"session": {"client": "kodify-e2e"}},
            },
        )
        request = {
            "filepath": "/workspace/demo/fib.py",
            "language": language,
            "text": text,
            "position": position,
            "manually": True,
            "clipboard": "",
            "declarations": [
                {"filepath": "/workspace/demo/util.py", "text": "def helper(x):\n    return x", "offset": 0}
            ],
        }
        completion = agent.call("provideCompletions", request, {"signal": True})
        completion_id = (completion or {}).get("id", "cmpl-none")
        base = {"completion_id": completion_id, "choice_index": 0, "view_id": "view-e2e"}
        posted = [
            agent.call("postEvent", {**base, "type": "view"}),
            agent.call("postEvent", {**base, "type": "select", "select_kind": "line", "elapsed": 1200}),
            agent.call("postEvent", {**base, "type": "dismiss", "elapsed": 300}),
        ]
        agent.call("finalize")
        return completion or {}, posted
    finally:
        agent.stop()
