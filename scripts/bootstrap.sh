#!/usr/bin/env bash
# Install everything kodify-proxy itself needs on a fresh Debian/Ubuntu machine: Python venv (.venv) with the
# package and its dev tools, Node.js/npm for the tabby-agent and Continue end-to-end tests, Prometheus and
# Chromium for the monitoring and report tests, Docker's engine (docker.io) and debootstrap for the Compose tier.
# Idempotent; re-running only installs what changed. The vLLM CPU environment is separate (scripts/vllm-env.sh)
# because it pins its own torch.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { printf '[bootstrap] %s\n' "$*" >&2; }

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
command -v curl >/dev/null || need_apt+=(curl)
# Node.js >= 18 and npm run the real tabby-agent in the end-to-end tests (Debian 12 ships 18).
if ! command -v node >/dev/null || ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)'; then
    need_apt+=(nodejs)
fi
command -v npm >/dev/null || need_apt+=(npm)
# The monitoring and report tests: a real Prometheus server (and promtool), headless Chromium.
command -v prometheus >/dev/null && command -v promtool >/dev/null || need_apt+=(prometheus)
command -v chromium >/dev/null || need_apt+=(chromium)
# The Compose tier (tests/compose): a Docker engine (the tier starts dockerd when none runs) and debootstrap, which
# makes its base images from Debian's packages.
command -v dockerd >/dev/null && command -v docker >/dev/null || need_apt+=(docker.io)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if ((${#need_apt[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing system packages: ${need_apt[*]}; run: sudo apt-get install -y ${need_apt[*]}"; exit 1
    fi
    log "installing ${need_apt[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { log "Python >= 3.11 is required"; exit 1; }

stamp=".venv/.kodify-installed"
want="$(cat pyproject.toml requirements-dev.lock | sha256sum | cut -d' ' -f1)"
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
log "installing kodify-proxy and its dev tools into .venv from requirements-dev.lock"
.venv/bin/python -m pip install -q --upgrade pip
# Every dependency at the version and file hashes of the lock (docs/deployment.md, "Reproducible image"), then the
# project itself without letting pip resolve anything again.
.venv/bin/python -m pip install -q --require-hashes -r requirements-dev.lock
.venv/bin/python -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
