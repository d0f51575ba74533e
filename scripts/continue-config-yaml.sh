#!/usr/bin/env bash
# Install (or reuse) Continue's config schemas from npm (@continuedev/config-yaml), pinned, for the tests that build
# Continue's dev-data events and check client-config's `data:` block with Continue's own zod schemas
# (scripts/npm-client.sh).
#
# Usage: scripts/continue-config-yaml.sh     # prints the path of the package's dist/index.js as the last line of stdout
#
# The package lives in "${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}/continue-config-yaml-1.42.0". Needs node >= 20 and
# npm.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/npm-client.sh" continue-config-yaml @continuedev/config-yaml 1.42.0 dist/index.js 20
