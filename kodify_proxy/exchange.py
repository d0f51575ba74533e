"""One client request as the gateway saw it: the record the journal and the metrics are both made from.

The gateway fills what it knows (route, user, model, n, stream, status, bytes, timings, the errors it sent); the lane
adds upstream and tokens; on the LiteLLM path LiteLLM's log event adds them (`apply_log_event`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kodify_proxy.acceptance import Client, Suggestion
from kodify_proxy.upstreams import Upstream

STATUS_CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before the response ended


@dataclass(frozen=True)
class DevEvent:
    """What the journal keeps of a Continue dev-data event beyond the exchange's model, language and completion id."""

    name: str
    schema: str
    response_id: str | None  # Continue's requestId: the id of our response the event is about
    data_json: str  # the event's data without its code fields


@dataclass
class Exchange:
    """An HTTP exchange on a client route, mutated as it runs (one per request, owned by the gateway)."""

    request_id: str
    method: str
    route: str  # the route table's path
    path: str  # the path the client called
    started_at: datetime
    t0: float  # perf_counter at arrival
    capture_bytes: int = 0  # how much of the response body to keep (the journal's policy; 0 without a journal)
    recorded: bool = True  # False for /health and /metrics: no record, no request id
    slot: int = -1  # its record in the journal's in-flight table (journal/inflight.py), -1 for none
    request_body: bytes = b""
    user_id: str | None = None
    key_alias: str | None = None
    model: str | None = None
    n: int | None = None
    stream: bool = False
    upstream: str | None = None
    language: str | None = None  # Tabby completions and events, dev-data events: the file's language
    completion_id: str | None = None  # Tabby: the completion made, or the one an event names; Continue's completionId
    event: dict[str, Any] | None = None  # Tabby events: the event's fields
    dev_event: DevEvent | None = None  # Continue's dev-data events (POST /v1/dev-data)
    client: Client | None = None  # the plugin that sent it (Tabby's routes, dev data)
    suggestion: Suggestion | None = None  # an event about a suggestion shown or accepted (acceptance.py)
    status: int | None = None
    content_type: str = ""
    response_body: bytearray = field(default_factory=bytearray)
    response_bytes: int = 0
    first_byte_at: float | None = None
    ended_at: float | None = None
    completed: bool = False
    disconnected: bool = False
    error_type: str | None = None  # set when we sent the error ourselves
    error_message: str | None = None
    error_class: str | None = None  # LiteLLM's exception class, from its failure event
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    assembled_response: Any = None  # a LiteLLM stream, assembled by LiteLLM
    awaiting_litellm: bool = False  # served by LiteLLM: wait for its log event before the record is final
    saw_success: bool = False
    saw_failure: bool = False
    limited: tuple[str, str] | None = None  # (identity, kind) counted by the limiter: released when recorded
    rate_limited: str | None = None  # the limit that refused this request (429), e.g. chat_requests_per_minute

    def final_status(self) -> int:
        """The status the client saw; 499 when it left before the response ended, 500 when none was sent."""
        if self.disconnected and not self.completed:
            return STATUS_CLIENT_CLOSED
        return 500 if self.status is None else self.status

    def ready(self) -> bool:
        """Once the response ended, and (on the LiteLLM path) LiteLLM's log event for it arrived."""
        if self.ended_at is None:
            return False
        if not self.awaiting_litellm:
            return True
        return self.saw_success if self.final_status() < 400 else self.saw_success or self.saw_failure

    def took_error(self, error_type: str, message: str) -> None:
        """Record the error we sent the client."""
        self.error_type, self.error_message = error_type, message


def upstream_name(api_base: object, upstreams: Iterable[Upstream]) -> str | None:
    """The config.yml URL of the upstream LiteLLM called (its api_base plus an endpoint path), else api_base."""
    if not isinstance(api_base, str) or not api_base:
        return None
    for upstream in upstreams:
        if api_base.startswith(upstream.api_base):
            return upstream.url
    return api_base


def whole_number(value: object) -> int | None:
    """`value` if it is an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def note_usage(exchange: Exchange, usage: Any) -> None:
    """Token counts from an OpenAI `usage` object (a lane answer's, or its stream's usage chunk)."""
    if isinstance(usage, dict):
        exchange.prompt_tokens = whole_number(usage.get("prompt_tokens"))
        exchange.completion_tokens = whole_number(usage.get("completion_tokens"))


def apply_log_event(
    exchange: Exchange, payload: Mapping[str, Any], success: bool, upstreams: Iterable[Upstream]
) -> None:
    """Copy upstream and (on success) tokens and the assembled stream from LiteLLM's standard_logging_object."""
    exchange.upstream = upstream_name(payload.get("api_base"), upstreams) or exchange.upstream
    if success:
        exchange.prompt_tokens = whole_number(payload.get("prompt_tokens"))
        exchange.completion_tokens = whole_number(payload.get("completion_tokens"))
        exchange.assembled_response = payload.get("response")
        exchange.saw_success = True
    else:
        error = payload.get("error_information") or {}
        exchange.error_class = error.get("error_class") or exchange.error_class
        exchange.saw_failure = True
