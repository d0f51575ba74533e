#!/usr/bin/env bash
# Install (or reuse) the real tabby-agent from npm, pinned, for the end-to-end tests.
#
# Usage: scripts/tabby-agent.sh     # prints the path of the agent's dist/cli.js as the last line of stdout
#
# The agent lives in "${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}/tabby-agent-1.5.0". 1.5.0 is the only
# version npm has (the newer agents ship inside the IDE plugins). Install scripts are not run. A marker
# file is written only after the install and a version check succeeded, so an interrupted install is
# redone, never reused. Needs node >= 18 and npm.
set -euo pipefail

VERSION=1.5.0
CACHE="${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}"
DIR="$CACHE/tabby-agent-$VERSION"
MARKER="$DIR/.kodify-complete"
CLI="$DIR/node_modules/tabby-agent/dist/cli.js"

log() { printf '[tabby-agent] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ -f "$MARKER" && -f "$CLI" ]]; then
    echo "$CLI"
    exit 0
fi
command -v node >/dev/null || die "node is not installed; install Node.js >= 18 (apt-get install nodejs npm)"
command -v npm >/dev/null || die "npm is not installed; install it (apt-get install npm)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
    die "node $(node --version) is too old; tabby-agent $VERSION needs node >= 18"

log "installing tabby-agent@$VERSION into $DIR"
rm -rf "$DIR"
mkdir -p "$DIR"
npm install --prefix "$DIR" --no-audit --no-fund --ignore-scripts --loglevel=error "tabby-agent@$VERSION" >&2
installed="$(node -p "require('$DIR/node_modules/tabby-agent/package.json').version")"
[[ "$installed" == "$VERSION" ]] || die "npm installed tabby-agent $installed, expected $VERSION"
[[ -f "$CLI" ]] || die "$CLI is missing after the install"
echo "$VERSION" >"$MARKER"
echo "$CLI"
