"""A journal row and the pure functions that build one from what was seen of an HTTP exchange."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from kodify_proxy.acceptance import TABBY, tabby_suggestion
from kodify_proxy.errors import read_error_body
from kodify_proxy.exchange import STATUS_CLIENT_CLOSED, DevEvent, Exchange, whole_number

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
    "completion_id": 64,
    "language": 64,
    "event_type": 64,
    "select_kind": 32,
    "view_id": 128,
    "error_message": ERROR_MESSAGE_CHARS,
    "client": 64,
    "client_version": 64,
    "event_schema": 32,
    "suggestion": 16,
    "response_id": 128,
}
CLIENT_DISCONNECTED = "client_disconnected"
UNSTORABLE = "journal_unstorable"  # a row kept as its minimal version (`minimal_row`)
INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # an INTEGER column
_INTEGER_COLUMNS = frozenset(
    {
        "status",
        "prompt_tokens",
        "completion_tokens",
        "n",
        "request_bytes",
        "response_bytes",
        "choice_index",
        "elapsed_ms",
    }
)
# Text no database or JSON encoder takes: lone surrogates (a JSON body may spell them as \udXXX escapes), which UTF-8
# cannot encode, so neither PostgreSQL, SQLite nor the spool's JSON could hold them.
_UNENCODABLE = re.compile("[\ud800-\udfff]")


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
    status: int | None  # None: the client got no status (a worker died before the response started)
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
    completion_id: str | None = None
    language: str | None = None
    event_type: str | None = None
    choice_index: int | None = None
    select_kind: str | None = None
    view_id: str | None = None
    elapsed_ms: int | None = None
    text_replaced: bool = False  # some text held code points no database stores; they were replaced by U+FFFD
    client: str | None = None
    client_version: str | None = None
    event_schema: str | None = None
    suggestion: str | None = None
    shown: bool | None = None
    accepted: bool | None = None
    aborted: bool | None = None
    response_id: str | None = None
    event_data: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # Every row is made storable here, whoever builds it: text a database can't hold replaced (and marked),
        # text longer than its column cut, numbers beyond an INTEGER column clamped.
        if not isinstance(data, dict):
            return data
        cleaned = dict(data)
        for name, value in data.items():
            if isinstance(value, str):
                limit = _MAX_CHARS.get(name)
                if value.isascii() and "\x00" not in value and (limit is None or len(value) <= limit):
                    continue  # the common case, storable as it is: no scan (isascii is O(1) in CPython)
                text, replaced = storable_text(value, limit)
                cleaned[name] = text
                cleaned["text_replaced"] = replaced or bool(cleaned.get("text_replaced"))
            elif name in _INTEGER_COLUMNS and whole_number(value) is not None:
                cleaned[name] = clamped(value)
        return cleaned

    @model_validator(mode="before")
    @classmethod
    def _tabby_event_counted(cls, data: Any) -> Any:
        # A Tabby event row made before migration 0005 (an old spool stored after an upgrade) names only its type:
        # it counts as acceptance.py counts Tabby's events, as the migration counted the rows already stored.
        if not isinstance(data, dict) or "suggestion" in data or data.get("event_schema") is not None:
            return data
        event_type = data.get("event_type")
        suggestion = tabby_suggestion(event_type) if isinstance(event_type, str) else None
        if suggestion is None:
            return data
        counted = {"suggestion": suggestion.kind, "shown": suggestion.shown, "accepted": suggestion.accepted}
        return {"client": TABBY, **data, **counted}

    @field_validator("started_at", mode="after")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # SQLite keeps the wall-clock digits only, so every time is stored in UTC (naive ones are UTC already).
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def storable_text(value: str, limit: int | None = None) -> tuple[str, bool]:
    """`value` as every store holds it, and whether code points had to be replaced.

    PostgreSQL text holds no NUL (replaced, unmarked, as always); lone surrogates no encoder takes (replaced and
    marked); a client-chosen path or model name may be longer than its column (cut to `limit` characters).
    """
    value = (value[:limit] if limit is not None else value).replace("\x00", "\ufffd")  # cut first: less to scan
    replaced = _UNENCODABLE.search(value) is not None
    return (_UNENCODABLE.sub("\ufffd", value) if replaced else value), replaced


def minimal_row(row: JournalRow, reason: str) -> JournalRow:
    """What is kept of a row that could not be stored whole: who, when, which route, the status, and why."""
    return JournalRow(
        request_id=row.request_id,
        started_at=row.started_at,
        user_id=row.user_id,
        method=row.method,
        route=row.route,
        status=row.status,
        latency_ms=row.latency_ms,
        error_type=UNSTORABLE,
        error_message="the journal could not store this row whole, only its request id, time, route, user and "
        + f"status: {reason}",
        text_replaced=row.text_replaced,
    )


@dataclass(frozen=True)
class BodyPolicy:
    """Whether bodies are kept (KODIFY_JOURNAL_BODIES) and how many bytes of each (KODIFY_JOURNAL_BODY_MAX_BYTES)."""

    keep: bool = True
    max_bytes: int = 65536

    def response_capture(self) -> int:
        """Bytes of a response body to hold on to while the request runs."""
        return max(self.max_bytes if self.keep else 0, ERROR_PARSE_BYTES)


def clip(data: bytes | bytearray, total: int, cap: int) -> tuple[str, bool]:
    """At most `cap` bytes as text (a split UTF-8 character dropped) and whether the original was longer."""
    text = (
        bytes(data[:cap]).decode("utf-8", errors="ignore")
        if len(data) > cap
        else bytes(data).decode("utf-8", errors="replace")
    )
    return text, total > cap


def _error_fields(body: bytes | bytearray) -> tuple[str, str] | None:
    """(type, message) of a JSON error body; None for a body that names no error, or is not JSON."""
    read = read_error_body(body)
    if not read.found or read.plain_text:
        return None
    return read.type or "error", read.message or ""


def sse_error(data: bytes | bytearray) -> tuple[str, str] | None:
    """The first `data: {"error": …}` event of a server-sent event stream, as (type, message)."""
    for line in bytes(data).splitlines():
        if line.startswith(b"data:") and b'"error"' in line:
            found = _error_fields(line[5:].strip())
            if found is not None:
                return found
    return None


def error_of(exchange: Exchange) -> tuple[str | None, str | None]:
    """(error type, message) as the client saw them, or (None, None) for a clean response."""
    status = exchange.final_status()
    if status == STATUS_CLIENT_CLOSED:
        sent = exchange.response_bytes
        return CLIENT_DISCONNECTED, f"the client closed the connection after {sent} bytes of the response"
    if exchange.error_type is not None:
        return exchange.error_type, (exchange.error_message or "")[:ERROR_MESSAGE_CHARS] or None
    if exchange.status is None:
        return "internal_error", "the server sent no response (an internal error; see the server log)"
    if not exchange.completed:
        return "incomplete_response", f"the response was cut off after {exchange.response_bytes} bytes"
    if exchange.content_type.startswith("text/event-stream"):
        found = sse_error(exchange.response_body)
    else:
        found = _error_fields(exchange.response_body) if status >= 400 else None
    if found is None and status >= 400:
        found = (exchange.error_class or f"http_{status}", "")
    if found is None:
        return None, None
    return found[0], found[1][:ERROR_MESSAGE_CHARS] or None


def _response_text(exchange: Exchange, policy: BodyPolicy) -> tuple[str | None, bool]:
    if not policy.keep:
        return None, False
    assembled = exchange.assembled_response
    if assembled is not None and exchange.content_type.startswith("text/event-stream"):
        data = json.dumps(assembled, default=str, ensure_ascii=False).encode()
        return clip(data, len(data), policy.max_bytes)
    return clip(exchange.response_body, exchange.response_bytes, policy.max_bytes)


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000.0, 3)


def clamped(value: int | None) -> int | None:
    """A count that fits an INTEGER column (a client may send any number)."""
    return None if value is None else max(INT_MIN, min(INT_MAX, value))


def build_row(exchange: Exchange, policy: BodyPolicy) -> JournalRow:
    """The journal row for a finished (or abandoned) exchange."""
    error_type, error_message = error_of(exchange)
    body = exchange.request_body
    request_text, request_cut = clip(body, len(body), policy.max_bytes) if policy.keep else (None, False)
    response_text, response_cut = _response_text(exchange, policy)
    stream = exchange.stream or exchange.content_type.startswith("text/event-stream")
    return JournalRow(
        request_id=exchange.request_id,
        started_at=exchange.started_at,
        user_id=exchange.user_id,
        key_alias=exchange.key_alias,
        method=exchange.method,
        route=exchange.path,
        model=exchange.model,
        upstream=exchange.upstream,
        status=exchange.final_status(),
        error_type=error_type,
        error_message=error_message,
        stream=stream,
        latency_ms=_ms(exchange.t0, exchange.ended_at) or 0.0,
        ttft_ms=_ms(exchange.t0, exchange.first_byte_at) if stream else None,
        prompt_tokens=exchange.prompt_tokens,
        completion_tokens=exchange.completion_tokens,
        n=exchange.n,
        request_bytes=len(body),
        request_body=request_text,
        request_body_truncated=request_cut,
        response_bytes=exchange.response_bytes,
        response_body=response_text,
        response_body_truncated=response_cut,
        completion_id=exchange.completion_id,
        language=exchange.language,
        **(_tabby_fields(exchange.event) | _continue_fields(exchange.dev_event) | _plugin_fields(exchange)),
    )


def _tabby_fields(event: dict[str, Any] | None) -> dict[str, Any]:
    """A Tabby event's own fields, as their columns hold them."""
    if event is None:
        return {}
    return {
        "event_type": event.get("type"),
        "choice_index": whole_number(event.get("choice_index")),
        "select_kind": event.get("select_kind"),
        "view_id": event.get("view_id"),
        "elapsed_ms": whole_number(event.get("elapsed")),
    }


def _continue_fields(event: DevEvent | None) -> dict[str, Any]:
    """A Continue dev-data event's own fields."""
    if event is None:
        return {}
    return {
        "event_type": event.name,
        "event_schema": event.schema,
        "response_id": event.response_id,
        "event_data": event.data_json,
    }


def _plugin_fields(exchange: Exchange) -> dict[str, Any]:
    """The client, and whether the row counts as a suggestion shown or accepted (acceptance.py)."""
    fields: dict[str, Any] = {}
    if exchange.client is not None:
        fields |= {"client": exchange.client.name, "client_version": exchange.client.version}
    if (suggestion := exchange.suggestion) is not None:
        fields |= {"suggestion": suggestion.kind, "shown": suggestion.shown, "accepted": suggestion.accepted}
        fields["aborted"] = suggestion.aborted
    return fields
