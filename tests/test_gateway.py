"""The gateway on its own, in process: which requests reach LiteLLM and which are ours to answer. LiteLLM's app is
replaced by a recorder that answers 200 (the process-level tests, tests/test_surface.py, run the real one)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from kodify_proxy.auth import IDENTITY_SCOPE_KEY, SHARED_USER
from kodify_proxy.gateway import Gateway
from kodify_proxy.runtime import build_runtime
from kodify_proxy.settings import load_settings
from kodify_proxy.upstream_monitor import UpstreamMonitor
from kodify_proxy.upstreams import UpstreamState, parse_config

TOKEN, MASTER = "sk-gateway-client-token", "sk-gateway-master-key"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class LiteLLM:
    """Stands in for LiteLLM's ASGI app: records what reaches it and answers 200 {"served_by": "litellm"}."""

    def __init__(self) -> None:
        self.seen: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope)
        body = json.dumps({"served_by": "litellm"}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def gateway(tmp_path: Path, **env: str) -> tuple[Gateway, LiteLLM]:
    settings = load_settings({"VLLM_API_KEY": TOKEN, "KODIFY_STATE_DIR": str(tmp_path), **env})
    config = parse_config("upstreams:\n  http://u:8000:\n", tmp_path / "config.yml")
    states = [UpstreamState(upstream=config.upstreams[0], healthy=True, models=("m",))]
    runtime = build_runtime(settings, config, UpstreamMonitor(config, settings, states), MASTER, None, None, None)
    litellm = LiteLLM()
    return Gateway(litellm, runtime), litellm


def call(app: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_route_nobody_documented_is_ours_to_refuse_with_or_without_a_client_token(tmp_path: Path) -> None:
    app, litellm = gateway(tmp_path)
    for headers in ({}, bearer(TOKEN)):
        for method, path in (("POST", "/key/generate"), ("GET", "/vllm/tokenize"), ("POST", "/v1/messages")):
            error = error_of(call(app, method, path, headers=headers, json={}), 404, "route_not_found")
            assert error["message"].startswith(f"No route {path} on this server")
    assert litellm.seen == []


def test_the_master_key_reaches_litellms_administration(tmp_path: Path) -> None:
    app, litellm = gateway(tmp_path)
    assert call(app, "POST", "/key/generate", headers=bearer(MASTER), json={}).json() == {"served_by": "litellm"}
    assert [scope["path"] for scope in litellm.seen] == ["/key/generate"]


def test_a_known_path_with_another_method_is_a_405_that_says_which(tmp_path: Path) -> None:
    app, _ = gateway(tmp_path)
    response = call(app, "GET", "/v1/chat/completions", headers=bearer(TOKEN))
    error = error_of(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST" and "use POST" in error["message"]


def test_auth_comes_before_the_body(tmp_path: Path) -> None:
    app, litellm = gateway(tmp_path)
    error_of(call(app, "POST", "/v1/chat/completions", content=b"[]"), 401, "invalid_api_key")
    error_of(call(app, "POST", "/v1/chat/completions", headers=bearer("sk-wrong"), json=CHAT), 401, "invalid_api_key")
    form = call(app, "POST", "/v1/chat/completions", headers=bearer(TOKEN), data={"a": "b"})
    assert error_of(form, 400, "unsupported_media_type")["param"] == "content-type"
    assert error_of(call(app, "POST", "/v1/chat/completions", headers=bearer(TOKEN), content=b"[]"), 400, "400")
    assert litellm.seen == []


def test_a_chat_reaches_litellm_with_our_identity_and_request_id(tmp_path: Path) -> None:
    app, litellm = gateway(tmp_path, KODIFY_CHAT_LANE="litellm")
    response = call(app, "POST", "/v1/chat/completions", headers=bearer(TOKEN), json=CHAT)
    assert response.json() == {"served_by": "litellm"}
    (scope,) = litellm.seen
    request_id = response.headers["x-litellm-call-id"]
    assert dict(scope["headers"])[b"x-litellm-call-id"] == request_id.encode()
    assert scope[IDENTITY_SCOPE_KEY] == SHARED_USER  # what custom_auth hands LiteLLM: one shared token here


def test_a_model_nobody_serves_never_reaches_litellm(tmp_path: Path) -> None:
    app, litellm = gateway(tmp_path)
    response = call(app, "POST", "/v1/chat/completions", headers=bearer(TOKEN), json={**CHAT, "model": "gpt-4o"})
    assert "Served models: m" in error_of(response, 404, "model_not_found")["message"]
    assert litellm.seen == []


@pytest.mark.parametrize("path", ["/login", "/v2/login"])
def test_the_ui_sign_in_needs_litellms_database(tmp_path: Path, path: str) -> None:
    app, litellm = gateway(tmp_path)
    error = error_of(call(app, "POST", path, data={"username": "admin", "password": MASTER}), 503, "ui_needs_database")
    assert "DATABASE_URL is not set" in error["message"] and litellm.seen == []
    assert call(app, "GET", "/ui/").json() == {"served_by": "litellm"}  # the UI's pages are LiteLLM's
    with_database, litellm = gateway(tmp_path, DATABASE_URL="postgresql://u:p@db:5432/litellm")
    assert call(with_database, "POST", path, data={"username": "admin"}).json() == {"served_by": "litellm"}


def test_open_routes_need_no_token(tmp_path: Path) -> None:
    app, litellm = gateway(tmp_path)
    assert call(app, "GET", "/health/liveliness").status_code == 200
    # With a token in use, /metrics wants Prometheus' own credential (tests/test_prometheus_metrics.py).
    assert call(app, "GET", "/metrics").status_code == 401
    assert call(app, "GET", "/metrics", headers={"Authorization": f"Bearer {MASTER}"}).text.startswith("# HELP")
    assert litellm.seen == []


def test_metrics_are_open_with_dummy_auth_whatever_the_header_says(tmp_path: Path) -> None:
    app, _ = gateway(tmp_path, VLLM_API_KEY="")
    # Prometheus with an empty token file sends `Bearer ` and nothing after it.
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
        assert call(app, "GET", "/metrics", headers=headers).status_code == 200, headers
