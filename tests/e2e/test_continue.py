"""Continue's real CLI `cn` (npm @continuedev/cli) with docs/clients.md's config.yaml, through kodify-proxy (one shared
token, journal on) to a real vLLM server started by scripts/vllm-serve.sh, so with its default tool calling flags:
`cn` sends `tools` with every chat, which vLLM refuses without them.

`cn` asks api.continue.dev for its latest version at start (and, with autoupdate on, would `npm i -g` a newer one);
with a resolver that does not answer, that alone keeps it waiting ~10 s. So it runs in a network namespace of its
own (`unshare -rn`), where only loopback exists and every other address fails at once; 127.0.0.1:<proxy port> there
is a relay to kodify-proxy through a Unix socket (filesystem sockets are shared across network namespaces).
`python -m tests.e2e.test_continue SOCKET PORT COMMAND...` is that relay's inside half.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import SERVED_MODEL
from tests.journal_support import fresh_database, journal_rows, wait_for_rows
from tests.servers import REPO, Server, kodify_proxy, upstreams_yaml
from tests.test_clients_doc import client_config

pytestmark = pytest.mark.e2e

TOKEN = "sk-kodify-e2e-continue-token"
CN_TIMEOUT = 180
# Test-only additions to the documented chat entry: greedy (the random model never emits an end token then, so the
# answer is not empty) and short.
TEST_OPTIONS = {"temperature": 0, "presencePenalty": 2, "frequencyPenalty": 2, "maxTokens": 24}


# --- the relay between cn's network namespace and ours ----------------------------------------------------------


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Both directions of one connection; both sockets closed when both are done."""
    with client, upstream:
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()


def relay_connections(listener: socket.socket, connect: Callable[[], socket.socket]) -> None:
    """Accept on `listener` until it is shut down; pipe each connection to a new `connect()`, both ways."""
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = connect()
        except OSError:
            client.close()
            return
        threading.Thread(target=_relay, args=(client, upstream), daemon=True).start()


@contextlib.contextmanager
def unix_socket_to(port: int, path: Path) -> Iterator[None]:
    """A Unix socket at `path` whose connections go to 127.0.0.1:`port` (this side of the namespace)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    connect = lambda: socket.create_connection(("127.0.0.1", port))  # noqa: E731
    thread = threading.Thread(target=relay_connections, args=(listener, connect), daemon=True)
    thread.start()
    try:
        yield
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        listener.close()
        thread.join(5)


def bring_loopback_up() -> None:
    """`ip link set lo up` without iproute2: a new network namespace starts with its loopback down."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def main() -> None:
    """Inside the namespace: 127.0.0.1:PORT relayed to the Unix socket SOCKET, then COMMAND; exits with its status."""
    path, port, *command = sys.argv[1:]
    bring_loopback_up()
    listener = socket.create_server(("127.0.0.1", int(port)))

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return sock

    threading.Thread(target=relay_connections, args=(listener, connect), daemon=True).start()
    sys.exit(subprocess.run(command).returncode)


def run_offline(command: list[str], port: int, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `command` where only 127.0.0.1:`port` (kodify-proxy) is reachable; its output, or a timeout error."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode != 0:
        raise RuntimeError(
            "cn runs in a network namespace of its own: `unshare -rn` (util-linux, unprivileged "
            "user namespaces) must work on this machine"
        )
    path = cwd / "kodify-proxy.sock"
    inside = [unshare, "-rn", sys.executable, "-m", "tests.e2e.test_continue", str(path), str(port), *command]
    with unix_socket_to(port, path):
        process = subprocess.Popen(
            inside,
            cwd=cwd,
            env={**env, "PYTHONPATH": str(REPO)},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=CN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(f"cn did not finish in {CN_TIMEOUT} s:\n{stdout}\n{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(inside, process.returncode, stdout, stderr)


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cn() -> Path:
    """scripts/continue-cli.sh: the pinned CLI from npm in the cache dir (installed once); its dist/cn.js."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts/continue-cli.sh")], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise RuntimeError(f"installing @continuedev/cli failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def continue_journal(database_url: str) -> Iterator[str]:
    with fresh_database(database_url, prefix="kodify_e2e_continue") as url:
        yield url


@pytest.fixture(scope="module")
def continue_proxy(tmp_path_factory: pytest.TempPathFactory, long_vllm: str, continue_journal: str) -> Iterator[Server]:
    """kodify-proxy with one shared token, journaling into `continue_journal`, in front of `long_vllm`."""
    tmp = tmp_path_factory.mktemp("continue-proxy")
    env = {"VLLM_API_KEY": TOKEN, "LOGS": "True", "KODIFY_JOURNAL_URL": continue_journal, "RUN_MIGRATIONS": "1"}
    server = kodify_proxy(tmp, upstreams_yaml(long_vllm), env=env, name="continue-proxy").start()
    yield server
    server.stop()


def continue_config(proxy: Server) -> dict[str, Any]:
    """docs/clients.md's config.yaml for `proxy`, the chat entry made greedy and short (TEST_OPTIONS)."""
    values = {"<kodify-proxy>": proxy.url, "<token>": TOKEN, "<model>": SERVED_MODEL, "<embedding-model>": SERVED_MODEL}
    config: dict[str, Any] = yaml.safe_load(client_config("continue config.yaml", values))
    chat = next(model for model in config["models"] if "chat" in model["roles"])
    chat["defaultCompletionOptions"] = TEST_OPTIONS
    return config


# --- the test ----------------------------------------------------------------------------------------------------


def test_cn_answers_through_kodify_proxy_from_vllm(
    cn: Path, continue_proxy: Server, continue_journal: str, long_vllm: str, tmp_path: Path
) -> None:
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(continue_config(continue_proxy), sort_keys=False))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "CONTINUE_CLI_ENABLE_TELEMETRY": "0",
        "CONTINUE_METRICS_ENABLED": "0",
        "CONTINUE_CLI_AUTO_UPDATED": "1",  # never `npm i -g @continuedev/cli` (its autoupdate)
        "NODE_NO_WARNINGS": "1",
    }
    command = ["node", str(cn), "-p", "Write a Python function that adds two numbers.", "--config", str(config)]
    result = run_offline([*command, "--readonly"], continue_proxy.port, workspace, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), result.stderr[-3000:]

    rows = wait_for_rows(continue_journal, 1)
    chats = [row for row in rows if row["route"] == "/v1/chat/completions"]
    assert len(chats) == 1, [(row["route"], row["status"]) for row in rows]
    (chat,) = chats
    assert (chat["status"], chat["stream"], chat["model"]) == (200, True, SERVED_MODEL)
    assert chat["upstream"] and chat["upstream"].startswith(long_vllm)
    assert chat["completion_tokens"] >= 1
    sent = json.loads(chat["request_body"])
    assert sent["tools"] and sent["stream"] is True  # what vLLM refuses without tool calling
    assert {(m["role"], m["content"]) for m in sent["messages"]} >= {("user", command[3])}
    # cn took the config's `data:` block (config-yaml's schema checks it: a bad one stops cn), and sends no dev data:
    # only core/data/log.ts's DataLogger does, in the IDE extensions (cn 1.5.47's bundle has no logDevData, and
    # extensions/cli never calls it). tests/test_dev_data.py posts the IDE's events as log.ts builds them.
    time.sleep(2)  # a fire-and-forget POST cn might have made would be journaled by now
    assert [row["route"] for row in journal_rows(continue_journal) if "dev-data" in row["route"]] == []


if __name__ == "__main__":
    main()
