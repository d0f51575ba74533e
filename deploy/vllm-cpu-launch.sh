#!/bin/sh
# `vllm` in the vllm-cpu image (deploy/vllm-cpu.Dockerfile): vLLM's own command, with scripts/vllm-serve.sh's choice of
# dtype when `vllm serve` gets no --dtype. vLLM's CPU attention takes its AMX kernel for bfloat16 whenever the CPU lists
# amx_tile, but nothing in vLLM asks Linux for the AMX tile state first, so the first request kills the worker with
# SIGILL: float32 there (the AVX-512 kernel), bfloat16 elsewhere (half float32's memory).
set -eu
PATH="${PATH#/opt/vllm-cpu/bin:}"
if [ "${1:-}" = serve ]; then
    case " $* " in
        *" --dtype "* | *" --dtype="*) ;;
        *)
            if grep -qw amx_tile /proc/cpuinfo; then
                set -- "$@" --dtype float32
            else
                set -- "$@" --dtype bfloat16
            fi
            ;;
    esac
fi
exec vllm "$@"
