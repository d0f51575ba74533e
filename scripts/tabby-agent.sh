#!/usr/bin/env bash
# Install (or reuse) the real tabby-agent from npm, pinned, for the end-to-end tests (scripts/npm-client.sh).
#
# Usage: scripts/tabby-agent.sh     # prints the path of the agent's dist/cli.js as the last line of stdout
#
# The agent lives in "${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}/tabby-agent-1.5.0". 1.5.0 is the only version npm
# has (the newer agents ship inside the IDE plugins). Needs node >= 18 and npm.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/npm-client.sh" tabby-agent tabby-agent 1.5.0 dist/cli.js 18
