"""End-to-end tier: a real vLLM server on the CPU (tiny generated model) and kodify-proxy in front of it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import REPO, Server, free_port, kodify_proxy, upstreams_yaml

SERVED_MODEL = "tiny"


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real vLLM OpenAI server serving the tiny model as `tiny` (started once per session)."""
    workdir = tmp_path_factory.mktemp("vllm")
    port = free_port()
    started = subprocess.run(
        [
            "bash",
            str(REPO / "scripts/vllm-serve.sh"),
            "--port",
            str(port),
            "--workdir",
            str(workdir),
            "--served-model-name",
            SERVED_MODEL,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if started.returncode != 0:
        raise RuntimeError(f"vLLM did not start:\n{started.stderr[-4000:]}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(
            ["bash", str(REPO / "scripts/vllm-stop.sh"), "--workdir", str(workdir)], timeout=120, check=False
        )


def _preprocessing_env() -> dict[str, str]:
    qwen = REPO / "preprocess_configs" / "qwen.json"
    return {"COMPLETIONS_PREPROCESSING_CONFIG": str(qwen)} if qwen.exists() else {}


@pytest.fixture(scope="session")
def vllm_proxy(tmp_path_factory: pytest.TempPathFactory, vllm: str) -> Iterator[Server]:
    """kodify-proxy (dummy auth, MAX_N=4) in front of the real vLLM server."""
    tmp: Path = tmp_path_factory.mktemp("vllm-proxy")
    server = kodify_proxy(tmp, upstreams_yaml(vllm), env={"MAX_N": "4", **_preprocessing_env()}, name="vllm-proxy")
    server.start()
    yield server
    server.stop()
