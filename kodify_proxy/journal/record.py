"""A journal row and the pure functions that build one from what was seen of an HTTP exchange."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

# API routes a client calls; health probes, the admin API and the UI are not journaled.
_JOURNALED_PREFIXES = (
    "/v1/",
    "/v1beta/",
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/models",
    "/engines/",
    "/openai/",
    "/tabby/",
)
# How much of a request body is read to find `model`, `n` and `stream` even when bodies are not kept.
REQUEST_PARSE_BYTES = 1 << 20
# How much of a response is kept to find the error type when bodies are not kept.
ERROR_PARSE_BYTES = 16 << 10
ERROR_MESSAGE_CHARS = 2000
# The VARCHAR lengths of kodify_journal (models.py); longer values are cut to fit.
_MAX_CHARS = {
    "request_id": 64,
    "user_id": 255,
    "key_alias": 255,
    "method": 16,
    "route": 512,
    "model": 255,
    "upstream": 512,
    "error_type": 128,
}
CLIENT_DISCONNECTED = "client_disconnected"
STATUS_CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before the response ended


class JournalRow(BaseModel):
    """One journaled request, as stored in the `kodify_journal` table and in the spool files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str
    started_at: datetime
    user_id: str | None = None
    key_alias: str | None = None
    method: str
    route: str
    model: str | None = None
    upstream: str | None = None
    status: int
    error_type: str | None = None
    error_message: str | None = None
    stream: bool = False
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    n: int | None = None
    request_bytes: int = 0
    request_body: str | None = None
    request_body_truncated: bool = False
    response_bytes: int = 0
    response_body: str | None = None
    response_body_truncated: bool = False

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        # PostgreSQL text holds no NUL characters, and a client-chosen path or model name may be longer than
        # its column: either would make the database refuse the row.
        if not isinstance(value, str):
            return value
        value = value.replace("\x00", "\ufffd")
        limit = _MAX_CHARS.get(info.field_name or "")
        return value[:limit] if limit is not None else value

    @field_validator("started_at", mode="after")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # SQLite keeps the wall-clock digits only, so every time is stored in UTC (naive ones are UTC already).
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class BodyPolicy:
    """Whether bodies are kept (KODIFY_JOURNAL_BODIES) and how many bytes of each (KODIFY_JOURNAL_BODY_MAX_BYTES)."""

    keep: bool = True
    max_bytes: int = 65536

    def request_capture(self) -> int:
        """Bytes of a request body to hold on to while the request runs."""
        return max(self.max_bytes if self.keep else 0, REQUEST_PARSE_BYTES)

    def response_capture(self) -> int:
        """Bytes of a response body to hold on to while the request runs."""
        return max(self.max_bytes if self.keep else 0, ERROR_PARSE_BYTES)


@dataclass
class Enrichment:
    """What LiteLLM's callbacks report about a request (user, upstream, tokens, the assembled stream)."""

    user_id: str | None = None
    key_alias: str | None = None
    model: str | None = None
    upstream: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_class: str | None = None
    assembled_response: Any = None
    saw_success: bool = False
    saw_failure: bool = False


@dataclass
class Exchange:
    """An HTTP exchange being observed by the journal middleware (mutated as messages pass)."""

    request_id: str
    method: str
    route: str
    started_at: datetime
    t0: float
    request_body: bytearray = field(default_factory=bytearray)
    request_bytes: int = 0
    status: int | None = None
    content_type: str = ""
    response_body: bytearray = field(default_factory=bytearray)
    response_bytes: int = 0
    first_byte_at: float | None = None
    ended_at: float | None = None
    completed: bool = False
    disconnected: bool = False
    failed: bool = False
    info: Enrichment = field(default_factory=Enrichment)

    def ready(self) -> bool:
        """True once the response ended and LiteLLM's log event for it arrived (success for a 2xx/3xx)."""
        if self.ended_at is None:
            return False
        status = final_status(self)
        return self.info.saw_success if status < 400 else self.info.saw_success or self.info.saw_failure


def is_journaled(path: str) -> bool:
    """API routes are journaled; health probes, admin routes and the UI are not."""
    if "/health" in path:
        return False
    return path.startswith(_JOURNALED_PREFIXES)


def append_capped(buffer: bytearray, chunk: bytes, cap: int) -> None:
    """Append as much of `chunk` as fits under `cap` bytes."""
    room = cap - len(buffer)
    if room > 0 and chunk:
        buffer += chunk[:room]


def clip(data: bytes | bytearray, total: int, cap: int) -> tuple[str, bool]:
    """At most `cap` bytes as text (a split UTF-8 character dropped) and whether the original was longer."""
    text = (
        bytes(data[:cap]).decode("utf-8", errors="ignore")
        if len(data) > cap
        else bytes(data).decode("utf-8", errors="replace")
    )
    return text, total > cap


