"""Typed views of the OpenAI request bodies we check before LiteLLM calls an upstream."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from kodify_proxy.errors import InvalidRequest

Number = StrictFloat | StrictInt


class ChatMessage(BaseModel):
    """One chat message: a role and (usually) content; other fields pass through."""

    model_config = ConfigDict(extra="allow")

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None


class SamplingFields(BaseModel):
    """Sampling parameters shared by chat and text completions; vLLM's extras pass through unchecked."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr
    n: StrictInt | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: Number | None = Field(default=None, ge=0)
    top_p: Number | None = Field(default=None, gt=0, le=1)
    seed: StrictInt | None = None
    stream: StrictBool | None = None
    stop: StrictStr | list[StrictStr] | None = None


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(SamplingFields):
    """POST /v1/completions (OpenAI legacy)."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


_VIEWS: dict[str, type[BaseModel]] = {
    "acompletion": ChatCompletionRequest,
    "completion": ChatCompletionRequest,
    "atext_completion": CompletionRequest,
    "text_completion": CompletionRequest,
    "aembedding": EmbeddingRequest,
    "embedding": EmbeddingRequest,
}


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_union_tag(part: int | str) -> bool:
    """Pydantic adds the union member (`float`, `list[str]`) to an error's location; it is not a field."""
    return isinstance(part, str) and (part in _UNION_TAGS or "[" in part)


def validate_request(call_type: str, data: dict[str, Any]) -> None:
    """Raise InvalidRequest naming the first wrong field of a chat, completion or embedding body."""
    view = _VIEWS.get(call_type)
    if view is None:
        return
    try:
        view.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"] if not _is_union_tag(part)) or None
        given = "" if first["type"] == "missing" else f", got {first.get('input')!r:.80}"
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}{given}", param=param) from None
