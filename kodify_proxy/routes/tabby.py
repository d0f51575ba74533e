"""Tabby routes (tabby-agent, Tabby IDE plugins): completions in the autocompletion lane, health, server_setting,
events; each also under /tabby. A Tabby body on /v1/completions is told apart from an OpenAI one by its shape."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson

from kodify_proxy import acceptance, litellm_handoff
from kodify_proxy.asgi import header
from kodify_proxy.call import Call
from kodify_proxy.lane.routing import tabby_key
from kodify_proxy.lane.upstream import UpstreamRequest
from kodify_proxy.protocol import validate
from kodify_proxy.runtime import Runtime
from kodify_proxy.tabby import service
from kodify_proxy.tabby.protocol import CompletionRequest, LogEventRequest, ServerSetting

_COMPLETION_HINT = '; send {"language": "...", "segments": {"prefix": "...", "suffix": "..."}}'


def is_tabby_body(data: dict[str, Any]) -> bool:
    """A Tabby completion: `segments`, and no OpenAI `prompt`."""
    return "segments" in data and "prompt" not in data


async def completions(rt: Runtime, call: Call) -> None:
    """POST /v1/completions (Tabby body), /tabby/v1/completions: FIM prompt, one completion, post-processed."""
    request = validate(CompletionRequest, call.data or {}, what="Tabby completion request ", hint=_COMPLETION_HINT)
    call.exchange.client = acceptance.tabby_client(header(call.scope, b"user-agent"))
    key = tabby_key(call.identity.user_id, request.segments.filepath, request.segments.git_url)

    async def through_lane(model: str, body: bytes) -> bytes:
        served, answer = await call.until_disconnect(
            rt.lane.read(UpstreamRequest(model, "/completions", body, False, key, call.request_id))
        )
        call.exchange.upstream = served.url
        return answer

    async def through_litellm(model: str, body: bytes) -> bytes:
        assert rt.litellm is not None
        return await litellm_handoff.read(rt.litellm, call, rt.monitor, model, "/v1/completions", body)

    fetch = through_litellm if rt.settings.completions_lane == "litellm" else through_lane
    response = await rt.tabby.complete(request, call.exchange, fetch)
    await call.reply(200, orjson.dumps(response.model_dump()))


async def health(rt: Runtime, call: Call) -> None:
    """GET|POST /v1/health: Tabby's shape (`version.git_describe` keeps tabby-agent alive); no upstream call."""
    state = service.build_health(rt.monitor)
    await call.reply(200, orjson.dumps(state.model_dump(exclude_none=True)))


async def server_setting(rt: Runtime, call: Call) -> None:
    """GET /v1beta/server_setting: self-hosted, so clients must not send their own telemetry to TabbyML."""
    await call.reply(200, ServerSetting(disable_client_side_telemetry=True).model_dump_json().encode())


async def events(rt: Runtime, call: Call) -> None:
    """POST /v1/events: a completion was viewed, selected or dismissed; 200 with an empty body, recorded."""
    event = validate(
        LogEventRequest, call.data or {}, what="Tabby event ", hint="; type is one of view, select, dismiss"
    )
    query = parse_qs(call.scope.get("query_string", b"").decode("latin-1"))
    call.exchange.client = acceptance.tabby_client(header(call.scope, b"user-agent"))
    rt.tabby.note_event(event, (query.get("select_kind") or [None])[0], call.exchange)
    await call.reply(200, b"", content_type=None)
