"""Tabby requests to and from OpenAI completions: the model, the prompt, the answer, health, events.

`TabbyService.complete` is a Tabby completion whole: the OpenAI body built, sent through the `fetch` the route
gives it (the lane, or LiteLLM), the answer made Tabby's. Everything else here is pure.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any, Final

import orjson

from kodify_proxy import acceptance, fim
from kodify_proxy.errors import KodifyError, UpstreamFailed, UpstreamUnavailable
from kodify_proxy.exchange import Exchange, note_usage
from kodify_proxy.fim import post as fim_post
from kodify_proxy.preprocess import PreprocessingConfig, load_shipped
from kodify_proxy.tabby.protocol import (
    Choice,
    CompletionRequest,
    CompletionResponse,
    HealthState,
    LogEventRequest,
    Version,
)
from kodify_proxy.upstream_monitor import UpstreamMonitor

# The upstream call a completion is served by: (model, OpenAI completion body) in, the whole JSON answer out.
Fetch = Callable[[str, bytes], Awaitable[bytes]]

log = logging.getLogger("kodify_proxy.tabby")

# The Tabby API release whose contract these routes follow (clients/tabby-openapi/openapi.json, 0.17.0).
TABBY_API_VERSION: Final = "0.17.0"
DEFAULT_CONFIG: Final = "qwen"  # Tabby requests need a FIM format even when COMPLETIONS_PREPROCESSING_CONFIG is unset


class NoCompletionModel(UpstreamUnavailable):
    """No model can answer Tabby requests yet (Tabby itself answers 501 here)."""


def tabby_model(monitor: UpstreamMonitor) -> str:
    """config.yml `tabby.model_name`, else the first model of the first upstream (the guide's rule)."""
    name = monitor.config.tabby_model_name or monitor.default_model()
    if name is None:
        raise NoCompletionModel(
            "No model answers Tabby requests yet: no upstream has listed a model. Check that the vLLM server "
            "is running, or set tabby.model_name in config.yml"
        )
    return name


@lru_cache(maxsize=1)
def _default_config() -> PreprocessingConfig:
    return load_shipped(DEFAULT_CONFIG)


def tabby_config(configured: PreprocessingConfig | None) -> PreprocessingConfig:
    """The loaded preprocessing config, else the shipped qwen.json."""
    return configured if configured is not None else _default_config()


def to_fim_input(request: CompletionRequest) -> fim.FimInput:
    """The prompt builder's input: snippets in Tabby's priority order (declarations first)."""
    segments = request.segments
    sources = (
        segments.declarations,
        segments.relevant_snippets_from_changed_files,
        segments.relevant_snippets_from_recently_opened_files,
    )
    snippets = tuple(fim.Snippet(item.filepath, item.body) for source in sources for item in source or ())
    return fim.FimInput(segments.prefix, segments.suffix or "", request.language, snippets)


def build_openai_body(
    request: CompletionRequest, model: str, config: PreprocessingConfig
) -> tuple[dict[str, Any], fim.FimPrompt]:
    """The OpenAI completion body that serves a Tabby request, and the prompt it carries."""
    built = fim.build_prompt(to_fim_input(request), config)
    body: dict[str, Any] = {
        "model": model,
        "prompt": built.prompt,
        "max_tokens": config.max_tokens.default,
        "stop": list(built.stop),
        "temperature": config.temperature if request.temperature is None else request.temperature,
        "stream": False,
    }
    if request.seed is not None:
        body["seed"] = request.seed
    return body, built


def read_answer(body: bytes) -> dict[str, Any]:
    """The upstream's OpenAI completion answer as a JSON object."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise UpstreamFailed("The completion came back as something other than a JSON object; check the upstream")
    return answer


def build_response(answer: dict[str, Any], post: fim.PostContext, config: PreprocessingConfig) -> CompletionResponse:
    """The Tabby answer from an OpenAI text completion, each choice post-processed; empty ones are dropped."""
    choices = []
    for position, choice in enumerate(answer.get("choices") or ()):
        text = fim_post.postprocess(str(choice.get("text") or ""), post, config)
        if text is not None:
            choices.append(Choice(index=int(choice.get("index", position)), text=text))
    return CompletionResponse(id=str(answer.get("id") or f"cmpl-{time.time_ns()}"), choices=choices)


@lru_cache(maxsize=1)
def _version() -> Version:
    try:
        ours = metadata.version("kodify-proxy")
    except metadata.PackageNotFoundError:
        ours = "0+unknown"
    # tabby-agent reads semver.coerce(git_describe): it must parse as >= 0.9.0 (see TABBY_API_VERSION).
    return Version(
        build_date="unknown",
        build_timestamp="unknown",
        git_sha="unknown",
        git_describe=f"v{TABBY_API_VERSION}-kodify-proxy-{ours}",
    )


def build_health(monitor: UpstreamMonitor) -> HealthState:
    """Tabby's health: the Tabby model, served by vLLM upstreams (not local devices); no upstream call."""
    try:
        model: str | None = tabby_model(monitor)
    except KodifyError:
        model = None
    models = {"completion": {"remote": {"kind": "vllm/completion", "model_name": model}}} if model else {}
    return HealthState(
        model=model,
        device="remote",
        cuda_devices=[],
        models=models,
        arch=platform.machine() or "unknown",
        cpu_info=platform.processor() or platform.machine() or "unknown",
        cpu_count=os.cpu_count() or 1,
        version=_version(),
        webserver=False,
    )


def build_event(request: LogEventRequest, select_kind: str | None) -> dict[str, Any]:
    """The event as the journal records it; `select_kind` comes from the query string, as in Tabby."""
    return {
        "type": request.type,
        "completion_id": request.completion_id,
        "choice_index": request.choice_index,
        "view_id": request.view_id,
        "elapsed": request.elapsed,
        "select_kind": select_kind,
        "ts": int(time.time() * 1000),
    }


@dataclass(frozen=True)
class Served:
    """What a Tabby completion was: for its later view/select/dismiss events."""

    model: str
    language: str | None


class RecentCompletions:
    """The last completions served (id -> model, language), so an event can be counted where its completion was."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._items: OrderedDict[str, Served] = OrderedDict()

    def remember(self, completion_id: str, served: Served) -> None:
        """Note a completion just sent."""
        self._items[completion_id] = served
        self._items.move_to_end(completion_id)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def get(self, completion_id: str) -> Served | None:
        """What the completion with this id was, if it is recent enough."""
        return self._items.get(completion_id)


class TabbyService:
    """Tabby's completions and events: what a route needs beyond the request itself."""

    def __init__(self, monitor: UpstreamMonitor, preprocessing: PreprocessingConfig | None) -> None:
        self.monitor = monitor
        self.config = tabby_config(preprocessing)
        self.recent = RecentCompletions()

    async def complete(self, request: CompletionRequest, exchange: Exchange, fetch: Fetch) -> CompletionResponse:
        """One completion: the model and prompt chosen, the upstream asked through `fetch`, the answer made Tabby's
        and noted (usage, id, language) in `exchange`."""
        model = tabby_model(self.monitor)
        exchange.model, exchange.language = model, fim.language_label(request.language, self.config)
        self.monitor.check_model(model)
        body, built = build_openai_body(request, model, self.config)
        answer = read_answer(await fetch(model, orjson.dumps(body)))
        note_usage(exchange, answer.get("usage"))
        response = build_response(answer, built.post, self.config)
        exchange.completion_id = response.id
        self.recent.remember(response.id, Served(model, exchange.language))
        return response

    def note_event(self, request: LogEventRequest, select_kind: str | None, exchange: Exchange) -> None:
        """A view/select/dismiss event, recorded under the model and language of the completion it is about."""
        exchange.event = build_event(request, select_kind)
        exchange.suggestion = acceptance.tabby_suggestion(request.type)
        exchange.completion_id = request.completion_id
        served = self.recent.get(request.completion_id)
        if served is not None:
            exchange.model, exchange.language = served.model, served.language
