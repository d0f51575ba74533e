"""What LiteLLM calls: its callback (`litellm_settings.callbacks: ["kodify_proxy.hooks.proxy_handler"]`) and its
custom_auth (`general_settings.custom_auth: kodify_proxy.hooks.user_api_key_auth`).

- Auth: the gateway has authenticated every client request; `user_api_key_auth` hands its identity to LiteLLM.

- Routing: LiteLLM's router asks `async_filter_deployments` which deployments may take a call. We keep those whose
  upstream our monitor sees healthy and that this request has not tried yet, so a retry goes to another upstream
  (LiteLLM's own cooldowns are off: one client's bad request must not take an upstream out for everyone).
- Chat streams: `async_post_call_streaming_iterator_hook` passes the chunks on and lets a client's hang-up close
  the upstream request at once (see the method).
- Journal and metrics: LiteLLM's log events add what only LiteLLM knows (upstream, tokens, the assembled stream)
  to the gateway's record of the same request, found by `litellm_call_id` (our request id, passed as the
  `x-litellm-call-id` header). Payload fields (litellm 1.106.12, notes/litellm-report.md §3): `standard_logging_object`
  with `api_base`, `prompt_tokens`, `completion_tokens`, `response`, `error_information.error_class`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import anyio
from fastapi import HTTPException, Request
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

from kodify_proxy import runtime
from kodify_proxy.auth import IDENTITY_SCOPE_KEY, Identity
from kodify_proxy.exchange import apply_log_event


def to_litellm_user(identity: Identity) -> UserAPIKeyAuth:
    """A new UserAPIKeyAuth per request (LiteLLM mutates the one we return); api_key is a hash, never the token."""
    return UserAPIKeyAuth(
        api_key=identity.key_hash,
        user_id=identity.user_id,
        key_alias=identity.key_alias,
        user_role=LitellmUserRoles.INTERNAL_USER,
        allowed_routes=["llm_api_routes"],
    )


async def user_api_key_auth(request: Request, api_key: str | None) -> UserAPIKeyAuth:
    """LiteLLM's custom_auth: the identity our gateway established for this request (parameter names are fixed).

    Without one (the master key, or LiteLLM's own virtual keys on its admin routes) it raises HTTPException, which
    hands the request to LiteLLM's own auth (`custom_auth_settings: {mode: auto}`).
    """
    identity = request.scope.get(IDENTITY_SCOPE_KEY)
    if isinstance(identity, Identity) and not identity.master:
        return to_litellm_user(identity)
    raise HTTPException(status_code=401, detail="not a client request: LiteLLM's own auth decides")


async def close_stream(response: Any) -> None:
    """Close a LiteLLM stream's upstream response (`CustomStreamWrapper.aclose`) and give the event loop the turn
    in which the transport really closes its socket (asyncio closes it in a callback, not in `close()`)."""
    aclose = getattr(response, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
    await asyncio.sleep(0)


def tried_deployments(request_kwargs: Mapping[str, Any] | None) -> set[str]:
    """Deployment ids this request already failed on (LiteLLM's retry breadcrumbs, `metadata.previous_models`)."""
    metadata = (request_kwargs or {}).get("metadata") or (request_kwargs or {}).get("litellm_metadata") or {}
    previous = metadata.get("previous_models") if isinstance(metadata, Mapping) else None
    if not isinstance(previous, list | tuple):
        return set()
    return {str(item["deployment_id"]) for item in previous if isinstance(item, Mapping) and item.get("deployment_id")}


def routable(deployments: list[dict[str, Any]], healthy: set[str], tried: set[str]) -> list[dict[str, Any]]:
    """The deployments to choose from: healthy and untried first; never none while there were some."""

    def upstream(deployment: Mapping[str, Any]) -> str:
        return str((deployment.get("model_info") or {}).get("kodify_upstream", ""))

    def dep_id(deployment: Mapping[str, Any]) -> str:
        return str((deployment.get("model_info") or {}).get("id", ""))

    fresh = [d for d in deployments if dep_id(d) not in tried]
    for candidates in ([d for d in fresh if upstream(d) in healthy], fresh):
        if candidates:
            return candidates
    return deployments


class KodifyHooks(CustomLogger):
    """Deployment filtering by our monitor, and LiteLLM's log events into our request records."""

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list[Any],
        messages: Any,
        request_kwargs: dict[str, Any] | None = None,
        parent_otel_span: Any = None,
    ) -> list[dict[str, Any]]:
        """Deployments on upstreams the monitor sees healthy, and not yet tried by this request."""
        monitor = runtime.current().monitor
        healthy = {state.upstream.url for state in monitor.upstreams_for(model) if state.healthy}
        return routable(list(healthy_deployments), healthy, tried_deployments(request_kwargs))

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        """A chat stream's chunks unchanged, with one turn of the event loop after each, taken inside LiteLLM's own
        generator chain, and the upstream response closed here the moment the client is gone.

        The turn: LiteLLM's chunk loop never suspends while vLLM is ahead of it, so a client's hang-up would go
        unseen until the stream ends; it must be here, not in the ASGI `send`, where Starlette's cancellation
        leaves LiteLLM's generators unclosed. The close: LiteLLM closes the upstream only at the end of its own
        disconnect cleanup (`finalize_streaming_generator_cleanup`), after billing the partial stream, which took
        0.2-3 s of event-loop time on two shared cores, while vLLM went on generating into the open connection.
        `CustomStreamWrapper.aclose` is idempotent (LiteLLM's later call finds nothing left to close); the shielded
        turn after it lets the event loop run the socket's close before LiteLLM's cleanup takes the loop."""
        try:
            async for item in response:
                yield item
                await asyncio.sleep(0)
        except (asyncio.CancelledError, GeneratorExit):
            with anyio.CancelScope(shield=True):
                await close_stream(response)
            raise

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Tokens, upstream and the assembled response of a finished call."""
        self._apply(kwargs, success=True)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Upstream and exception class of a failed call."""
        self._apply(kwargs, success=False)

    @staticmethod
    def _apply(kwargs: Mapping[str, Any], success: bool) -> None:
        rt = runtime.current()
        payload = kwargs.get("standard_logging_object") or {}
        exchange = rt.recorder.find(kwargs.get("litellm_call_id"))
        if exchange is None:
            return
        apply_log_event(exchange, payload, success, rt.monitor.upstreams)
        if exchange.upstream is not None:
            report = rt.monitor.report_success if success else rt.monitor.report_failure
            if success or _server_side(payload):
                report(exchange.upstream)
        rt.recorder.updated(exchange)


def _server_side(payload: Mapping[str, Any]) -> bool:
    """A failure of the upstream (5xx, connection, timeout), not the client's own bad request."""
    error = payload.get("error_information") or {}
    code = str(error.get("error_code") or "")
    return not (code.isdigit() and 400 <= int(code) < 500)


proxy_handler = KodifyHooks()
