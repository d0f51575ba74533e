"""One `serve` on one listening address: its own directory under the state directory, claimed for the server's life.

Servers of one user on one machine share the state directory (the generated master key, the SQLite journal), but a
server's worker slots, metrics files, journal spools, LiteLLM config and upstream board are its own, in
`<state dir>/instances/<host>-<port>@<hostname>`, so two of them with default settings both run. The machine's name is
part of it because containers have their own: replicas of one image sharing one state volume (`docker compose up
--scale`) each listen on 0.0.0.0:8000 in their own network, and are different servers. What a server cannot share with
another (its address, that directory, an explicit spool directory) is claimed before anything else is done and before
any worker forks: a second server there stops at once with one line naming the setting and the fix (exit status 2).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kodify_proxy.errors import InstanceConflict, StartupError
from kodify_proxy.settings import Settings

INSTANCES: Final = "instances"
LOCK_NAME: Final = "instance.lock"  # held by the arbiter (or the one process), inherited by its workers
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")


def instance_name(host: str, port: int, machine: str | None = None) -> str:
    """The directory name of the server on `host`:`port` of `machine` (this one's hostname): IPv6 colons (and anything
    else a path should not hold) become `_`, e.g. `0.0.0.0-8000@box`, `__1-8000@box` for ::1."""
    return f"{_safe(host)}-{port}@{_safe(socket.gethostname() if machine is None else machine)}"


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text) or "_"


def render_address(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Instance:
    """Where one server's own state lives, and the locks it holds for its life (kept open: closing them frees them)."""

    host: str
    port: int
    directory: Path
    held: list[int] = field(default_factory=list, compare=False, repr=False)

    @property
    def address(self) -> str:
        """The listening address as logs and messages write it."""
        return render_address(self.host, self.port)

    @property
    def workers_dir(self) -> Path:
        """The worker slots' lock files (`serve --workers N`)."""
        return self.directory / "workers"

    @property
    def metrics_dir(self) -> Path:
        """PROMETHEUS_MULTIPROC_DIR of `serve --workers N`, emptied at each start."""
        return self.directory / "metrics"

    @property
    def litellm_config(self) -> Path:
        """The LiteLLM config this server renders and its workers (replacements too) load."""
        return self.directory / "litellm_config.yaml"

    def hold(self, lock: Path, refusal: str) -> None:
        """Take `lock` for this server's life; InstanceConflict(`refusal`, naming the holder) when another has it."""
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            raise InstanceConflict(refusal.format(holder=f" ({holder})" if holder else "")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, serving {self.address}\n".encode(), 0)
        self.held.append(fd)

    def release(self) -> None:
        """Let the locks go (the process's exit does it too)."""
        while self.held:
            os.close(self.held.pop())


def locate(settings: Settings, host: str, port: int) -> Instance:
    """The instance of `host`:`port` under the state directory (nothing claimed or created)."""
    return Instance(host, port, settings.resolved_state_dir() / INSTANCES / instance_name(host, port))


def claim_instance(settings: Settings, host: str, port: int) -> Instance:
    """The instance directory created and locked, and the address free: else one line naming the setting to change."""
    instance = locate(settings, host, port)
    try:
        instance.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(
            f"KODIFY_STATE_DIR: cannot create {instance.directory} ({exc.strerror}); set KODIFY_STATE_DIR to a "
            "directory this user can write"
        ) from None
    instance.hold(
        instance.directory / LOCK_NAME,
        f"--port {port}: another kodify-proxy{{holder}} runs on {instance.address} with this state directory "
        f"({instance.directory}); stop it, or give this server another --port",
    )
    try:
        probe_address(host, port)
    except InstanceConflict:
        instance.release()
        raise
    return instance


def probe_address(host: str, port: int) -> None:
    """InstanceConflict when something listens on `host`:`port` already. The workers bind with SO_REUSEPORT, which
    the kernel lets any process of the same user share: a second server there would silently take half of the first
    one's connections. This test bind has no SO_REUSEPORT, so anything bound there refuses it. Other bind errors (a
    privileged port, an address not on this machine) are left to the server's own bind, which names them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn and gunicorn choose
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server: TIME_WAIT leftovers don't count
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return
            raise InstanceConflict(
                f"--port {port}: {render_address(host, port)} is already in use by another process; stop it, or give "
                "this server another --port (or --host)"
            ) from None


@contextmanager
def stopped_siblings(instance: Instance) -> Iterator[list[Path]]:
    """The other instance directories of the state directory whose server is not running, each locked meanwhile (so
    none starts there while it is used): what a stopped server left, such as spooled journal rows, is taken over."""
    taken: list[tuple[Path, int]] = []
    parent = instance.directory.parent
    try:
        for sibling in sorted(parent.iterdir()) if parent.is_dir() else []:
            if sibling == instance.directory or not sibling.is_dir():
                continue
            fd = os.open(sibling / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its server runs
                os.close(fd)
                continue
            taken.append((sibling, fd))
        yield [sibling for sibling, _ in taken]
    finally:
        for _, fd in taken:
            os.close(fd)
