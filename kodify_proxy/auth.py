"""LiteLLM custom_auth: the guide's dummy and one-token modes (per-user DB tokens come with the auth issue)."""

from __future__ import annotations

import hmac
import logging

from fastapi import HTTPException, Request
from litellm.proxy._types import LitellmUserRoles, ProxyException, UserAPIKeyAuth

from kodify_proxy import runtime

log = logging.getLogger("kodify_proxy.auth")

_ANONYMOUS = UserAPIKeyAuth(user_id="anonymous", key_alias="kodify-dummy", user_role=LitellmUserRoles.INTERNAL_USER)


def _unauthorized(message: str) -> ProxyException:
    return ProxyException(message=message, type="auth_error", param=None, code=401, openai_code="invalid_api_key")


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """Authenticate one request; parameter names are fixed by LiteLLM (`request`, `api_key`)."""
    rt = runtime.current()
    if api_key and hmac.compare_digest(api_key.encode(), rt.master_key.encode()):
        # Not ours to accept: raising a non-ProxyException hands the master key to LiteLLM's own auth
        # (custom_auth_settings mode auto), so the admin routes and UI keep working.
        raise HTTPException(status_code=401, detail="master key: handled by LiteLLM")
    shared = rt.settings.vllm_api_key
    if shared is None:
        return _ANONYMOUS
    if not api_key:
        raise _unauthorized("Missing API key: send 'Authorization: Bearer <token>' (the token is VLLM_API_KEY)")
    if not hmac.compare_digest(api_key.encode(), shared.get_secret_value().encode()):
        raise _unauthorized("Invalid API key: it does not match the server's token (VLLM_API_KEY)")
    return UserAPIKeyAuth(user_id="shared", key_alias="kodify-shared-token", user_role=LitellmUserRoles.INTERNAL_USER)
