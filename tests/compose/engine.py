"""The Docker engine of the Compose tier: the one that answers on this machine, or a `dockerd` the tier starts (and
stops afterwards) when none runs. `docker` and the image builds run as subprocesses of the Docker CLI."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

# The legacy builder: Debian's docker.io has no buildx, and builds then run RUN steps on a network of the test's own.
BUILD_ENV = {"DOCKER_BUILDKIT": "0"}
ENGINE_START_TIMEOUT = 90
INSTALL_HINT = "install Debian's docker.io (scripts/bootstrap.sh does, as root)"


class DockerError(RuntimeError):
    """A docker command failed; the message has its command line and the end of its output."""


def run(
    command: Sequence[str], timeout: float = 600, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str:
    """Run `command`; its stdout. A non-zero exit raises DockerError with the last of its output."""
    try:
        result = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd
        )
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"{' '.join(command)}: no answer after {timeout} s") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        raise DockerError(f"{' '.join(command)}: exit status {result.returncode}\n{output}")
    return result.stdout


def docker(*args: str, timeout: float = 600, env: Mapping[str, str] | None = None) -> str:
    """`docker ARGS`; its stdout."""
    return run(["docker", *args], timeout=timeout, env=env)


def engine_answers() -> bool:
    """Whether a Docker engine answers the CLI (the server's version is only known when one does)."""
    probe = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=30
    )
    return probe.returncode == 0 and bool(probe.stdout.strip())


def _require_tools() -> str:
    """The dockerd binary, after making sure this machine can start one; a clear error naming the fix otherwise."""
    missing = [tool for tool in ("docker", "dockerd") if shutil.which(tool) is None]
    if missing:
        raise DockerError(f"no Docker engine runs and {', '.join(missing)} is not installed: {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise DockerError("no Docker engine runs, and only root can start dockerd: run the tests as root")
    return str(shutil.which("dockerd"))


@contextlib.contextmanager
def docker_engine(log_path: Path) -> Iterator[bool]:
    """A Docker engine for the block, and whether it was started for it: the one running (False), else a dockerd
    started now (storage overlay2, its output in `log_path`) and stopped afterwards (True)."""
    if shutil.which("docker") and engine_answers():
        yield False
        return
    dockerd = _require_tools()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [dockerd, "--storage-driver", "overlay2"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_engine(process, log_path)
        yield True
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_for_engine(process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + ENGINE_START_TIMEOUT
    while not engine_answers():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise DockerError(f"dockerd did not start (exit status {process.poll()}); its log ends:\n{tail}")
        time.sleep(0.5)


def image_exists(reference: str) -> bool:
    """Whether the engine has an image of that name (or id)."""
    probe = subprocess.run(["docker", "image", "inspect", reference], capture_output=True, timeout=60)
    return probe.returncode == 0


def image_size(reference: str) -> int:
    """The image's size in bytes, its base layers included."""
    return int(docker("image", "inspect", "--format", "{{.Size}}", reference).strip())


def keep_only(repository: str, tag: str) -> None:
    """Remove every other tag of `repository`: a cache keyed on what it was made from keeps one entry."""
    for other in docker("images", repository, "--format", "{{.Tag}}").split():
        if other != tag:
            docker("rmi", f"{repository}:{other}")
