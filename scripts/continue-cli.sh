#!/usr/bin/env bash
# Install (or reuse) Continue's real CLI `cn` from npm (@continuedev/cli), pinned, for the end-to-end tests
# (scripts/npm-client.sh).
#
# Usage: scripts/continue-cli.sh     # prints the path of the CLI's dist/cn.js as the last line of stdout
#
# The CLI lives in "${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}/continue-cli-1.5.47". Needs node >= 20 and npm.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/npm-client.sh" continue-cli @continuedev/cli 1.5.47 dist/cn.js 20
