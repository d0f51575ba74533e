"""The Compose tier: the deployment as administrators run it (compose.yaml with deploy/compose.cpu.yaml, the images
built from the repository's Dockerfiles) on a real Docker engine; what it measured is printed at the end of the run."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compose.cache import CACHE
from tests.compose.engine import docker, docker_engine, image_exists
from tests.compose.images import Images, prepare_images
from tests.compose.project import Project
from tests.measured import MEASURED
from tests.servers import REPO

TOKEN = f"sk-compose-{secrets.token_hex(8)}"
PASSWORD = secrets.token_hex(12)
SERVED_MODEL = "tiny"


class Report:
    """What the tier measured, in the order it happened, for the summary at the end of the run (tests/measured.py)."""

    def add(self, line: str) -> None:
        MEASURED.add("Compose tier (tests/compose)", line)


REPORT = Report()


TIER_STARTED: list[float] = []  # when the engine fixture began: the tier's first step


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Docker engine: the machine's, or a dockerd started for the tier (and stopped after it)."""
    TIER_STARTED.append(time.monotonic())
    with docker_engine(tmp_path_factory.mktemp("dockerd") / "dockerd.log") as ours:
        REPORT.add(f"engine: {'dockerd started for the tier' if ours else 'the running dockerd'}")
        yield


def tiny_model() -> Path:
    """The generated tiny model's directory (scripts/make_tiny_model.py, as scripts/vllm-serve.sh makes it)."""
    venv = subprocess.run(
        ["bash", str(REPO / "scripts/vllm-env.sh")], capture_output=True, text=True, timeout=1800, check=True
    ).stdout.split()[-1]
    command = [f"{venv}/bin/python", str(REPO / "scripts/make_tiny_model.py"), str(CACHE.parent / "models/tiny-qwen2")]
    return Path(subprocess.run(command, capture_output=True, text=True, timeout=600, check=True).stdout.split()[-1])


def guide_env(images: Images, model: Path) -> dict[str, str]:
    """The ENV file for the run, as the guide writes it: one shared token, the journal on in compose's PostgreSQL."""
    return {
        "GPUUTIL": "0.9",
        "MTSAI_AUTH": "False",
        "VLLM_API_KEY": TOKEN,
        "MAX_N": "10",
        "COMPLETIONS_PREPROCESSING_CONFIG": "preprocess_configs/qwen.json",
        "LOGS": "True",
        "LOGS_DB_HOST": "postgres",
        "LOGS_DB_PORT": "5432",
        "LOGS_DB_NAME": "kodify",
        "LOGS_DB_USERNAME": "kodify",
        "LOGS_DB_PASSWORD": PASSWORD,
        "RUN_MIGRATIONS": "1",
        "POSTGRES_PASSWORD": PASSWORD,
        "WAIT_VLLM_ATTEMPTS": "150",
        "WAIT_VLLM_TIMEOUT": "2",
        "MODELS_DIR": str(model.parent),
        "MODEL": f"/models/{model.name}",
        "SERVED_MODEL_NAME": SERVED_MODEL,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "KODIFY_IMAGE": images.kodify.name,
        "VLLM_CPU_IMAGE": images.vllm.name,
        "POSTGRES_IMAGE": images.postgres.name,
        "COMPOSE_PROFILES": "auth-${AUTH_TYPE:-NO},logs-${LOGS:-False}",
    }


@pytest.fixture(scope="session")
def images(engine: None) -> Iterator[Images]:
    """The run's images; the project's own is removed afterwards (the kept ones stay, by their digests)."""
    run = f"kodify-test-{secrets.token_hex(4)}"
    tag = f"{run}/kodify-proxy:0.1.0"
    try:
        built = prepare_images(run, tag)
        REPORT.add("images:")
        for line in built.describe():
            REPORT.add(f"  {line}")
        yield built
    finally:
        if image_exists(tag):
            docker("rmi", tag)


@pytest.fixture(scope="module")
def deployment(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The deployment, started with `docker compose up -d` and healthy; taken down with its volumes afterwards."""
    project = Project.lay_out(tmp_path_factory.mktemp("compose") / "kodify", images.kodify.name.split("/")[0])
    project.write_env(guide_env(images, tiny_model()))
    try:
        REPORT.add(f"up -d to every service healthy: {project.up()}")
        yield project
    finally:
        project.down()
        REPORT.add(f"tier duration: {time.monotonic() - TIER_STARTED[0]:.0f} s (engine, images, runs and cleanup)")
        assert project.leftovers() == {}
