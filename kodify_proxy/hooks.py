"""The LiteLLM CustomLogger: request limits and checks before the call, clear errors after a failure."""

from __future__ import annotations

import ast
import json
import logging
import re
from typing import Any

import httpx
import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

from kodify_proxy import runtime
from kodify_proxy.errors import (
    InvalidRequest,
    KodifyError,
    ModelNotFound,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from kodify_proxy.fim import (
    build_stream_cut,
    post_from_state,
    post_state,
    postprocess_choices,
    rewrite_openai_body,
)
from kodify_proxy.fim_stream import SseCutter
from kodify_proxy.middleware import file_error, file_stream_cutter
from kodify_proxy.monitor import UpstreamMonitor
from kodify_proxy.preprocess import PreprocessingConfig
from kodify_proxy.protocol import validate_request

log = logging.getLogger("kodify_proxy.hooks")

# aiohttp (LiteLLM's default transport) and openai SDK connection errors, by name to avoid importing them.
_CONNECTION_ERROR_NAMES = frozenset(
    {"ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError", "ClientOSError"}
)
_CONNECTION_MESSAGES = ("Cannot connect to host", "OpenAIException - Connection error", "Connection refused")
_GENERATION_CALLS = frozenset({"acompletion", "atext_completion", "completion", "text_completion"})
_MODEL_CALLS = _GENERATION_CALLS | {"aembedding", "embedding"}
_TEXT_CALLS = frozenset({"atext_completion", "text_completion"})
_FIM_STATE = "kodify_fim"  # metadata key: what post-processing needs, from the pre-call hook to the success hook


def check_n(data: dict[str, Any], max_n: int) -> None:
    """`n` must be a whole number from 1 to MAX_N."""
    n = data.get("n")
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidRequest(f"n must be a whole number from 1 to {max_n}, got {n!r}", param="n")
    if not 1 <= n <= max_n:
        raise InvalidRequest(
            f"n={n} is out of range: this server allows 1 to {max_n} choices per request (MAX_N={max_n})",
            param="n",
        )


def check_model(model: Any, monitor: UpstreamMonitor) -> None:
    """The model must be served by some upstream, and one of those upstreams must be up."""
    served = monitor.served_models()
    if not isinstance(model, str) or model not in served:
        listed = ", ".join(served) or "none (no upstream has answered yet)"
        raise ModelNotFound(f"The model {model!r} does not exist. Served models: {listed}", param="model")
    states = monitor.upstreams_for(model)
    if states and not any(s.healthy for s in states):
        down = "; ".join(f"{s.upstream.url} ({s.error})" for s in states)
        raise UpstreamUnavailable(
            f"No upstream serving {model!r} is reachable: {down}. Check that the vLLM server is running; "
            "requests resume as soon as it answers GET /v1/models"
        )


def to_proxy_exception(error: KodifyError) -> ProxyException:
    """Our error as LiteLLM's OpenAI-shaped exception."""
    return ProxyException(
        message=error.message, type=error.error_type, param=error.param, code=error.status_code, openai_code=error.code
    )


def _upstream_names(data: dict[str, Any], monitor: UpstreamMonitor) -> str:
    model = data.get("model")
    urls = [s.upstream.url for s in monitor.upstreams_for(model)] if isinstance(model, str) else []
    return ", ".join(urls) or "the upstream"


_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, ConnectionError)


def is_connection_failure(exc: BaseException) -> bool:
    """True when a connection error (refused, reset, unreachable) is anywhere in the exception chain.

    LiteLLM labels its own transformation crashes APIConnectionError too, so the type alone says nothing;
    and the router's re-raise on the text-completion path drops the chain, leaving only the message.
    """
    if any(marker in str(getattr(exc, "message", exc)) for marker in _CONNECTION_MESSAGES):
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _CONNECTION_ERRORS) or type(current).__name__ in _CONNECTION_ERROR_NAMES:
            return True
        current = current.__cause__ or current.__context__ or getattr(current, "original_exception", None)
    return False


_PARAMETER_HINT = re.compile(r"\(parameter=([A-Za-z_][A-Za-z0-9_.]*)")


