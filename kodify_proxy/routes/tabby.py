"""Tabby routes (tabby-agent, Tabby IDE plugins): completions in the autocompletion lane, health, server_setting,
events; each also under /tabby. A Tabby body on /v1/completions is told apart from an OpenAI one by its shape."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson

from kodify_proxy.call import Call
from kodify_proxy.errors import UpstreamFailed
from kodify_proxy.exchange import note_usage
from kodify_proxy.lane.routing import tabby_key
from kodify_proxy.lane.upstream import UpstreamRequest
from kodify_proxy.litellm_path import ResponseShaper, forward
from kodify_proxy.protocol import validate
from kodify_proxy.runtime import Runtime
from kodify_proxy.tabby import service
from kodify_proxy.tabby.protocol import CompletionRequest, LogEventRequest, ServerSetting

_COMPLETION_HINT = '; send {"language": "...", "segments": {"prefix": "...", "suffix": "..."}}'


def is_tabby_body(data: dict[str, Any]) -> bool:
    """A Tabby completion: `segments`, and no OpenAI `prompt`."""
    return "segments" in data and "prompt" not in data


def _answer(body: bytes) -> dict[str, Any]:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise UpstreamFailed("The completion came back as something other than a JSON object; check the upstream")
    return answer


async def completions(rt: Runtime, call: Call) -> None:
    """POST /v1/completions (Tabby body), /tabby/v1/completions: FIM prompt, one completion, post-processed."""
    request = validate(CompletionRequest, call.data or {}, what="Tabby completion request ", hint=_COMPLETION_HINT)
    model = service.tabby_model(rt.monitor)
    config = service.tabby_config(rt.preprocessing)
    exchange = call.exchange
    exchange.model, exchange.language = model, service.language_label(request.language, config)
    rt.monitor.check_model(model)
    body, built = service.build_openai_body(request, model, config)

    async def tabby_answer(openai_answer: bytes) -> bytes:
        answer = _answer(openai_answer)
        note_usage(exchange, answer.get("usage"))
        response = service.build_response(answer, built.post, config)
        exchange.completion_id = response.id
        rt.completions.remember(response.id, service.Served(model, exchange.language))
        return orjson.dumps(response.model_dump())

    if rt.settings.completions_lane == "litellm":
        assert rt.litellm is not None
        shaper = ResponseShaper(call, rt.monitor, model, transform=tabby_answer)
        await forward(rt.litellm, call, shaper, path="/v1/completions", body=orjson.dumps(body))
        return
    segments = request.segments
    key = tabby_key(call.identity.user_id, segments.filepath, segments.git_url)
    upstream = UpstreamRequest(model, "/completions", orjson.dumps(body), False, key, call.request_id)
    served, answer = await call.until_disconnect(rt.lane.read(upstream))
    exchange.upstream = served.url
    await call.reply(200, await tabby_answer(answer))


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
    select_kind = (query.get("select_kind") or [None])[0]
    exchange = call.exchange
    exchange.event = service.build_event(event, select_kind)
    exchange.completion_id = event.completion_id
    served = rt.completions.get(event.completion_id)
    if served is not None:
        exchange.model, exchange.language = served.model, served.language
    await call.reply(200, b"", content_type=None)