def parse_object(data: bytes | bytearray) -> dict[str, Any] | None:
    """A JSON object, or None for anything else (not JSON, cut short, a list)."""
    try:
        value = json.loads(bytes(data))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def request_fields(body: dict[str, Any] | None) -> tuple[str | None, int | None, bool]:
    """`model`, `n` and `stream` from a request body."""
    if body is None:
        return None, None, False
    model = body.get("model")
    n = body.get("n")
    return (
        model if isinstance(model, str) else None,
        n if isinstance(n, int) and not isinstance(n, bool) else None,
        body.get("stream") is True,
    )


def _error_fields(body: dict[str, Any] | None) -> tuple[str, str] | None:
    error = body.get("error") if body is not None else None
    if isinstance(error, dict):
        return str(error.get("type") or "error"), str(error.get("message") or "")
    if isinstance(error, str):
        return "error", error
    if body is not None and isinstance(body.get("detail"), str):
        return "error", str(body["detail"])
    return None


def sse_error(data: bytes | bytearray) -> tuple[str, str] | None:
    """The first `data: {"error": …}` event of a server-sent event stream, as (type, message)."""
    for line in bytes(data).splitlines():
        if line.startswith(b"data:") and b'"error"' in line:
            found = _error_fields(parse_object(line[5:].strip()))
            if found is not None:
                return found
    return None


def is_stream(exchange: Exchange) -> bool:
    """A server-sent event response, or a request that asked for one."""
    if exchange.content_type.startswith("text/event-stream"):
        return True
    return request_fields(parse_object(exchange.request_body))[2]


def final_status(exchange: Exchange) -> int:
    """The status the client saw; 499 when it left before the response ended, 500 when none was sent."""
    if exchange.disconnected and not exchange.completed:
        return STATUS_CLIENT_CLOSED
    if exchange.status is None:
        return 500
    return exchange.status


def error_of(exchange: Exchange) -> tuple[str | None, str | None]:
    """(error type, message) as the client saw them, or (None, None) for a clean response."""
    status = final_status(exchange)
    if status == STATUS_CLIENT_CLOSED:
        sent = exchange.response_bytes
        return CLIENT_DISCONNECTED, f"the client closed the connection after {sent} bytes of the response"
    if exchange.status is None:
        return "internal_error", "the server sent no response (an internal error; see the server log)"
    if not exchange.completed:
        return "incomplete_response", f"the response was cut off after {exchange.response_bytes} bytes"
    if exchange.content_type.startswith("text/event-stream"):
        found = sse_error(exchange.response_body)
    else:
        found = _error_fields(parse_object(exchange.response_body)) if status >= 400 else None
    if found is None and status >= 400:
        found = (exchange.info.error_class or f"http_{status}", "")
    if found is None:
        return None, None
    return found[0], found[1][:ERROR_MESSAGE_CHARS] or None


def _response_text(exchange: Exchange, policy: BodyPolicy) -> tuple[str | None, bool]:
    if not policy.keep:
        return None, False
    assembled = exchange.info.assembled_response
    if assembled is not None and exchange.content_type.startswith("text/event-stream"):
        data = json.dumps(assembled, default=str, ensure_ascii=False).encode()
        return clip(data, len(data), policy.max_bytes)
    return clip(exchange.response_body, exchange.response_bytes, policy.max_bytes)


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000.0, 3)


def build_row(exchange: Exchange, policy: BodyPolicy) -> JournalRow:
    """The journal row for a finished (or abandoned) exchange."""
    model, n, _ = request_fields(parse_object(exchange.request_body))
    stream = is_stream(exchange)
    error_type, error_message = error_of(exchange)
    request_text, request_cut = (
        clip(exchange.request_body, exchange.request_bytes, policy.max_bytes) if policy.keep else (None, False)
    )
    response_text, response_cut = _response_text(exchange, policy)
    info = exchange.info
    return JournalRow(
        request_id=exchange.request_id,
        started_at=exchange.started_at,
        user_id=info.user_id,
        key_alias=info.key_alias,
        method=exchange.method,
        route=exchange.route,
        model=model or info.model,
        upstream=info.upstream,
        status=final_status(exchange),
        error_type=error_type,
        error_message=error_message,
        stream=stream,
        latency_ms=_ms(exchange.t0, exchange.ended_at) or 0.0,
        ttft_ms=_ms(exchange.t0, exchange.first_byte_at) if stream else None,
        prompt_tokens=info.prompt_tokens,
        completion_tokens=info.completion_tokens,
        n=n,
        request_bytes=exchange.request_bytes,
        request_body=request_text,
        request_body_truncated=request_cut,
        response_bytes=exchange.response_bytes,
        response_body=response_text,
        response_body_truncated=response_cut,
    )
