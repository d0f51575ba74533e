"""The LiteLLM callback that adds what only LiteLLM knows to a journaled request: user, upstream, tokens, stream.

Registered in proxy_config.yaml as kodify_proxy.journal.callback.journal_handler, next to kodify_proxy.hooks;
it does nothing when LOGS is off. Payload fields used (LiteLLM 1.106.12, notes/litellm-report.md §3):
`kwargs["litellm_call_id"]` and `kwargs["standard_logging_object"]` with `metadata.user_api_key_user_id`,
`metadata.user_api_key_alias`, `model_group`, `api_base`, `prompt_tokens`, `completion_tokens`, `response`
(a stream arrives once, assembled) and `error_information.error_class`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from litellm.integrations.custom_logger import CustomLogger

from kodify_proxy import runtime
from kodify_proxy.journal.middleware import current_exchange
from kodify_proxy.journal.record import Exchange
from kodify_proxy.upstreams import Upstream

if TYPE_CHECKING:
    from kodify_proxy.journal.service import Journal

log = logging.getLogger("kodify_proxy.journal")


def upstream_name(api_base: object, upstreams: Iterable[Upstream]) -> str | None:
    """The config.yml URL of the upstream LiteLLM called (its api_base plus an endpoint path), else api_base."""
    if not isinstance(api_base, str) or not api_base:
        return None
    for upstream in upstreams:
        if api_base.startswith(upstream.api_base):
            return upstream.url
    return api_base


def _tokens(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def apply_log_event(
    exchange: Exchange, payload: Mapping[str, Any], success: bool, upstreams: Iterable[Upstream]
) -> None:
    """Copy user, model group, upstream and (on success) tokens and response from a standard_logging_object."""
    info = exchange.info
    metadata = payload.get("metadata") or {}
    info.user_id = metadata.get("user_api_key_user_id") or info.user_id
    info.key_alias = metadata.get("user_api_key_alias") or info.key_alias
    info.model = payload.get("model_group") or info.model
    info.upstream = upstream_name(payload.get("api_base"), upstreams) or info.upstream
    if success:
        info.prompt_tokens = _tokens(payload.get("prompt_tokens"))
        info.completion_tokens = _tokens(payload.get("completion_tokens"))
        info.assembled_response = payload.get("response")
        info.saw_success = True
    else:
        error = payload.get("error_information") or {}
        info.error_class = error.get("error_class") or info.error_class
        info.saw_failure = True


class JournalHooks(CustomLogger):
    """Feeds LiteLLM's success and failure events into the open journal exchange of the same request."""

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Tokens, upstream, user and the assembled response of a finished call."""
        self._apply(kwargs, success=True)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Upstream, user and exception class of a failed call (auth, our 400s, upstream errors)."""
        self._apply(kwargs, success=False)

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> Any:
        """The user behind a rejected or failed request; changes nothing in the answer."""
        exchange = self._exchange(request_data.get("litellm_call_id"))
        if exchange is not None:
            exchange.info.user_id = getattr(user_api_key_dict, "user_id", None) or exchange.info.user_id
            exchange.info.key_alias = getattr(user_api_key_dict, "key_alias", None) or exchange.info.key_alias
            exchange.info.error_class = exchange.info.error_class or type(original_exception).__name__
        return None

    @staticmethod
    def _exchange(call_id: object) -> Exchange | None:
        journal: Journal | None = runtime.current().journal
        if journal is None:
            return None
        tracker = journal.tracker
        exchange = tracker.find(call_id)
        if exchange is None:
            # Auth failures carry a call id of LiteLLM's own; the request's context still names the exchange.
            candidate = current_exchange()
            exchange = candidate if candidate is not None and tracker.find(candidate.request_id) else None
        return exchange

    def _apply(self, kwargs: Mapping[str, Any], success: bool) -> None:
        exchange = self._exchange(kwargs.get("litellm_call_id"))
        if exchange is None:
            return
        rt = runtime.current()
        apply_log_event(exchange, kwargs.get("standard_logging_object") or {}, success, rt.monitor.upstreams)
        rt.journal.tracker.updated(exchange)


journal_handler = JournalHooks()
