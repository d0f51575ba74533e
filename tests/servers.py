"""Real server processes for tests: the fake upstream, the kodify-proxy, started and stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`kodify-proxy ARGS` as a subprocess from the repository root, its output captured; `env` is its whole
    environment (None: this process's)."""
    command = [sys.executable, "-m", "kodify_proxy.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A child process serving HTTP on 127.0.0.1:port, its output in `log_path`."""

    name: str
    args: Sequence[str]
    port: int
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    ready_path: str = "/health"
    process: subprocess.Popen[bytes] | None = None
    tls: ssl.SSLContext | None = None  # serves HTTPS: the client context its readiness wait and health() use

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0, expect_ready: bool = True) -> Server:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=REPO,
                start_new_session=True,
            )
        if expect_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                httpx.get(self.url + self.ready_path, timeout=1.0, verify=self.tls or True)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.log_text()[-3000:]}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL: the process dies mid-answer, as a crashed server does."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_workers(self, count: int, timeout: float = 120.0) -> Server:
        """Until `count` worker processes have started (the first answering /health says only that one has: the
        others, still loading, would leave every early connection to it)."""
        deadline = time.monotonic() + timeout
        while self.log_text().count("Application startup complete.") < count:
            assert time.monotonic() < deadline, f"{count} workers did not start:\n{self.log_text()[-3000:]}"
            time.sleep(0.2)
        return self

    @property
    def instance_dir(self) -> Path:
        """This kodify-proxy's own directory in its state dir (slots, metrics, spools, LiteLLM config, board)."""
        from kodify_proxy.instance import INSTANCES, instance_name

        return Path(self.env["KODIFY_STATE_DIR"]) / INSTANCES / instance_name("127.0.0.1", self.port)

    def master_key(self) -> str:
        """The LiteLLM master key a kodify-proxy generated into its state dir."""
        return (Path(self.env["KODIFY_STATE_DIR"]) / "master_key").read_text().strip()

    def health(self) -> dict[str, Any]:
        """GET /health with the master key: the details (upstream URLs and errors, databases)."""
        headers = {"Authorization": f"Bearer {self.master_key()}"}
        body = httpx.get(self.url + "/health", headers=headers, verify=self.tls or True).json()
        assert isinstance(body, dict)
        return body


def fake_upstream(tmp: Path, models: Sequence[str] = ("fake-model",), port: int | None = None) -> Server:
    """A fake OpenAI/vLLM upstream process serving `models` (not started)."""
    port = port or free_port()
    args = [sys.executable, "-m", "tests.fake_upstream", "--port", str(port)]
    for model in models:
        args += ["--model", model]
    return Server(f"fake-upstream:{port}", args, port, tmp / f"fake-upstream-{port}.log")


def kodify_proxy(
    tmp: Path,
    config_text: str,
    env: Mapping[str, str] | None = None,
    name: str = "proxy",
    extra_args: Sequence[str] = (),
    tls: ssl.SSLContext | None = None,
) -> Server:
    """`kodify-proxy serve` with `config_text` as config.yml and a private state dir (not started); with `tls` (a
    client context trusting its certificate) when `env` makes it serve HTTPS."""
    workdir = tmp / name
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(config_text)
    port = free_port()
    base_env = {
        "KODIFY_STATE_DIR": str(workdir / "state"),
        "KODIFY_DISCOVERY_INTERVAL": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONUNBUFFERED": "1",
        # One process per test server (KODIFY_WORKERS defaults to auto): tests/test_workers.py runs the pool.
        "KODIFY_WORKERS": "1",
    }
    args = [
        sys.executable,
        "-m",
        "kodify_proxy.cli",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra_args,
    ]
    env = {**base_env, **(env or {})}
    return Server(name, args, port, workdir / "proxy.log", env=env, ready_path="/health", tls=tls)


def upstreams_yaml(*urls: str, extra: str = "") -> str:
    """A config.yml listing `urls` in the guide's format."""
    lines = ["upstreams:"] + [f"  {url}:" for url in urls]
    return "\n".join(lines) + "\n" + extra
