"""The OpenAI routes: completions in the autocompletion lane (or through LiteLLM, KODIFY_COMPLETIONS_LANE=litellm),
chat and embeddings through LiteLLM, the model list from what the upstreams themselves say."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import orjson

from kodify_proxy import fim, fim_post
from kodify_proxy.call import Call
from kodify_proxy.exchange import Exchange
from kodify_proxy.fim_stream import SseCutter
from kodify_proxy.lane.relay import StreamPlan, relay_stream, rewrite_choices
from kodify_proxy.lane.routing import prompt_key
from kodify_proxy.lane.upstream import UpstreamRequest
from kodify_proxy.litellm_path import ResponseShaper, forward
from kodify_proxy.monitor import UpstreamMonitor
from kodify_proxy.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, SamplingFields, validate
from kodify_proxy.runtime import Runtime
from kodify_proxy.tabby import routes as tabby_routes


def note_request(exchange: Exchange, request: SamplingFields) -> None:
    """What the journal and metrics keep of a generation request."""
    exchange.model, exchange.n, exchange.stream = request.model, request.n, bool(request.stream)


async def chat(rt: Runtime, call: Call) -> None:
    """POST /v1/chat/completions: checked here, served by LiteLLM's router."""
    request = validate(ChatCompletionRequest, call.data or {}, rt.settings.max_n)
    note_request(call.exchange, request)
    rt.monitor.check_model(request.model)
    assert rt.litellm is not None
    await forward(rt.litellm, call, ResponseShaper(call, rt.monitor, request.model))


async def embeddings(rt: Runtime, call: Call) -> None:
    """POST /v1/embeddings: checked here, served by LiteLLM's router."""
    request = validate(EmbeddingRequest, call.data or {})
    call.exchange.model = request.model
    rt.monitor.check_model(request.model)
    assert rt.litellm is not None
    await forward(rt.litellm, call, ResponseShaper(call, rt.monitor, request.model))


async def completions(rt: Runtime, call: Call) -> None:
    """POST /v1/completions: a Tabby body (told apart by shape) or an OpenAI one, FIM-rebuilt when configured."""
    data = call.data or {}
    if tabby_routes.is_tabby_body(data):
        await tabby_routes.completions(rt, call)
        return
    request = validate(CompletionRequest, data, rt.settings.max_n)
    note_request(call.exchange, request)
    rt.monitor.check_model(request.model)
    config = rt.preprocessing
    rewrite = fim.rewrite_completion(request, data, config) if config is not None else None
    if rt.settings.completions_lane == "litellm":
        await _through_litellm(rt, call, request, rewrite)
    else:
        await call.until_disconnect(_direct(rt, call, request, rewrite))


def _postprocessor(rt: Runtime, rewrite: fim.FimRewrite | None) -> Any:
    if rewrite is None or rt.preprocessing is None:
        return None
    config, post = rt.preprocessing, rewrite.built.post
    return lambda text: fim_post.postprocess(text, post, config) or ""


def _cutter(rt: Runtime, rewrite: fim.FimRewrite | None) -> SseCutter | None:
    if rewrite is None or rt.preprocessing is None:
        return None
    return SseCutter(partial(fim_post.build_stream_cut, rewrite.built.post, rt.preprocessing))


async def _direct(rt: Runtime, call: Call, request: CompletionRequest, rewrite: fim.FimRewrite | None) -> None:
    data: dict[str, Any] = rewrite.body if rewrite is not None else (call.data or {})
    asked_usage = request.stream_options is not None and request.stream_options.include_usage is True
    add_usage = bool(request.stream) and not asked_usage  # tokens for the journal; the chunk is dropped again
    if add_usage:
        data = {**data, "stream_options": {**(data.get("stream_options") or {}), "include_usage": True}}
    body = call.body if data is call.data else orjson.dumps(data)
    key = prompt_key(call.identity.user_id, data.get("prompt"))
    upstream = UpstreamRequest(request.model, "/completions", body, bool(request.stream), key, call.request_id)
    if upstream.stream:
        opened = await rt.lane.open(upstream)
        call.exchange.upstream = opened.upstream.url
        plan = StreamPlan(call.exchange, drop_usage=add_usage, cutter=_cutter(rt, rewrite))
        await relay_stream(call, opened, plan, rt.monitor, rt.settings.stream_idle_timeout)
        return
    served, answer = await rt.lane.read(upstream)
    call.exchange.upstream = served.url
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
