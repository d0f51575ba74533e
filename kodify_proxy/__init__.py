"""kodify-proxy: the Kodify API server, a LiteLLM proxy extended for vLLM upstreams."""

import os

# LiteLLM fetches its model cost map from the internet at import unless told not to; these servers are offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_DISABLE_LATEST_RELEASE_CHECK", "true")
# LiteLLM aborts a stream that repeats one chunk 100 times (litellm/litellm_core_utils/streaming_handler.py
# safety_checker); vLLM streams a model's repetition faithfully, so that check only turns answers into 5xx.
os.environ.setdefault("REPEATED_STREAMING_CHUNK_LIMIT", str(2**31 - 1))
