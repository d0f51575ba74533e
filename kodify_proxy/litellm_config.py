"""Pure: upstreams + settings + discovered models -> the LiteLLM proxy config dict, and its masked rendering."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from kodify_proxy.settings import Settings
from kodify_proxy.upstreams import Upstream

TEMPLATE_PATH = Path(__file__).with_name("proxy_config.yaml")
_SECRET_KEYS = ("key", "secret", "password", "token")


def upstream_key_env(index: int) -> str:
    """The environment variable that carries upstream `index`'s API key into LiteLLM (never a file)."""
    return f"KODIFY_UPSTREAM_{index}_API_KEY"


def deployment_id(upstream: Upstream, model: str) -> str:
    """A stable LiteLLM deployment id for (upstream, model), so refreshes can add and remove deployments."""
    return f"{upstream.url}#{model}"


def build_deployment(
    index: int, upstream: Upstream, model: str, settings: Settings, group_size: int = 1
) -> dict[str, Any]:
    """One LiteLLM model_list entry: public name = the vLLM served model name.

    Retries only help when another upstream serves the model: with one, the router would back off for
    seconds before answering the same error, so a lone deployment gets none and fails fast.
    """
    timeout = upstream.timeout or settings.request_timeout
    params: dict[str, Any] = {
        "model": f"hosted_vllm/{model}",
        "api_base": upstream.api_base,
        "timeout": timeout,
        "stream_timeout": timeout,
        "max_retries": 0,  # no SDK retries against the same upstream
        "num_retries": settings.num_retries if group_size > 1 else 0,
        # LiteLLM closes an abandoned stream with aiohttp's release(), which keeps the connection open, and vLLM
        # generates to the end (litellm/llms/custom_httpx/aiohttp_transport.py::AiohttpResponseStream.aclose).
        # On a connection that is not kept alive, release() closes it, and vLLM stops.
        "extra_headers": {"Connection": "close"},
    }
    if upstream.api_key is not None:
        params["api_key"] = f"os.environ/{upstream_key_env(index)}"
    return {
        "model_name": model,
        "litellm_params": params,
        "model_info": {"id": deployment_id(upstream, model), "kodify_upstream": upstream.url},
    }


def build_model_list(
    upstreams: Sequence[Upstream], discovered: Mapping[str, Sequence[str]], settings: Settings
) -> list[dict[str, Any]]:
    """Every (upstream, model) pair; the same model on several upstreams becomes one load-balanced group."""
    pairs = [(i, u, m) for i, u in enumerate(upstreams) for m in discovered.get(u.url, u.models or ())]
    sizes = Counter(model for _, _, model in pairs)
    return [build_deployment(i, u, m, settings, sizes[m]) for i, u, m in pairs]


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """Read the proxy_config.yaml template."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the LiteLLM config template must be a YAML mapping")
    return data


def build_litellm_config(
    template: Mapping[str, Any], model_list: list[dict[str, Any]], settings: Settings
) -> dict[str, Any]:
    """The final LiteLLM config: the template with model_list, timeouts and retries filled in."""
    config = copy.deepcopy(dict(template))
    config["model_list"] = model_list
    litellm_settings = config.setdefault("litellm_settings", {})
    litellm_settings["request_timeout"] = settings.request_timeout
    litellm_settings["num_retries"] = settings.num_retries
    config.setdefault("router_settings", {})["num_retries"] = settings.num_retries
    return config


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy with every secret-looking literal replaced by '***' (env references stay readable)."""
    if isinstance(value, Mapping):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str) and any(s in key.lower() for s in _SECRET_KEYS) and not value.startswith("os.environ/"):
        return "***"
    return value


def render_config(config: Mapping[str, Any]) -> str:
    """The config as YAML text, secrets masked."""
    return yaml.safe_dump(mask_secrets(config), sort_keys=False, allow_unicode=True)
