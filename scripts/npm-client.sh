#!/usr/bin/env bash
# Install (or reuse) a real client from npm, pinned, for the end-to-end tests; scripts/tabby-agent.sh and
# scripts/continue-cli.sh name the package.
#
# Usage: scripts/npm-client.sh NAME PACKAGE VERSION ENTRY MIN_NODE
#        prints the path of PACKAGE's ENTRY (e.g. dist/cli.js) as the last line of stdout
#
# The client lives in "${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}/NAME-VERSION". Install scripts are not run. A
# marker file is written only after the install and a version check succeeded, so an interrupted install is redone,
# never reused. Needs node >= MIN_NODE and npm.
set -euo pipefail

(($# == 5)) || { echo "usage: $0 NAME PACKAGE VERSION ENTRY MIN_NODE" >&2; exit 2; }
NAME="$1" PACKAGE="$2" VERSION="$3" ENTRY="$4" MIN_NODE="$5"
CACHE="${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}"
DIR="$CACHE/$NAME-$VERSION"
MARKER="$DIR/.kodify-complete"
CLI="$DIR/node_modules/$PACKAGE/$ENTRY"

log() { printf '[%s] %s\n' "$NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ -f "$MARKER" && -f "$CLI" ]]; then
    echo "$CLI"
    exit 0
fi
command -v node >/dev/null || die "node is not installed; install Node.js >= $MIN_NODE (apt-get install nodejs npm)"
command -v npm >/dev/null || die "npm is not installed; install it (apt-get install npm)"
node -e "process.exit(Number(process.versions.node.split('.')[0]) >= $MIN_NODE ? 0 : 1)" ||
    die "node $(node --version) is too old; $PACKAGE $VERSION needs node >= $MIN_NODE"

log "installing $PACKAGE@$VERSION into $DIR"
rm -rf "$DIR"
mkdir -p "$DIR"
npm install --prefix "$DIR" --no-audit --no-fund --ignore-scripts --loglevel=error "$PACKAGE@$VERSION" >&2
installed="$(node -p "require('$DIR/node_modules/$PACKAGE/package.json').version")"
[[ "$installed" == "$VERSION" ]] || die "npm installed $PACKAGE $installed, expected $VERSION"
[[ -f "$CLI" ]] || die "$CLI is missing after the install"
echo "$VERSION" >"$MARKER"
echo "$CLI"