def upstream_rejection(exc: Exception) -> UpstreamRejected | None:
    """The upstream's own 4xx error, dug out of the text LiteLLM wraps it in (JSON or a Python dict repr)."""
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", exc))
    start = message.find("{") if isinstance(status, int) and 400 <= status < 500 else -1
    if start < 0:
        return None
    error = _parse_error_body(message[start:])
    if error is None or not isinstance(error.get("message"), str):
        return None
    param = error.get("param")
    hint = _PARAMETER_HINT.search(error["message"])
    if not isinstance(param, str):
        param = hint.group(1) if hint else None
    return UpstreamRejected(error["message"], status_code=int(status), param=param)  # type: ignore[arg-type]


def _parse_error_body(text: str) -> dict[str, Any] | None:
    end = text.rfind("}") + 1
    for parse in (json.loads, ast.literal_eval):
        try:
            body = parse(text[:end])
        except (ValueError, SyntaxError):
            continue
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return dict(body["error"])
    return None


def classify_failure(exc: Exception, data: dict[str, Any], monitor: UpstreamMonitor) -> KodifyError | None:
    """Map an upstream failure to a clear error; None keeps LiteLLM's."""
    rejected = upstream_rejection(exc)
    if rejected is not None:
        return rejected
    upstreams = _upstream_names(data, monitor)
    if isinstance(exc, litellm.exceptions.Timeout):
        timeout = monitor.settings.request_timeout
        return UpstreamTimeout(f"Upstream {upstreams} did not answer within {timeout:g} s (KODIFY_REQUEST_TIMEOUT)")
    message = str(getattr(exc, "message", exc))
    if "No healthy deployment available" in message or "No deployments available" in message:
        return UpstreamUnavailable(
            f"Every upstream serving {data.get('model')!r} ({upstreams}) is failing; retry in a few seconds"
        )
    if is_connection_failure(exc):
        return UpstreamFailed(f"Upstream {upstreams} refused the connection or broke it: check the vLLM server")
    return None


def apply_fim(data: dict[str, Any], config: PreprocessingConfig | None) -> None:
    """COMPLETIONS_PREPROCESSING_CONFIG on /v1/completions: `suffix` or foreign FIM tokens -> the model's prompt.

    Tabby requests (metadata.kodify_api == "tabby") arrive with the prompt already built by kodify_proxy.tabby.
    """
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        metadata = data["metadata"] = {}
    if config is None or metadata.get("kodify_api") == "tabby":
        return
    built = rewrite_openai_body(data, config)
    if built is None:
        return
    metadata[_FIM_STATE] = post_state(built.post)
    if data.get("stream") is True:
        post = built.post
        file_stream_cutter(SseCutter(lambda: build_stream_cut(post, config)))


class KodifyHooks(CustomLogger):
    """LiteLLM callback registered in proxy_config.yaml as kodify_proxy.hooks.proxy_handler."""

    # LiteLLM only calls a pre-call hook defined on the leaf class (litellm/proxy/utils.py, `vars(cls)`).
    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        """Reject n > MAX_N, unknown models and models whose upstreams are all down, before any upstream call."""
        if call_type not in _MODEL_CALLS:
            return data
        rt = runtime.current()
        try:
            if call_type in _GENERATION_CALLS:
                check_n(data, rt.settings.max_n)
            validate_request(call_type, data)
            check_model(data.get("model"), rt.monitor)
            if call_type in _TEXT_CALLS:
                apply_fim(data, rt.preprocessing)
        except KodifyError as error:
            raise to_proxy_exception(error) from None
        return data

    async def async_post_call_success_hook(self, data: dict[str, Any], user_api_key_dict: Any, response: Any) -> Any:
        """Clean FIM completions by the preprocessing config's rules (non-streamed /v1/completions)."""
        state = (data.get("metadata") or {}).get(_FIM_STATE)
        config = runtime.current().preprocessing
        if isinstance(state, dict) and config is not None:
            postprocess_choices(response, post_from_state(state), config)
        return None

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> Any:
        """Turn connection failures, timeouts and cooldowns into 502/503/504 naming the upstream."""
        if isinstance(original_exception, ProxyException):
            return None
        monitor = runtime.current().monitor
        if is_connection_failure(original_exception):
            monitor.request_refresh()
        error = classify_failure(original_exception, request_data, monitor)
        if error is not None:
            file_error(error)  # sent by ErrorShapingMiddleware in place of LiteLLM's answer, on every route
        return None


proxy_handler = KodifyHooks()
