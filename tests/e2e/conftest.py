"""End-to-end tier: a real vLLM server on the CPU (tiny generated model) and kodify-proxy in front of it."""

from __future__ import annotations

import contextlib
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.journal_support import fresh_database
from tests.servers import REPO, Server, free_port, kodify_proxy, upstreams_yaml

SERVED_MODEL = "tiny"


@contextlib.contextmanager
def real_vllm(workdir: Path, *vllm_args: str) -> Iterator[str]:
    """A real vLLM OpenAI server (scripts/vllm-serve.sh) serving the tiny model as `tiny`, with `vllm_args` added;
    its base URL. Stopped (scripts/vllm-stop.sh) on the way out."""
    command = ["bash", str(REPO / "scripts/vllm-serve.sh"), "--port", str(free_port()), "--workdir", str(workdir)]
    command += ["--served-model-name", SERVED_MODEL, *(["--", *vllm_args] if vllm_args else [])]
    started = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        raise RuntimeError(f"vLLM did not start:\n{started.stderr[-4000:]}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(
            ["bash", str(REPO / "scripts/vllm-stop.sh"), "--workdir", str(workdir)], timeout=120, check=False
        )


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real vLLM OpenAI server serving the tiny model as `tiny` (started once per session)."""
    with real_vllm(tmp_path_factory.mktemp("vllm")) as url:
        yield url


def _preprocessing_env() -> dict[str, str]:
    qwen = REPO / "preprocess_configs" / "qwen.json"
    return {"COMPLETIONS_PREPROCESSING_CONFIG": str(qwen)} if qwen.exists() else {}


class ResponseCounter:
    """Every response the e2e clients get, by server: its request id (x-litellm-call-id) and status. The journal must
    hold one row for each."""

    def __init__(self) -> None:
        self.by_base: defaultdict[str, dict[str, int]] = defaultdict(dict)

    def hook(self, response: httpx.Response) -> None:
        base = f"{response.url.scheme}://{response.url.host}:{response.url.port}"
        self.by_base[base][response.headers.get("x-litellm-call-id", "")] = response.status_code

    def http_client(self) -> httpx.Client:
        """An httpx client for the `openai` SDK (`http_client=`) that counts its responses."""
        return httpx.Client(timeout=60, event_hooks={"response": [self.hook]})


@pytest.fixture(scope="session")
def sent() -> ResponseCounter:
    return ResponseCounter()


@pytest.fixture(scope="session")
def journal_url(database_url: str) -> Iterator[str]:
    """An empty PostgreSQL database for the e2e proxy's request journal."""
    with fresh_database(database_url, prefix="kodify_e2e_journal") as url:
        yield url


@pytest.fixture(scope="session")
def vllm_proxy(tmp_path_factory: pytest.TempPathFactory, vllm: str, journal_url: str) -> Iterator[Server]:
    """kodify-proxy (dummy auth, MAX_N=4, LOGS=True into `journal_url`) in front of the real vLLM server."""
    tmp: Path = tmp_path_factory.mktemp("vllm-proxy")
    journal = {"LOGS": "True", "KODIFY_JOURNAL_URL": journal_url, "RUN_MIGRATIONS": "1"}
    env = {"MAX_N": "4", **journal, **_preprocessing_env()}
    server = kodify_proxy(tmp, upstreams_yaml(vllm), env=env, name="vllm-proxy")
    server.start()
    yield server
    server.stop()


LONG_CONTEXT = 2048


@pytest.fixture(scope="session")
def long_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM server like `vllm`, with the tiny model's whole context (LONG_CONTEXT tokens): Continue's `cn`
    system prompt alone is ~570 tokens of the tiny model, more than `vllm`'s 512."""
    with real_vllm(tmp_path_factory.mktemp("vllm-long"), "--max-model-len", str(LONG_CONTEXT)) as url:
        yield url
