#!/usr/bin/env bash
# Install (or reuse) Continue's real CLI `cn` from npm (@continuedev/cli), pinned, for the end-to-end tests.
#
# Usage: scripts/continue-cli.sh     # prints the path of the CLI's dist/cn.js as the last line of stdout
#
# The CLI lives in "${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}/continue-cli-1.5.47". Install scripts are not run.
# A marker file is written only after the install and a version check succeeded, so an interrupted install is
# redone, never reused. Needs node >= 20 and npm.
set -euo pipefail

VERSION=1.5.47
CACHE="${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}"
DIR="$CACHE/continue-cli-$VERSION"
MARKER="$DIR/.kodify-complete"
CLI="$DIR/node_modules/@continuedev/cli/dist/cn.js"

log() { printf '[continue-cli] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ -f "$MARKER" && -f "$CLI" ]]; then
    echo "$CLI"
    exit 0
fi
command -v node >/dev/null || die "node is not installed; install Node.js >= 20 (apt-get install nodejs npm)"
command -v npm >/dev/null || die "npm is not installed; install it (apt-get install npm)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
    die "node $(node --version) is too old; @continuedev/cli $VERSION needs node >= 20"

log "installing @continuedev/cli@$VERSION into $DIR"
rm -rf "$DIR"
mkdir -p "$DIR"
npm install --prefix "$DIR" --no-audit --no-fund --ignore-scripts --loglevel=error "@continuedev/cli@$VERSION" >&2
installed="$(node -p "require('$DIR/node_modules/@continuedev/cli/package.json').version")"
[[ "$installed" == "$VERSION" ]] || die "npm installed @continuedev/cli $installed, expected $VERSION"
[[ -f "$CLI" ]] || die "$CLI is missing after the install"
echo "$VERSION" >"$MARKER"
echo "$CLI"
