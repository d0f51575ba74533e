"""Tabby wire models, field names as Tabby spells them (crates/tabby/src/services/completion.rs, health.rs,
tabby_common/src/api/event.rs). Requests ignore unknown fields: newer agents send more than we use."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class Declaration(_Request):
    """A declaration the client found for a symbol near the cursor."""

    filepath: str
    body: str


class Snippet(_Request):
    """A piece of a recently changed or opened file."""

    filepath: str
    body: str
    score: float | None = None


class Segments(_Request):
    """The text around the cursor and context from other files."""

    prefix: str
    suffix: str | None = None
    filepath: str | None = None
    git_url: str | None = None
    declarations: list[Declaration] | None = None
    relevant_snippets_from_changed_files: list[Snippet] | None = None
    relevant_snippets_from_recently_opened_files: list[Snippet] | None = None
    clipboard: str | None = None


class CompletionRequest(_Request):
    """POST /v1/completions with a Tabby body (told apart from an OpenAI one by `segments`)."""

    language: str | None = None
    segments: Segments
    user: str | None = None
    temperature: float | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)


class Choice(BaseModel):
    """One completion."""

    index: int
    text: str


class CompletionResponse(BaseModel):
    """The Tabby completion answer."""

    id: str
    choices: list[Choice]


class LogEventRequest(_Request):
    """POST /v1/events: the client viewed, accepted or dismissed a completion."""

    type: Literal["view", "select", "dismiss"]
    completion_id: str
    choice_index: int
    view_id: str | None = None
    elapsed: int | None = None


class ServerSetting(BaseModel):
    """GET /v1beta/server_setting."""

    disable_client_side_telemetry: bool


class Version(BaseModel):
    """Server version; tabby-agent crashes when `git_describe` is missing and skips server_setting below 0.9.0."""

    build_date: str
    build_timestamp: str
    git_sha: str
    git_describe: str


class HealthState(BaseModel):
    """GET|POST /v1/health."""

    model: str | None = None
    device: str
    cuda_devices: list[str] = []
    models: dict[str, Any]
    arch: str
    cpu_info: str
    cpu_count: int
    version: Version
    webserver: bool | None = None
