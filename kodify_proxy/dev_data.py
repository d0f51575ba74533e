"""Continue's dev data (`POST /v1/dev-data`): the body core/data/log.ts posts for each event of a config.yaml
`data:` destination, read into what the journal and the metrics keep of it. Pure.

Any event name and any schema version is kept: the fields we count by are looked up by name, whatever the event.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from kodify_proxy import acceptance, fim
from kodify_proxy.exchange import DevEvent, Exchange
from kodify_proxy.preprocess import PreprocessingConfig

# The fields Continue's own `noCode` level leaves out of some event (packages/config-yaml/src/schemas/data/*/v0.*.ts,
# the `_noCode` schemas): the code, prompts and file contents. Dropped from `event_data` whatever the event; with
# KODIFY_JOURNAL_BODIES on, the body as sent (the row's request_body) still holds them.
CODE_FIELDS: Final = frozenset(
    {
        "prefix",
        "suffix",
        "prompt",
        "completion",
        "previousCode",
        "newCode",
        "fileUri",
        "workspaceDirUri",
        "userEdits",
        "userExcerpts",
        "originalEditableRange",
        "previousEdits",
        "fileURI",
        "workspaceDirURI",
        "beforeContent",
        "afterContent",
        "context",
        "path",
        "diffs",
        "functionParams",
        "toolCallArgs",
        "output",
    }
)
# Where each event names its file (autocomplete, editOutcome: filepath; nextEditOutcome: fileUri;
# nextEditWithHistory: fileURI; quickEdit 0.1.0: path) and its model (most: modelName; tokensGenerated: model).
_PATH_FIELDS: Final = ("filepath", "fileUri", "fileURI", "path")
_MODEL_FIELDS: Final = ("modelName", "model")


class DevDataRequest(BaseModel):
    """`{name, data, schema, level, profileId}`: one event, as core/data/log.ts (logToOneDestination) sends it."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    name: StrictStr = Field(min_length=1)
    data: dict[str, Any]
    schema_: StrictStr = Field(alias="schema", min_length=1)
    level: StrictStr | None = None
    profile_id: StrictStr | None = Field(default=None, alias="profileId")


def _text(data: dict[str, Any], names: tuple[str, ...]) -> str | None:
    """The first of `names` that `data` holds as a non-empty string."""
    return next((value for name in names if isinstance(value := data.get(name), str) and value), None)


def render_data(data: dict[str, Any]) -> str:
    """The event's data as JSON, without its code fields."""
    kept = {name: value for name, value in data.items() if name not in CODE_FIELDS}
    try:
        return orjson.dumps(kept).decode()
    except TypeError:  # orjson refuses what the lenient parser let in (lone surrogates, integers beyond 64 bits)
        return json.dumps(kept, ensure_ascii=False)


def note_event(request: DevDataRequest, config: PreprocessingConfig, exchange: Exchange) -> None:
    """Record the event in `exchange`: its model, language (from the file's extension), ids, client, whether it is a
    suggestion shown or accepted, and its data without code."""
    data = request.data
    exchange.model = _text(data, _MODEL_FIELDS)
    exchange.language = fim.language_label(fim.path_language(_text(data, _PATH_FIELDS)), config)
    exchange.completion_id = _text(data, ("completionId",))
    exchange.client = acceptance.continue_client(data.get("userAgent"))
    exchange.suggestion = acceptance.continue_suggestion(request.name, data)
    exchange.dev_event = DevEvent(request.name, request.schema_, _text(data, ("requestId",)), render_data(data))
