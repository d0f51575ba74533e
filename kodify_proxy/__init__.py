"""kodify-proxy: the Kodify API server, a LiteLLM proxy extended for vLLM upstreams."""

import os

# LiteLLM fetches its model cost map, and for its admin UI blog posts, policy templates, autorouter presets and
# Anthropic beta headers, from the internet unless told not to; these servers are offline. Its bundled copies serve.
OFFLINE_SWITCHES = (
    "LITELLM_LOCAL_MODEL_COST_MAP",
    "LITELLM_LOCAL_BLOG_POSTS",
    "LITELLM_LOCAL_POLICY_TEMPLATES",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",
)
for _switch in OFFLINE_SWITCHES:
    os.environ.setdefault(_switch, "True")
os.environ.setdefault("LITELLM_DISABLE_LATEST_RELEASE_CHECK", "true")
# LiteLLM aborts a stream that repeats one chunk 100 times (litellm/litellm_core_utils/streaming_handler.py
# safety_checker); vLLM streams a model's repetition faithfully, so that check only turns answers into 5xx.
os.environ.setdefault("REPEATED_STREAMING_CHUNK_LIMIT", str(2**31 - 1))
