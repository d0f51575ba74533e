"""Tabby routes: POST /v1/completions told apart from OpenAI bodies by shape, /v1/health, /v1beta/server_setting,
/v1/events; each also under /tabby. A Tabby completion becomes an OpenAI completion served by LiteLLM's own
/v1/completions route, so auth, hooks, retries and logging are the same as for every other request."""

from __future__ import annotations

import json
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from litellm.proxy._types import UserAPIKeyAuth
from litellm.proxy.auth.user_api_key_auth import user_api_key_auth
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kodify_proxy import runtime
from kodify_proxy.errors import InvalidRequest, KodifyError, UpstreamFailed
from kodify_proxy.middleware import send_json
from kodify_proxy.tabby import service
from kodify_proxy.tabby.protocol import HealthState, LogEventRequest, ServerSetting

COMPLETION_PATHS: Final = frozenset({"/v1/completions", "/completions"})
TABBY_PREFIX: Final = "/tabby"
TABBY_PATHS: Final = frozenset({"/v1/completions", "/v1/health", "/v1/events", "/v1beta/server_setting"})
_KEPT_HEADERS: Final = frozenset({b"x-litellm-call-id", b"x-request-id"})
_SEGMENTS_KEY: Final = b'"segments"'

router = APIRouter(tags=["tabby"])
# LiteLLM's own auth dependency: our custom_auth (kodify_proxy.auth) plus the master key, as on every route.
Authenticated = Annotated[UserAPIKeyAuth, Depends(user_api_key_auth)]


@router.api_route("/v1/health", methods=["GET", "POST"], response_model_exclude_none=True)
async def health(_: Authenticated) -> HealthState:
    """Tabby's health (clients try GET, then POST); `version.git_describe` keeps tabby-agent alive."""
    return service.build_health(runtime.current())


@router.get("/v1beta/server_setting")
async def server_setting(_: Authenticated) -> ServerSetting:
    """Self-hosted: clients must not send their own telemetry to TabbyML."""
    return ServerSetting(disable_client_side_telemetry=True)


@router.post("/v1/events")
async def events(request: Request, user: Authenticated, select_kind: str | None = None) -> Response:
    """A completion was viewed, selected or dismissed: 200 with an empty body, journaled when LOGS is on."""
    try:
        event = LogEventRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        invalid = InvalidRequest(
            f"Invalid Tabby event: '{param or 'body'}': {first['msg']}; type is one of view, select, dismiss",
            param=param,
        )
        return JSONResponse(invalid.to_body(), status_code=invalid.status_code)
    rt = runtime.current()
    await service.record_event(rt, service.build_event(event, select_kind, user.user_id))
    return Response(status_code=200)


def is_tabby_body(body: bytes) -> bool:
    """A JSON object with `segments` and no `prompt` (the byte check keeps OpenAI bodies from being parsed)."""
    if _SEGMENTS_KEY not in body:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and "segments" in data and "prompt" not in data


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client left first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` once, then waits on the client (for disconnects) as before."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _with_path(scope: Scope, path: str) -> Scope:
    return {**scope, "path": path, "raw_path": path.encode()}


def _with_json_body(scope: Scope, length: int) -> Scope:
    drop = {b"content-length", b"content-type", b"transfer-encoding"}
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in drop]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
    return {**scope, "headers": headers}


class _Captured:
    """The response of an inner ASGI call, kept in memory (non-streaming completions only)."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    async def forward(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": bytes(self.body), "more_body": False})


class TabbyDispatch:
    """ASGI layer in front of LiteLLM: serves Tabby completions through LiteLLM's /v1/completions, strips /tabby."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        tabby_only = path.startswith(TABBY_PREFIX) and path[len(TABBY_PREFIX) :] in TABBY_PATHS
        if tabby_only:
            scope = _with_path(scope, path[len(TABBY_PREFIX) :])
        if scope["method"] != "POST" or scope["path"] not in COMPLETION_PATHS:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return
        if tabby_only or is_tabby_body(body):
            await self._complete(scope, body, receive, send)
        else:
            await self.app(scope, replay(body, receive), send)

    async def _complete(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        rt = runtime.current()
        try:
            request = service.parse_request(body)
            config = service.tabby_config(rt)
            openai_body, built = service.build_openai_body(request, service.tabby_model(rt), config)
        except KodifyError as error:
            await send_json(send, error.status_code, error.to_body())
            return
        payload = json.dumps(openai_body, ensure_ascii=False).encode()
        inner = _with_json_body(_with_path(scope, "/v1/completions"), len(payload))
        captured = _Captured()
        await self.app(inner, replay(payload, receive), captured.send)
        if captured.status != 200:
            await captured.forward(send)  # already OpenAI-shaped (auth, hooks, upstream errors)
            return
        try:
            answer = json.loads(captured.body)
        except ValueError:
            broken = UpstreamFailed("The completion came back as something other than JSON; check the upstream")
            await send_json(send, broken.status_code, broken.to_body())
            return
        response = service.build_response(answer, built.post, config)
        kept = [(k, v) for k, v in captured.headers if k.lower() in _KEPT_HEADERS]
        await send_json(send, 200, response.model_dump(), kept)
