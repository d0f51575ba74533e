"""deploy/compose.next-edit.yaml through the real Docker Compose `config` (with compose.yaml and .env = .env.example,
as documented), and the vLLM command its entrypoint runs, with bash against a fake `vllm`. The e2e tier serves the
tiny model with the same flags (tests/e2e/test_next_edit.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kodify_proxy.checks import NEXT_EDIT_VARIABLES
from tests.test_deploy import REPO, compose_binary, container_script, run_script

OVERRIDE = "deploy/compose.next-edit.yaml"
CPU_OVERRIDES = ("deploy/compose.cpu.yaml", OVERRIDE, "deploy/compose.next-edit.cpu.yaml")
CPU_KVCACHE = "NEXT_EDIT_CPU_KVCACHE_SPACE"
SPECULATIVE_CONFIG = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
# What the next-edit vLLM runs with beyond the model, its name and its share of the GPU.
NEXT_EDIT_VLLM_FLAGS = [
    "--enable-prefix-caching",
    f"--speculative-config={json.dumps(SPECULATIVE_CONFIG, separators=(',', ':'))}",
]


def next_edit_model(
    tmp: Path, env: Mapping[str, str] | None = None, overrides: tuple[str, ...] = (OVERRIDE,)
) -> dict[str, Any]:
    """`docker compose -f compose.yaml -f OVERRIDE... config` with .env = .env.example plus `env`."""
    project = tmp / "project"
    (project / "deploy").mkdir(parents=True, exist_ok=True)
    for name in ("compose.yaml", *overrides):
        shutil.copy(REPO / name, project / name)
    lines = [(REPO / ".env.example").read_text(), *(f"{k}={v}" for k, v in (env or {}).items())]
    (project / ".env").write_text("\n".join(lines) + "\n")
    files = [arg for name in ("compose.yaml", *overrides) for arg in ("-f", name)]
    result = subprocess.run(
        [str(compose_binary()), *files, "config", "--format", "json"],
        cwd=project,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def vllm_argv(tmp: Path, service: dict[str, Any]) -> list[str]:
    """The arguments the service's entrypoint gives `vllm`."""
    result, call = run_script(container_script(service["entrypoint"]), dict(service["environment"]), tmp, "vllm")
    assert result.returncode == 0 and call is not None, result.stderr
    return list(call["argv"])


def test_a_second_vllm_serves_instinct_with_prefix_caching_and_ngram_speculation(tmp_path: Path) -> None:
    model = next_edit_model(tmp_path)
    services = model["services"]
    vllm, next_edit = services["vllm"], services["vllm-next-edit"]
    assert (next_edit["image"], next_edit["entrypoint"]) == (vllm["image"], vllm["entrypoint"])
    assert next_edit["volumes"] == vllm["volumes"] and next_edit["healthcheck"] == vllm["healthcheck"]
    served = ["serve", "/models/instinct", "--host", "0.0.0.0", "--port", "8000", "--served-model-name", "instinct"]
    assert vllm_argv(tmp_path, next_edit) == [*served, "--gpu-memory-utilization", "0.3", *NEXT_EDIT_VLLM_FLAGS]
    assert "--tool-call-parser" in vllm_argv(tmp_path, vllm)  # the chat model's server is left as it was
    assert "VLLM_API_KEY" not in next_edit["environment"]  # the client token never reaches vLLM
    (gpus,) = next_edit["deploy"]["resources"]["reservations"]["devices"]
    assert (gpus["driver"], gpus["device_ids"], gpus["capabilities"]) == ("nvidia", ["all"], ["gpu"])
    assert next_edit["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert services["kodify-proxy"]["depends_on"]["vllm-next-edit"]["condition"] == "service_started"


def test_the_next_edit_variables_choose_model_name_gpu_and_flags(tmp_path: Path) -> None:
    env = {
        "NEXT_EDIT_MODEL": "/models/instinct-awq/",
        "NEXT_EDIT_SERVED_MODEL_NAME": "instinct",
        "NEXT_EDIT_GPUUTIL": "0.85",
        "NEXT_EDIT_DEVICES": "1",
        "NEXT_EDIT_ADDITIONAL_ARGS": "--max-model-len 8192",
    }
    assert {*env, CPU_KVCACHE} == NEXT_EDIT_VARIABLES  # each one `kodify-proxy check` knows is tried here or below
    next_edit = next_edit_model(tmp_path, env)["services"]["vllm-next-edit"]
    served = ["serve", "/models/instinct-awq", "--host", "0.0.0.0", "--port", "8000", "--served-model-name", "instinct"]
    flags = ["--gpu-memory-utilization", "0.85", *NEXT_EDIT_VLLM_FLAGS, "--max-model-len", "8192"]
    assert vllm_argv(tmp_path, next_edit) == [*served, *flags]
    assert next_edit["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["1"]


def test_without_a_gpu_both_servers_run_vllm_cpu_and_reserve_no_gpu(tmp_path: Path) -> None:
    services = next_edit_model(tmp_path, {CPU_KVCACHE: "3"}, CPU_OVERRIDES)["services"]
    vllm, next_edit = services["vllm"], services["vllm-next-edit"]
    assert next_edit["image"] == vllm["image"] == "kodify-vllm-cpu:0.32.0"
    assert "deploy" not in next_edit and "deploy" not in vllm
    assert (next_edit["environment"]["VLLM_CPU_KVCACHE_SPACE"], next_edit["environment"]["EAGER"]) == ("3", "1")
    argv = vllm_argv(tmp_path, next_edit)
    assert argv[:2] == ["serve", "/models/instinct"] and "--enforce-eager" in argv
    assert argv[-len(NEXT_EDIT_VLLM_FLAGS) :] == NEXT_EDIT_VLLM_FLAGS
