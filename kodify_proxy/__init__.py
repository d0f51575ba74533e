"""kodify-proxy: the Kodify API server, a LiteLLM proxy extended for vLLM upstreams."""

import os

# LiteLLM fetches its model cost map from the internet at import unless told not to; these servers are offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_DISABLE_LATEST_RELEASE_CHECK", "true")
