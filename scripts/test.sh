#!/usr/bin/env bash
# Run every test: lint, types, unit and integration tests, and the end-to-end tier against a real vLLM server
# on the CPU and real clients. Installs what it needs first (scripts/bootstrap.sh, scripts/vllm-env.sh).
# Extra arguments go to pytest (e.g. scripts/test.sh -k health).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash scripts/bootstrap.sh
bash scripts/vllm-env.sh >/dev/null
bash scripts/tabby-agent.sh >/dev/null
bash scripts/continue-cli.sh >/dev/null
bash scripts/continue-config-yaml.sh >/dev/null
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"
echo "== ruff"; .venv/bin/ruff check kodify_proxy tests bench scripts
echo "== ruff format"; .venv/bin/ruff format --check kodify_proxy tests bench scripts
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; exec .venv/bin/pytest "$@"
