# kodify-proxy: the Kodify API server (LiteLLM proxy + kodify_proxy) in front of vLLM.
#   docker build -t kodify-proxy:0.1.0 .
# Build arguments (docs/deployment.md, "The image"): PYTHON_IMAGE (another Python 3.11+ base), ADMIN_UI=false (no
# Prisma step, which needs the internet; LiteLLM's UI sign-in then stays off), EXTRA_CA_CERTS (PEM text of CAs to
# trust, e.g. an intercepting proxy's), and pip's own PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS,
# PIP_NO_INDEX, PIP_TRUSTED_HOST for a package mirror or a wheel directory instead of PyPI.
# No secrets are baked in: tokens and passwords come from the environment at run time (.env, Kubernetes Secrets).
# The base is pinned by digest (docs/deployment.md, "Reproducible image": where it came from, how to refresh it).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1
FROM ${PYTHON_IMAGE}

# Prisma (LiteLLM's admin UI) keeps its CLI, query engine and private Node in /opt/prisma, not in root's home, so the
# service's user finds the engine the generated client points at.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PRISMA_BINARY_CACHE_DIR=/opt/prisma/binaries \
    PRISMA_NODEENV_CACHE_DIR=/opt/prisma/nodeenv \
    PRISMA_USE_GLOBAL_NODE=false \
    PRISMA_HIDE_UPDATE_MESSAGE=1

# The source stays in the image: alembic/ and preprocess_configs/ are used from here, relative to the working dir.
WORKDIR /opt/kodify-proxy
# CAs the build (pip, Prisma) must trust besides the system's, e.g. a company proxy's that intercepts TLS: the PEM
# text, `--build-arg EXTRA_CA_CERTS="$(cat company-ca.pem)"`. They join the system bundle, which pip reads (PIP_CERT).
ARG EXTRA_CA_CERTS=""
RUN if [ -n "${EXTRA_CA_CERTS}" ]; then \
        printf '%s\n' "${EXTRA_CA_CERTS}" > /usr/local/share/ca-certificates/kodify-extra-ca.crt \
        && update-ca-certificates; \
    fi
# pip reads these from the environment, where RUN finds build arguments: unset, it asks PyPI.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
# Every dependency at the version and file hashes of the lock (regenerate it as docs/deployment.md says); this layer
# is rebuilt only when the lock changes.
COPY requirements.lock /opt/kodify-proxy/requirements.lock
RUN pip install --require-hashes -r /opt/kodify-proxy/requirements.lock
# LiteLLM's admin UI signs in through Prisma: generate its client for litellm's own schema.prisma at build time, as
# LiteLLM's image does (without importing litellm, which would fetch its cost map). prisma-client-py installs a private
# Node with nodeenv (version pinned in nodeenv's ~/.nodeenvrc: prisma 0.15 cannot parse PRISMA_NODEENV_EXTRA_ARGS from
# the environment), the Prisma CLI it pins (npm) and its query engine. Needs the internet: docs/deployment.md.
# ADMIN_UI=false skips it: the image then serves everything but the UI's sign-in (a DATABASE_URL stops `serve`).
ARG ADMIN_UI=true
ARG PRISMA_NODE_VERSION=20.20.2
RUN case "${ADMIN_UI}" in \
        true | True | TRUE | 1 | yes) \
            printf '[nodeenv]\nnode = %s\n' "${PRISMA_NODE_VERSION}" > /root/.nodeenvrc \
            && litellm_dir="$(python -c 'import importlib.util as u; print(u.find_spec("litellm").submodule_search_locations[0])')" \
            && prisma generate --schema "${litellm_dir}/proxy/schema.prisma" \
            && rm -rf /root/.nodeenvrc /root/.npm /root/.cache \
            && chmod -R a+rX /opt/prisma ;; \
        false | False | FALSE | 0 | no) echo "ADMIN_UI=${ADMIN_UI}: no Prisma client, LiteLLM's UI sign-in stays off" ;; \
        *) echo "ADMIN_UI=${ADMIN_UI} is invalid: use true (the default) or false" >&2; exit 2 ;; \
    esac
COPY . /opt/kodify-proxy
# The guide's paths: config.yml is mounted at /vllm-workspace/config.yml, and the Kubernetes init container runs
# `alembic -c /vllm-workspace/middleware/gpt_logger/alembic.ini upgrade head` (that directory links to the source).
# --no-deps: the lock above installed every dependency; pip must not resolve (or fetch) anything else.
RUN pip install /opt/kodify-proxy --no-deps \
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
