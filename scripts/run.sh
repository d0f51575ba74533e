#!/usr/bin/env bash
# Run the whole system on one machine, no GPU and no model hub needed: a real vLLM server on the CPU serving a
# tiny model the project generates (or the model you name), and kodify-proxy in front of it on port 8000.
#
# Usage: scripts/run.sh [--model DIR_OR_HF_NAME] [--served-model-name NAME] [--port 8000] [--vllm-port 8011]
#        scripts/run.sh stop
# State, logs and the generated config live in .run/ (LITELLM master key: .run/state/master_key).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$REPO/.run"
PORT=8000
VLLM_PORT=8011
MODEL=
SERVED=tiny
log() { printf '[run] %s\n' "$*" >&2; }

stop_all() {
    if [[ -s "$RUN/proxy.pid" ]]; then
        kill -TERM -- "-$(cat "$RUN/proxy.pid")" 2>/dev/null || true
        rm -f "$RUN/proxy.pid"
        log "kodify-proxy stopped"
    fi
    bash "$REPO/scripts/vllm-stop.sh" --workdir "$RUN/vllm" 2>/dev/null || true
}

if [[ "${1:-}" == stop ]]; then stop_all; exit 0; fi
while (($#)); do
    case "$1" in
        --model) MODEL="${2:?}"; SERVED="$(basename "$MODEL")"; shift 2 ;;
        --served-model-name) SERVED="${2:?}"; shift 2 ;;
        --port) PORT="${2:?}"; shift 2 ;;
        --vllm-port) VLLM_PORT="${2:?}"; shift 2 ;;
        -h | --help) sed -n '5,6p' "${BASH_SOURCE[0]}" | sed 's/^# //' >&2; exit 2 ;;
        *) log "unknown argument: $1"; exit 2 ;;
    esac
done

mkdir -p "$RUN"
bash "$REPO/scripts/bootstrap.sh"
stop_all
vllm_args=(--port "$VLLM_PORT" --workdir "$RUN/vllm" --served-model-name "$SERVED")
[[ -n "$MODEL" ]] && vllm_args+=(--model "$MODEL")
UPSTREAM="$(bash "$REPO/scripts/vllm-serve.sh" "${vllm_args[@]}" | tail -n1)"
printf 'upstreams:\n  %s:\n' "$UPSTREAM" > "$RUN/config.yml"

export KODIFY_STATE_DIR="$RUN/state"
if [[ -f "$REPO/preprocess_configs/qwen.json" ]]; then
    export COMPLETIONS_PREPROCESSING_CONFIG="${COMPLETIONS_PREPROCESSING_CONFIG:-$REPO/preprocess_configs/qwen.json}"
fi
log "starting kodify-proxy on port $PORT (log: $RUN/proxy.log)"
setsid sh -c 'echo $$ > "$1"; shift; exec "$@"' sh "$RUN/proxy.pid" \
    "$REPO/.venv/bin/kodify-proxy" serve --config "$RUN/config.yml" --host 0.0.0.0 --port "$PORT" \
    </dev/null >"$RUN/proxy.log" 2>&1 &
for _ in $(seq 1 120); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health" || true)" == 200 ]]; then
        cat <<MSG

kodify-proxy is running at http://127.0.0.1:$PORT (OpenAI API under /v1), serving '$SERVED' from vLLM at $UPSTREAM.
Try:
  curl http://127.0.0.1:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "$SERVED", "messages": [{"role": "user", "content": "def fib(n):"}], "max_tokens": 16}'
Health: curl http://127.0.0.1:$PORT/health     Logs: $RUN/proxy.log, $RUN/vllm/vllm.log
Stop:   scripts/run.sh stop
MSG
        exit 0
    fi
    sleep 1
done
log "kodify-proxy did not become healthy; last log lines:"; tail -n 30 "$RUN/proxy.log" >&2
stop_all; exit 1
