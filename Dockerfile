# kodify-proxy: the Kodify API server (LiteLLM proxy + kodify_proxy) in front of vLLM.
#   docker build -t kodify-proxy:0.1.0 .
# No secrets are baked in: tokens and passwords come from the environment at run time (.env, Kubernetes Secrets).
# Pin the base by digest for bit-for-bit rebuilds: --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The source stays in the image: alembic/ and preprocess_configs/ are used from here, relative to the working dir.
WORKDIR /opt/kodify-proxy
COPY . /opt/kodify-proxy
# The guide's paths: config.yml is mounted at /vllm-workspace/config.yml, and the Kubernetes init container runs
# `alembic -c /vllm-workspace/middleware/gpt_logger/alembic.ini upgrade head` (that directory links to the source).
RUN pip install /opt/kodify-proxy \
    && rm -rf /opt/kodify-proxy/build /opt/kodify-proxy/*.egg-info \
    && mkdir -p /vllm-workspace/middleware \
    && ln -s /opt/kodify-proxy /vllm-workspace/middleware/gpt_logger \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/kodify-proxy --create-home kodify

# LiteLLM would fetch its model cost map (and UI blog posts, policy templates, autorouter presets, Anthropic beta
# headers) and check for new releases on the internet; the service runs offline (kodify_proxy/__init__.py sets them too).
ENV LITELLM_LOCAL_MODEL_COST_MAP=True \
    LITELLM_LOCAL_BLOG_POSTS=True \
    LITELLM_LOCAL_POLICY_TEMPLATES=True \
    LITELLM_LOCAL_AUTOROUTER_PRESETS=True \
    LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True \
    LITELLM_DISABLE_LATEST_RELEASE_CHECK=true \
    KODIFY_CONFIG=/vllm-workspace/config.yml \
    KODIFY_STATE_DIR=/var/lib/kodify-proxy \
    HOME=/var/lib/kodify-proxy

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=10s --start-period=5m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=5)"]
# One worker process per CPU the container may use (KODIFY_WORKERS=auto; docs/deployment.md, "Every core").
CMD ["kodify-proxy", "serve"]
