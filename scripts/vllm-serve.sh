#!/usr/bin/env bash
# Start a real vLLM OpenAI server on the CPU in the background and wait until it is healthy.
#
# Usage: scripts/vllm-serve.sh [--port 8011] [--host 127.0.0.1] [--model DIR_OR_NAME]
#                              [--served-model-name tiny] [--workdir DIR] [-- EXTRA_VLLM_ARGS...]
#
# Without --model it serves the tiny random Qwen2 from scripts/make_tiny_model.py, generated once
# into "$KODIFY_CACHE/models/tiny-qwen2". The venv comes from scripts/vllm-env.sh. The server's
# PID (also its process-group id) goes to WORKDIR/vllm.pid, its output to WORKDIR/vllm.log.
# On success the base URL (http://HOST:PORT, without /v1, as config.yml upstreams spell it) is
# printed on stdout; on failure the tail of the log goes to stderr and the exit status is 1.
# Stop it with scripts/vllm-stop.sh --workdir WORKDIR.
#
# Environment: KODIFY_CACHE (default $HOME/.cache/kodify-proxy), VLLM_STARTUP_TIMEOUT (180 s), VLLM_DTYPE
# (default bfloat16; float32 on a CPU with AMX, which vLLM's bfloat16 attention can't use there),
# VLLM_CPU_KVCACHE_SPACE (GiB of KV cache, default 1), VLLM_TOOL_CALL_PARSER (default hermes: vLLM gets
# --enable-auto-tool-choice --tool-call-parser hermes, which clients sending `tools` need; set it empty for neither).
set -euo pipefail

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KODIFY_CACHE:-$HOME/.cache/kodify-proxy}"
PORT=8011
HOST=127.0.0.1
MODEL=
SERVED_NAME=tiny
WORKDIR="$CACHE/vllm-run"
TIMEOUT="${VLLM_STARTUP_TIMEOUT:-180}"
EXTRA_ARGS=()

log() { printf '[vllm-serve] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# True while process $1 exists and is not a zombie. `kill -0` alone is not enough: where PID 1
# does not reap promptly (as in some sandboxes), an exited server lingers as a zombie.
is_running() {
    local line
    read -r line 2>/dev/null <"/proc/$1/stat" || return 1
    line="${line##*) }"
    [[ "${line:0:1}" != Z ]]
}
usage() { sed -n '4,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

while (($#)); do
    case "$1" in
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --host) HOST="${2:?--host needs a value}"; shift 2 ;;
        --model) MODEL="${2:?--model needs a value}"; shift 2 ;;
        --served-model-name) SERVED_NAME="${2:?--served-model-name needs a value}"; shift 2 ;;
        --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
        --) shift; EXTRA_ARGS=("$@"); break ;;
        -h | --help) usage 0 ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done

# Continue sends `tools` with every chat; without these flags vLLM answers it 400. hermes fits Qwen2.5 and the
# tiny model's ChatML template.
TOOL_PARSER="${VLLM_TOOL_CALL_PARSER-hermes}"
TOOL_ARGS=()
if [[ -n "$TOOL_PARSER" ]]; then
    [[ "$TOOL_PARSER" =~ ^[A-Za-z0-9_-]+$ ]] || die "VLLM_TOOL_CALL_PARSER=$TOOL_PARSER is not a parser name such as hermes"
    TOOL_ARGS=(--enable-auto-tool-choice --tool-call-parser "$TOOL_PARSER")
fi

mkdir -p "$WORKDIR"
WORKDIR="$(cd "$WORKDIR" && pwd)"
PIDFILE="$WORKDIR/vllm.pid"
LOGFILE="$WORKDIR/vllm.log"
# A wildcard bind address is reached through loopback.
case "$HOST" in 0.0.0.0 | :: | '') PROBE_HOST=127.0.0.1 ;; *) PROBE_HOST="$HOST" ;; esac
[[ "$PROBE_HOST" == *:* ]] && PROBE_HOST="[$PROBE_HOST]"
URL="http://$PROBE_HOST:$PORT"

if [[ -s "$PIDFILE" ]] && is_running "$(cat "$PIDFILE")"; then
    die "a server from $WORKDIR is already running (pid $(cat "$PIDFILE")); stop it with: $SCRIPTS/vllm-stop.sh --workdir $WORKDIR"
