#!/usr/bin/env bash
# Run the whole system on one machine, no GPU and no model hub needed: a real vLLM server on the CPU serving a
# tiny model the project generates (or the model you name), and kodify-proxy in front of it on port 8000.
#
# Usage: scripts/run.sh [--model DIR_OR_HF_NAME] [--served-model-name NAME] [--port 8000] [--vllm-port 8011]
#                       [--host 127.0.0.1]
#        scripts/run.sh stop
# State, logs and the generated config live in .run/ (LITELLM master key: .run/state/master_key).
# kodify-proxy listens on this machine only unless --host says otherwise (e.g. --host 0.0.0.0): off localhost, set
# VLLM_API_KEY (a token) and KODIFY_TLS_CERT_FILE / KODIFY_TLS_KEY_FILE (HTTPS) in the environment first, or tokens
# and prompts cross the network in clear text.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$REPO/.run"
PORT=8000
VLLM_PORT=8011
HOST=127.0.0.1
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
        --host) HOST="${2:?}"; shift 2 ;;
        -h | --help) sed -n '5,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
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
SCHEME=http
PROBE=(curl -s)
if [[ -n "${KODIFY_TLS_CERT_FILE:-}" ]]; then
    SCHEME=https
    PROBE+=(-k)  # only to see this machine's server answer; clients verify its certificate (docs/deployment.md)
fi
case "$HOST" in
    127.* | localhost | ::1) ;;
    *)
        if [[ "$SCHEME" != https || (-z "${VLLM_API_KEY:-}" && ! "${MTSAI_AUTH:-}" =~ ^(1|[Tt]rue|yes)$) ]]; then
            log "WARNING: listening on $HOST, beyond this machine, without a token (VLLM_API_KEY) and TLS" \
                "(KODIFY_TLS_CERT_FILE, KODIFY_TLS_KEY_FILE): anyone who reaches it can use it or read its traffic"
        fi ;;
esac
case "$HOST" in
    0.0.0.0) ADDRESS=127.0.0.1 ;;
    ::) ADDRESS='[::1]' ;;
    *:*) ADDRESS="[$HOST]" ;;
    *) ADDRESS="$HOST" ;;
esac
URL="$SCHEME://$ADDRESS:$PORT"
log "starting kodify-proxy on $HOST port $PORT (log: $RUN/proxy.log)"
setsid sh -c 'echo $$ > "$1"; shift; exec "$@"' sh "$RUN/proxy.pid" \
    "$REPO/.venv/bin/kodify-proxy" serve --config "$RUN/config.yml" --host "$HOST" --port "$PORT" \
    </dev/null >"$RUN/proxy.log" 2>&1 &
started() {  # with client certificates required (KODIFY_TLS_CA_FILE) the probe cannot connect: the log tells
    [[ "$("${PROBE[@]}" -o /dev/null -w '%{http_code}' "$URL/health" || true)" == 200 ]] \
        || { [[ -n "${KODIFY_TLS_CA_FILE:-}" ]] && grep -q 'Application startup complete' "$RUN/proxy.log"; }
}
for _ in $(seq 1 120); do
    if started; then
        cat <<MSG

kodify-proxy is running at $URL (OpenAI API under /v1), serving '$SERVED' from vLLM at $UPSTREAM.
Try:
  curl $URL/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "$SERVED", "messages": [{"role": "user", "content": "def fib(n):"}], "max_tokens": 16}'
Health: curl $URL/health     Logs: $RUN/proxy.log, $RUN/vllm/vllm.log
Stop:   scripts/run.sh stop
MSG
        [[ "$SCHEME" == http ]] || echo "(HTTPS: give curl --cacert CA.pem, the CA that signed the certificate, and" \
            "--cert/--key with a client certificate when KODIFY_TLS_CA_FILE is set)"
        exit 0
    fi
    sleep 1
done
log "kodify-proxy did not become healthy; last log lines:"; tail -n 30 "$RUN/proxy.log" >&2
stop_all; exit 1
