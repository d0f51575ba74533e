#!/usr/bin/env bash
# Stop the vLLM server started by scripts/vllm-serve.sh and wait until its whole process group
# (API server, EngineCore, Worker) has exited.
#
# Usage: scripts/vllm-stop.sh [--workdir DIR] [--timeout 30]
#
# SIGTERM goes to the API server's PID first: it shuts its children down cleanly in ~2 s. Only if
# the group outlives --timeout does the rest of the group get SIGTERM, then SIGKILL.
set -euo pipefail

CACHE="${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}"
WORKDIR="$CACHE/vllm-run"
TIMEOUT=30

log() { printf '[vllm-stop] %s\n' "$*" >&2; }

while (($#)); do
    case "$1" in
        --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
        --timeout) TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
        -h | --help) sed -n '5p' "${BASH_SOURCE[0]}" | sed 's/^# //' >&2; exit 0 ;;
        *) log "unknown argument: $1"; exit 2 ;;
    esac
done

PIDFILE="$WORKDIR/vllm.pid"

# True while a live (non-zombie) process is in process group $1. Reads /proc directly: zombies
# answer `kill -0` (where PID 1 does not reap promptly, as in some sandboxes, exited servers
# linger as zombies), and slim images have no ps.
group_alive() {
    local stat line fields
    for stat in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null <"$stat" || continue
        read -r -a fields <<<"${line##*) }" # state ppid pgrp ...
        [[ "${fields[2]-}" == "$1" && "${fields[0]-}" != Z ]] && return 0
    done
    return 1
}

# True while process $1 exists and is not a zombie.
is_running() {
    local line
    read -r line 2>/dev/null <"/proc/$1/stat" || return 1
    line="${line##*) }"
    [[ "${line:0:1}" != Z ]]
}

# Wait up to $2 seconds for group $1 to be gone.
wait_group() {
    local deadline=$((SECONDS + $2))
    while group_alive "$1"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

if [[ ! -s "$PIDFILE" ]]; then
    log "no $PIDFILE: nothing to stop"
    exit 0
fi
PID="$(cat "$PIDFILE")"
[[ "$PID" =~ ^[0-9]+$ ]] || { log "error: $PIDFILE does not hold a PID: '$PID'"; exit 1; }

if is_running "$PID"; then
    # Guard against a stale file whose PID now belongs to an unrelated process.
    cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$PID/cmdline" || true)"
    if [[ "$cmdline" != *vllm* ]]; then
        log "pid $PID is not a vLLM process; removing the stale $PIDFILE"
        rm -f "$PIDFILE"
        exit 0
    fi
    log "sending SIGTERM to $PID"
    kill -TERM "$PID" 2>/dev/null || true
fi

if ! wait_group "$PID" "$TIMEOUT"; then
    log "process group $PID still alive after $TIMEOUT s; sending SIGTERM to the group"
    kill -TERM -- "-$PID" 2>/dev/null || true
    if ! wait_group "$PID" 10; then
        log "sending SIGKILL to the group"
        kill -KILL -- "-$PID" 2>/dev/null || true
        wait_group "$PID" 10 || { log "error: process group $PID did not exit"; exit 1; }
    fi
fi
rm -f "$PIDFILE" "$WORKDIR/vllm.url"
log "stopped"