fi
if (exec 3<>"/dev/tcp/${PROBE_HOST//[\[\]]/}/$PORT") 2>/dev/null; then
    die "port $PORT on $PROBE_HOST is already in use; pick another with --port"
fi

VENV="$("$SCRIPTS/vllm-env.sh" | tail -n1)"
if [[ -z "$MODEL" ]]; then
    MODEL="$("$VENV/bin/python" "$SCRIPTS/make_tiny_model.py" "$CACHE/models/tiny-qwen2" | tail -n1)"
fi

# No server of this workdir runs (checked above): drop the IPC sockets an earlier one left behind.
rm -rf "$WORKDIR/tmp"
mkdir -p "$WORKDIR/tmp" "$WORKDIR/cache"
# --enforce-eager and TORCH_COMPILE_DISABLE=1: torch.compile costs ~20 s at start, its cache does
# not survive a restart, and the first logprobs request would otherwise compile for 8-15 s.
# TMPDIR: vLLM leaves ZMQ IPC sockets there. The legacy VLLM_CPU_KVCACHE_SPACE overrides
# --kv-cache-memory-bytes; unset it (empty) to use the flag instead.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TORCH_COMPILE_DISABLE=1 \
    VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    TMPDIR="$WORKDIR/tmp" VLLM_CACHE_ROOT="$WORKDIR/cache/vllm" VLLM_CONFIG_ROOT="$WORKDIR/cache/vllm-config" \
    TORCHINDUCTOR_CACHE_DIR="$WORKDIR/cache/inductor" HF_HOME="$WORKDIR/cache/huggingface"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE-1}"
[[ -z "$VLLM_CPU_KVCACHE_SPACE" ]] && unset VLLM_CPU_KVCACHE_SPACE

# vLLM's CPU attention takes its AMX kernel for bfloat16 whenever the CPU lists amx_tile (_get_attn_isa in
# vllm/v1/attention/backends/cpu_attn.py), but nothing in vLLM's worker asks Linux for the AMX tile state first
# (arch_prctl ARCH_REQ_XCOMP_PERM), so the first request kills the worker with SIGILL (seen on 2026-12-05 on a
# Sapphire Rapids VM: a tile instruction runs after that request and traps without it). float32 takes the
# AVX-512 kernel instead, and serves the tiny model as fast.
DTYPE="${VLLM_DTYPE:-}"
if [[ -z "$DTYPE" ]]; then
    DTYPE=bfloat16
    if grep -qw amx_tile /proc/cpuinfo; then DTYPE=float32; fi
fi

log "starting vLLM on $HOST:$PORT serving $MODEL as '$SERVED_NAME' in $DTYPE (log: $LOGFILE)"
STARTED=$SECONDS
rm -f "$PIDFILE"
# setsid makes the server a process-group leader, so vllm-stop.sh can wait for (and if need be
# kill) its EngineCore/Worker children as one group. The inner sh records its own PID, which is
# the server's after exec, whether or not setsid had to fork.
# shellcheck disable=SC2016  # $$ and $@ are for the inner sh
setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$PIDFILE" \
    "$VENV/bin/vllm" serve "$MODEL" \
    --served-model-name "$SERVED_NAME" --host "$HOST" --port "$PORT" \
    --dtype "$DTYPE" --max-model-len 512 --enforce-eager \
    ${TOOL_ARGS[@]+"${TOOL_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} \
    </dev/null >"$LOGFILE" 2>&1 &
LAUNCHER=$!

fail() {
    log "error: $*"
    log "last lines of $LOGFILE:"
    tail -n 40 "$LOGFILE" >&2 || true
    "$SCRIPTS/vllm-stop.sh" --workdir "$WORKDIR" >&2 || true
    exit 1
}

while :; do
    PID="$(cat "$PIDFILE" 2>/dev/null || true)"
    if [[ -n "$PID" ]] && ! is_running "$PID"; then
        fail "vLLM exited during startup"
    elif [[ -z "$PID" ]] && ! is_running "$LAUNCHER" && [[ ! -s "$PIDFILE" ]]; then
        fail "vLLM could not be launched"
    fi
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/health" || true)" == 200 ]]; then
        break
    fi
    ((SECONDS - STARTED < TIMEOUT)) || fail "vLLM was not healthy after $TIMEOUT s"
    sleep 0.5
done

log "healthy after $((SECONDS - STARTED)) s (pid $PID)"
printf '%s\n' "$URL" >"$WORKDIR/vllm.url"
printf '%s\n' "$URL"
