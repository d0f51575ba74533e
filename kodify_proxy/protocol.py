"""Typed views of the OpenAI request bodies: parsed once at the edge, checked before any upstream call.

Fields vLLM knows and we do not check (`top_k`, `logprobs`, `return_token_ids`, …) are kept as extras and
reach vLLM unchanged. MAX_N arrives through pydantic's validation context (`{"max_n": N}`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from kodify_proxy.errors import InvalidRequest

Number = StrictFloat | StrictInt
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH: Final = 64  # nesting levels a body may have; LiteLLM's deepcopy and json.dumps recurse per level
_CUSTOM_PREFIX: Final = "kodify_"


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)


N_RANGE: Final = "n={n} is out of range: this server allows 1 to {max_n} choices per request (MAX_N={max_n})"


def _within_max_n(value: int | None, info: ValidationInfo) -> int | None:
    max_n = int((info.context or {}).get("max_n", 0))
    if value is None or not max_n or 1 <= value <= max_n:
        return value
    raise PydanticCustomError("kodify_n_range", N_RANGE, {"n": value, "max_n": max_n})


class StreamOptions(_Body):
    """`stream_options`: whether the last chunk carries the usage."""

    include_usage: StrictBool | None = None


class SamplingFields(_Body):
    """Sampling parameters shared by chat and text completions; vLLM's extras pass through unchecked."""

    model: StrictStr
    n: StrictInt | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: Number | None = Field(default=None, ge=0)
    top_p: Number | None = Field(default=None, gt=0, le=1)
    seed: StrictInt | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    user: StrictStr | None = None

    check_n_range = field_validator("n")(_within_max_n)


class ChatMessage(_Body):
    """One chat message: a role and (usually) content; other fields pass through."""

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(SamplingFields):
    """POST /v1/completions (OpenAI legacy): a prompt as text, texts, token ids or lists of token ids."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    suffix: StrictStr | None = None


class EmbeddingRequest(_Body):
    """POST /v1/embeddings."""

    model: StrictStr
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_union_tag(part: int | str) -> bool:
    """Pydantic adds the union member (`float`, `list[str]`) to an error's location; it is not a field."""
    return isinstance(part, str) and (part in _UNION_TAGS or "[" in part or part.startswith("function-"))


def invalid_request(exc: ValidationError, what: str = "", hint: str = "") -> InvalidRequest:
    """The first problem of a validation error as a 400 naming the field, the value given and the fix."""
    first = exc.errors(include_url=False)[0]
    param = ".".join(str(part) for part in first["loc"] if not _is_union_tag(part)) or None
    if first["type"].startswith(_CUSTOM_PREFIX):
        return InvalidRequest(first["msg"], param=param)
    given = "" if first["type"] == "missing" else f", got {first.get('input')!r:.80}"
    return InvalidRequest(f"Invalid {what}value for '{param or 'body'}': {first['msg']}{given}{hint}", param=param)


def _too_deep(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _lenient_json(body: bytes, exc: orjson.JSONDecodeError) -> Any:
    """What Python's json makes of a body orjson refused for its numbers (1e999, NaN): the field is then named by
    validation. Anything else orjson refused is not JSON."""
    reason = "it nests deeper than 1024 levels" if "depth" in str(exc) else str(exc)
    if "depth" not in reason:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            pass
        else:
            _refuse_non_finite(data)
            return data
    raise InvalidRequest(f"The request body is not valid JSON ({reason}); send a JSON object", param="request_body")


def _refuse_non_finite(data: Any) -> None:
    """InvalidRequest naming the field that holds NaN or an infinity (1e999): no JSON encoder downstream can send it
    on, so it is the client's 400 here rather than an upstream's 500 later."""
    stack: list[tuple[Any, str | None]] = [(data, None)]
    while stack:
        item, field = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidRequest(
                f"Invalid value for '{field or 'body'}': {item!r} is not a finite number; send a finite JSON number",
                param=field,
            )
        if isinstance(item, dict):
            stack.extend((child, field or str(key)) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, field) for child in item)


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; InvalidRequest for bad JSON, another JSON value, or a too-deep nesting."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        data = _lenient_json(body, exc)
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, got {type(data).__name__ if data is not None else 'null'}; "
            'send {"model": ..., ...}',
            param="request_body",
        )
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH and _too_deep(data, MAX_DEPTH):
        raise InvalidRequest(f"The request body nests deeper than {MAX_DEPTH} levels; flatten it", param="request_body")
    return data


Model = TypeVar("Model", bound=BaseModel)


def validate(model: type[Model], data: dict[str, Any], max_n: int = 0, what: str = "", hint: str = "") -> Model:
    """`data` as `model`, or InvalidRequest naming the first wrong field."""
    try:
        return model.model_validate(data, context={"max_n": max_n})
    except ValidationError as exc:
        raise invalid_request(exc, what, hint) from None


@dataclass(frozen=True)
class LaneFields:
    """What the lane itself needs of an OpenAI body; everything else is vLLM's to validate, in its own words."""

    model: str
    n: int | None
    stream: bool
    asked_usage: bool  # stream_options.include_usage is true: the usage chunk is the client's

    def stream_options(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """The stream_options to send when the lane asks vLLM for a usage chunk the client did not ask for (None:
        send the client's own). Only the last chunk's usage: continuous_usage_stats would put it in every chunk."""
        if not self.stream or self.asked_usage:
            return None
        given = data.get("stream_options")
        return {**(given if isinstance(given, dict) else {}), "include_usage": True, "continuous_usage_stats": False}


def lane_fields(data: dict[str, Any], max_n: int = 0) -> LaneFields:
    """The fields the lane routes and counts by; InvalidRequest only for what is ours to refuse (model, MAX_N)."""
    model = data.get("model")
    if not isinstance(model, str):
        given = "" if model is None else f", got {model!r:.80}"
        raise InvalidRequest(
            f"Invalid value for 'model': send the name of a served model (GET /v1/models){given}", param="model"
        )
    n = data.get("n")
    # vLLM reads "11" as 11, and orjson reads a number beyond 64 bits as a float: MAX_N must see them as numbers.
    n = int(n) if isinstance(n, float) and n.is_integer() else _lax(_INT, n)
    if n is not None and max_n and not 1 <= n <= max_n:
        raise InvalidRequest(N_RANGE.format(n=n, max_n=max_n), param="n")
    options = data.get("stream_options")
    asked = isinstance(options, dict) and _lax(_BOOL, options.get("include_usage")) is True
    return LaneFields(model, n, _lax(_BOOL, data.get("stream")) is True, asked)


_BOOL: Final = TypeAdapter(bool)
_INT: Final = TypeAdapter(int)
T = TypeVar("T")


def _lax(adapter: TypeAdapter[T], value: Any) -> T | None:
    """`value` as vLLM's (lax) pydantic models read it ("yes" is true, "2" is 2), None when they would refuse it."""
    try:
        return None if value is None else adapter.validate_python(value)
    except ValidationError:
        return None
