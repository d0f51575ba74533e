"""The outer ASGI app: it owns the client surface and hands LiteLLM only what LiteLLM should serve.

For every request: look the route up in the one table (`surface.ROUTES`); authenticate before anything else;
read and parse the body once (bounded, JSON only); serve it from our handlers (the autocompletion lane, Tabby,
models, health, metrics) or pass it to LiteLLM (chat, embeddings); record it once for the journal and metrics.
Any other route is LiteLLM's administration and needs the master key; without it, a 404. Every error is ours.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kodify_proxy import surface
from kodify_proxy.asgi import header, read_body, send_error
from kodify_proxy.auth import ANONYMOUS, MASTER, Identity, presented_token
from kodify_proxy.call import REQUEST_ID_HEADER, Call, ClientLeft
from kodify_proxy.errors import (
    InternalError,
    KodifyError,
    MethodNotAllowed,
    RouteNotFound,
    UiUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from kodify_proxy.exchange import Exchange
from kodify_proxy.limits import ROUTE_KINDS, RateLimited
from kodify_proxy.protocol import parse_object
from kodify_proxy.request_recorder import observed_receive, observed_send
from kodify_proxy.routes import HANDLERS
from kodify_proxy.runtime import Runtime

log = logging.getLogger("kodify_proxy.gateway")


def is_json(content_type: str | None) -> bool:
    """No Content-Type (FastAPI and vLLM read JSON then), application/json, or any application/*+json."""
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


UI_NEEDS_DATABASE = (
    "LiteLLM's admin UI cannot sign you in: it keeps its sessions and keys in a PostgreSQL database of its own, and "
    "DATABASE_URL is not set. Set DATABASE_URL to a separate database (e.g. postgresql://user:pass@db:5432/litellm) "
    "in an image built with Prisma generated (docs/deployment.md, 'The LiteLLM admin UI'); the API needs neither"
)


class Gateway:
    """kodify-proxy's ASGI app, in front of LiteLLM's."""

    def __init__(self, litellm: ASGIApp, runtime: Runtime) -> None:
        self.litellm = litellm
        self.rt = runtime
        self._ui_database = runtime.settings.litellm_database_url is not None
        runtime.litellm = litellm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.litellm(scope, receive, self._lifespan_send(send))
        else:  # websockets: none of our routes, and LiteLLM's realtime API is not offered
            await send({"type": "websocket.close", "code": 1008})

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                from litellm.proxy import proxy_server

                self.rt.start(lambda: proxy_server.llm_router)
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.rt.stop()  # uvicorn re-raises SIGTERM once the lifespan is over: the last moment
            await send(message)

        return lifespan_send

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = surface.match(scope["method"], scope["path"])
        if found.route is not None:
            await self._route(found.route, scope, receive, send)
        elif found.ui and scope["method"] == "POST" and scope["path"] in surface.UI_LOGINS and not self._ui_database:
            await send_error(send, UiUnavailable(UI_NEEDS_DATABASE))
        elif found.ui:
            await self.litellm(scope, receive, send)  # LiteLLM's admin UI pages and login check credentials itself
        elif self._administrator(scope):
            await self.litellm(scope, receive, send)
        elif found.wrong_method:
            allowed = ", ".join(sorted(found.wrong_method))
            error = MethodNotAllowed(
                f"{scope['method']} is not allowed on {scope['path']}; use {allowed}", headers={"allow": allowed}
            )
            await send_error(send, error)
        else:
            await send_error(send, RouteNotFound(_not_found_message(scope["path"])))

    def _administrator(self, scope: Scope) -> bool:
        """The master key: LiteLLM's administration routes and UI API are its alone."""
        try:
            return self.rt.authenticator.is_master(presented_token(_auth_headers(scope)))
        except Unauthorized:
            return False

    async def _route(self, route: surface.Route, scope: Scope, receive: Receive, send: Send) -> None:
        recorder = self.rt.recorder
        exchange = recorder.begin(route.label, scope, tracked=route.journaled)
        receive, send = (
            observed_receive(exchange, receive),
            observed_send(exchange, send, responding=recorder.responding),
        )
        headers = [(REQUEST_ID_HEADER, exchange.request_id.encode())] if route.journaled else []
        try:
            identity = await self._identity(route, scope)
            exchange.user_id, exchange.key_alias = identity.user_id, identity.key_alias
            await self._admit(route, scope, identity, exchange)
            call = Call(route, scope, receive, send, identity, exchange)
            if route.json_body and not await self._read_json(call):
                return
            recorder.identified(exchange)
            await HANDLERS[route.kind](self.rt, call)
        except ClientLeft:
            exchange.disconnected = True
        except KodifyError as error:
            if exchange.status is None:
                exchange.took_error(error.error_type, error.message)
                await send_error(send, error, headers)
        except Exception:
            log.exception("Request %s to %s failed", exchange.request_id, scope["path"])
            if exchange.status is None:
                bug = InternalError(f"Internal error; the server log has the details (request {exchange.request_id})")
                exchange.took_error(bug.error_type, bug.message)
                await send_error(send, bug, headers)
        finally:
            recorder.end(exchange)

    async def _admit(self, route: surface.Route, scope: Scope, identity: Identity, exchange: Exchange) -> None:
        """The caller's limits for this kind of work (KODIFY_LIMIT_*): counted in, or a 429 before anything else
        is done (the body is not read, no upstream is asked)."""
        kind = ROUTE_KINDS.get(route.kind)
        if kind is None or identity.master or not (self.rt.limiter.active() or identity.limits):
            return
        key, who = limit_identity(identity, scope)
        try:
            if await self.rt.limiter.admit(key, kind, exchange.request_id, who, identity.limits):
                exchange.limited = (key, kind)
        except RateLimited as refused:
            exchange.rate_limited = refused.code
            raise

    async def _identity(self, route: surface.Route, scope: Scope) -> Identity:
        """Auth before anything else; open routes need none, /metrics its own credential whenever auth is on."""
        if route.auth == "open":
            return MASTER if self._administrator(scope) else ANONYMOUS
        if route.auth == "metrics":
            return self.rt.authenticator.scraper(_auth_headers(scope))
        return await self.rt.authenticator.client(presented_token(_auth_headers(scope)))

    async def _read_json(self, call: Call) -> bool:
        """The body, read once and parsed into `call.data`; False when the client left first."""
        content_type = header(call.scope, b"content-type")
        if not is_json(content_type):
            raise UnsupportedMediaType(
                f"Unsupported Media Type: the body must be JSON, got Content-Type {content_type!r}; "
                "send 'Content-Type: application/json'",
                param="content-type",
            )
        settings = self.rt.settings
        if call.route.event:
            limit, setting = settings.event_max_bytes, "KODIFY_EVENT_MAX_BYTES"
        else:
            limit, setting = settings.max_body_bytes, "KODIFY_MAX_BODY_BYTES"
        body = await read_body(call.receive, limit, settings.body_timeout, setting)
        if body is None:
            call.exchange.disconnected = True
            return False
        call.body = call.exchange.request_body = body
        call.data = parse_object(body)
        model = call.data.get("model")
        call.exchange.model = model if isinstance(model, str) else None
        return True


def _auth_headers(scope: Scope) -> dict[str, str]:
    found = {}
    for name in (b"authorization", b"x-api-key"):
        value = header(scope, name)
        if value is not None:
            found[name.decode()] = value
    return found


def limit_identity(identity: Identity, scope: Scope) -> tuple[str, str]:
    """Whom limits count for (a key, and how a 429 names them): the user of a per-user token, else the client's
    address as uvicorn gives it (X-Forwarded-For is used only from FORWARDED_ALLOW_IPS, 127.0.0.1 by default)."""
    if identity.key_hash is not None:
        return f"user:{identity.user_id}", f"user {identity.user_id}"
    client = scope.get("client")
    address = str(client[0]) if client else "unknown"
    return f"addr:{address}", f"client {address}"


def _not_found_message(path: str) -> str:
    return (
        f"No route {path} on this server: it serves the OpenAI API (/v1/chat/completions, /v1/completions, "
        "/v1/embeddings, /v1/models), the Tabby API and /health (README, 'HTTP')"
    )
