"""The OpenAI routes: completions, chat and embeddings in the lane, straight to vLLM (or through LiteLLM:
KODIFY_COMPLETIONS_LANE=litellm, KODIFY_CHAT_LANE=litellm), the model list from what the upstreams themselves say."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import orjson

from kodify_proxy import fim
from kodify_proxy.call import Call
from kodify_proxy.errors import InvalidRequest, ModelNotFound
from kodify_proxy.exchange import Exchange
from kodify_proxy.fim import post as fim_post
from kodify_proxy.fim.stream import SseCutter
from kodify_proxy.lane.relay import StreamPlan, relay_stream, rewrite_choices
from kodify_proxy.lane.routing import conversation_key, prompt_key
from kodify_proxy.lane.upstream import UpstreamRequest
from kodify_proxy.litellm_handoff import ResponseShaper, forward
from kodify_proxy.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    LaneFields,
    SamplingFields,
    lane_fields,
    validate,
)
from kodify_proxy.routes import tabby as tabby_routes
from kodify_proxy.runtime import Runtime
from kodify_proxy.surface import model_name
from kodify_proxy.upstream_monitor import UpstreamMonitor


def note_request(exchange: Exchange, request: SamplingFields | LaneFields) -> None:
    """What the journal and metrics keep of a generation request."""
    exchange.model, exchange.n, exchange.stream = request.model, request.n, bool(request.stream)


async def chat(rt: Runtime, call: Call) -> None:
    """POST /v1/chat/completions: in the lane, straight to vLLM (or through LiteLLM, KODIFY_CHAT_LANE=litellm)."""
    data = call.data or {}
    if rt.settings.chat_lane == "litellm":
        request = validate(ChatCompletionRequest, data, rt.settings.max_n)
        note_request(call.exchange, request)
        rt.monitor.check_model(request.model)
        assert rt.litellm is not None
        await forward(rt.litellm, call, ResponseShaper(call, rt.monitor, request.model))
        return
    fields = lane_fields(data, rt.settings.max_n)
    note_request(call.exchange, fields)
    rt.monitor.check_model(fields.model)
    key = conversation_key(call.identity.user_id, data.get("messages"))
    await call.until_disconnect(_direct(rt, call, "/chat/completions", fields, key))


async def embeddings(rt: Runtime, call: Call) -> None:
    """POST /v1/embeddings: in the lane, straight to vLLM (or through LiteLLM, KODIFY_CHAT_LANE=litellm)."""
    data = call.data or {}
    if rt.settings.chat_lane == "litellm":
        request = validate(EmbeddingRequest, data)
        call.exchange.model = request.model
        rt.monitor.check_model(request.model)
        assert rt.litellm is not None
        await forward(rt.litellm, call, ResponseShaper(call, rt.monitor, request.model))
        return
    fields = lane_fields(data)
    call.exchange.model = fields.model
    rt.monitor.check_model(fields.model)
    await call.until_disconnect(_direct(rt, call, "/embeddings", fields, None))


async def completions(rt: Runtime, call: Call) -> None:
    """POST /v1/completions: a Tabby body (told apart by shape) or an OpenAI one, FIM-rebuilt when configured."""
    data = call.data or {}
    if tabby_routes.is_tabby_body(data):
        await tabby_routes.completions(rt, call)
        return
    if rt.settings.completions_lane == "litellm":
        request = validate(CompletionRequest, data, rt.settings.max_n)
        note_request(call.exchange, request)
        rt.monitor.check_model(request.model)
        await _through_litellm(rt, call, request, _fim_rewrite(rt, data, request))
        return
    fields = lane_fields(data, rt.settings.max_n)
    note_request(call.exchange, fields)
    rt.monitor.check_model(fields.model)
    rewrite = _fim_rewrite(rt, data)
    body = rewrite.body if rewrite is not None else data
    key = prompt_key(call.identity.user_id, body.get("prompt"))
    await call.until_disconnect(_direct(rt, call, "/completions", fields, key, rewrite))


def _fim_rewrite(rt: Runtime, data: dict[str, Any], request: CompletionRequest | None = None) -> fim.FimRewrite | None:
    """The FIM rebuild of an OpenAI completion, with a preprocessing config (`request`: the body already checked).
    In the lane a body that is not a valid completion is not rebuilt: vLLM answers it in its own words."""
    config = rt.preprocessing
    if config is None:
        return None
    if request is None:
        try:
            request = validate(CompletionRequest, data, rt.settings.max_n)
        except InvalidRequest:
            return None
    return fim.rewrite_completion(request, data, config)


def _postprocessor(rt: Runtime, rewrite: fim.FimRewrite | None) -> Any:
    if rewrite is None or rt.preprocessing is None:
        return None
    config, post = rt.preprocessing, rewrite.built.post
    return lambda text: fim_post.postprocess(text, post, config) or ""


def _cutter(rt: Runtime, rewrite: fim.FimRewrite | None) -> SseCutter | None:
    if rewrite is None or rt.preprocessing is None:
        return None
    return SseCutter(partial(fim_post.build_stream_cut, rewrite.built.post, rt.preprocessing))


async def _direct(
    rt: Runtime, call: Call, path: str, fields: LaneFields, key: str | None, rewrite: fim.FimRewrite | None = None
) -> None:
    """One request of the lane: the client's body (or its FIM rebuild) to vLLM, vLLM's answer back as it came."""
    data: dict[str, Any] = rewrite.body if rewrite is not None else (call.data or {})
    options = fields.stream_options(data)  # the usage chunk the journal needs, when the client did not ask for it
    if options is not None:
        data = {**data, "stream_options": options}
    body = call.body if data is call.data else orjson.dumps(data)
    opened = await rt.lane.open(UpstreamRequest(fields.model, path, body, fields.stream, key, call.request_id))
    call.exchange.upstream = opened.upstream.url
    if opened.streams():  # vLLM's answer says whether it streams: it reads `stream` as it sees fit ("yes", 1)
        plan = StreamPlan(call.exchange, drop_usage=options is not None, cutter=_cutter(rt, rewrite))
        await relay_stream(call, opened, plan, rt.monitor, rt.settings.stream_idle_timeout)
        return
    answer = await rt.lane.whole(opened)
    await call.reply(200, rewrite_choices(answer, call.exchange, _postprocessor(rt, rewrite)))


async def _through_litellm(rt: Runtime, call: Call, request: CompletionRequest, rewrite: fim.FimRewrite | None) -> None:
    shaper = ResponseShaper(call, rt.monitor, request.model)
    postprocess = _postprocessor(rt, rewrite)
    if postprocess is not None and request.stream:
        shaper.cutter = _cutter(rt, rewrite)
    elif postprocess is not None:

        async def transform(body: bytes) -> bytes:
            return rewrite_choices(body, call.exchange, postprocess)

        shaper.transform = transform
    assert rt.litellm is not None
    await forward(rt.litellm, call, shaper, body=orjson.dumps(rewrite.body) if rewrite is not None else None)


def build_model_list(monitor: UpstreamMonitor) -> dict[str, Any]:
    """Every routable model as its upstream describes it (vLLM's card: max_model_len, root, parent, …)."""
    cards: dict[str, dict[str, Any]] = {}
    for state in sorted(monitor.states.values(), key=lambda s: not s.healthy):
        for card in state.model_cards:
            if isinstance(card, dict) and card.get("id") in state.models:
                cards.setdefault(str(card["id"]), dict(card))
    created = int(time.time())
    data = [
        cards.get(m) or {"id": m, "object": "model", "created": created, "owned_by": "vllm"}
        for m in monitor.served_models()
    ]
    return {"object": "list", "data": data}


async def models(rt: Runtime, call: Call) -> None:
    """GET /v1/models: answered from the monitor's last look at the upstreams (no upstream call)."""
    await call.reply(200, orjson.dumps(build_model_list(rt.monitor)))


async def model(rt: Runtime, call: Call) -> None:
    """GET /v1/models/{model} (the OpenAI SDKs' `models.retrieve`): that model's entry of the list, else 404."""
    name = model_name(call.scope["path"])
    call.exchange.model = name
    found = next((card for card in build_model_list(rt.monitor)["data"] if card["id"] == name), None)
    if found is None:
        listed = ", ".join(rt.monitor.served_models()) or "none (no upstream has answered yet)"
        raise ModelNotFound(f"The model {name!r} does not exist. Served models: {listed}", param="model")
    await call.reply(200, orjson.dumps(found))
