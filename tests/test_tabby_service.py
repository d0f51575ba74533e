"""Pure: a Tabby completion request as the OpenAI body that serves it, the upstream's answer as Tabby's, events,
and `TabbyService.complete` with the upstream played by a function (the route gives it the lane or LiteLLM)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from kodify_proxy import fim
from kodify_proxy.errors import ModelNotFound, UpstreamFailed
from kodify_proxy.exchange import Exchange
from kodify_proxy.preprocess import load_shipped
from kodify_proxy.settings import load_settings
from kodify_proxy.tabby.protocol import CompletionRequest, LogEventRequest
from kodify_proxy.tabby.service import (
    NoCompletionModel,
    TabbyService,
    build_event,
    build_openai_body,
    build_response,
    read_answer,
    tabby_model,
)
from kodify_proxy.upstream_monitor import UpstreamMonitor
from kodify_proxy.upstreams import UpstreamState, parse_config

QWEN = load_shipped("qwen")
UPSTREAM = "http://vllm:8000"
PYTHON_STOP = ["\n\n", "\ndef ", "\nclass ", "\nimport "]  # the config's own, then the language's, 4 at most


def _request(**fields: Any) -> CompletionRequest:
    body = {"language": "python", "segments": {"prefix": "def add(a, b):\n    return ", "suffix": "\n"}} | fields
    return CompletionRequest.model_validate(body)


def _monitor(models: tuple[str, ...], tabby_model_name: str | None = None, healthy: bool = True) -> UpstreamMonitor:
    extra = f"tabby:\n  model_name: {tabby_model_name}\n" if tabby_model_name else ""
    config = parse_config(f"upstreams:\n  {UPSTREAM}:\n{extra}", Path("config.yml"))
    state = UpstreamState(config.upstreams[0], healthy=healthy, models=models)
    return UpstreamMonitor(config, load_settings({}), [state])


def _exchange() -> Exchange:
    return Exchange("req-1", "POST", "/v1/completions", "/v1/completions", datetime.now(UTC), 0.0)


# --- the body --------------------------------------------------------------------------------------------------------


def test_the_openai_body_carries_the_fim_prompt_and_the_configs_defaults() -> None:
    body, built = build_openai_body(_request(), "qwen-coder", QWEN)
    assert body == {
        "model": "qwen-coder",
        "prompt": "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n<|fim_middle|>",
        "max_tokens": 64,
        "stop": PYTHON_STOP,
        "temperature": 0.1,
        "stream": False,
    }
    assert built.prompt == body["prompt"]
    assert built.post.cursor_line == "    return " and built.post.line_rest == "" and not built.post.crlf


def test_the_clients_temperature_and_seed_win_and_snippets_come_declarations_first() -> None:
    segments = {
        "prefix": "x = ",
        "declarations": [{"filepath": "a.py", "body": "A = 1"}],
        "relevant_snippets_from_changed_files": [{"filepath": "b.py", "body": "B = 2"}],
    }
    body, _ = build_openai_body(_request(segments=segments, temperature=0.7, seed=42), "m", QWEN)
    assert body["temperature"] == 0.7 and body["seed"] == 42
    prompt = body["prompt"]
    assert prompt.startswith("<|fim_prefix|>") and prompt.endswith("x = <|fim_suffix|><|fim_middle|>")
    assert prompt.index("A = 1") < prompt.index("B = 2") < prompt.index("x = ")
    assert "# Path: a.py" in prompt and "# Path: b.py" in prompt


# --- the answer ------------------------------------------------------------------------------------------------------


def test_the_answer_is_post_processed_choice_by_choice_and_empty_ones_are_dropped() -> None:
    _, built = build_openai_body(_request(), "m", QWEN)
    answer = {
        "id": "cmpl-7",
        "choices": [
            {"index": 0, "text": "a + b\n\ndef more():"},
            {"index": 1, "text": "   \n"},
            {"index": 2, "text": "a - b<|endoftext|>junk"},
        ],
    }
    response = build_response(answer, built.post, QWEN)
    assert response.model_dump() == {
        "id": "cmpl-7",
        "choices": [{"index": 0, "text": "a + b"}, {"index": 2, "text": "a - b"}],
    }


def test_an_answer_without_an_id_or_indexes_still_gets_them() -> None:
    _, built = build_openai_body(_request(), "m", QWEN)
    response = build_response({"choices": [{"text": "1"}, {"text": "2"}]}, built.post, QWEN)
    assert response.id.startswith("cmpl-") and [c.index for c in response.choices] == [0, 1]


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"'])
def test_an_answer_that_is_not_a_json_object_is_the_upstreams_failure(body: bytes) -> None:
    with pytest.raises(UpstreamFailed, match="something other than a JSON object"):
        read_answer(body)


# --- model, language, events -----------------------------------------------------------------------------------------


def test_the_model_is_config_ymls_else_the_first_served_else_a_clear_503() -> None:
    assert tabby_model(_monitor(("first", "second"))) == "first"
    assert tabby_model(_monitor(("first", "second"), tabby_model_name="second")) == "second"
    with pytest.raises(NoCompletionModel, match=r"tabby\.model_name") as raised:
        tabby_model(_monitor(()))
    assert raised.value.status_code == 503


@pytest.mark.parametrize(
    ("language", "label"), [("python", "python"), ("typescriptreact", "typescript"), ("cobol", "other"), (None, None)]
)
def test_language_labels(language: str | None, label: str | None) -> None:
    assert fim.language_label(language, QWEN) == label


def test_an_event_is_recorded_as_tabby_logs_it() -> None:
    event = LogEventRequest.model_validate({"type": "select", "completion_id": "cmpl-7", "choice_index": 0})
    recorded = build_event(event, "line")
    assert {k: v for k, v in recorded.items() if k != "ts"} == {
        "type": "select",
        "completion_id": "cmpl-7",
        "choice_index": 0,
        "view_id": None,
        "elapsed": None,
        "select_kind": "line",
    }
    assert isinstance(recorded["ts"], int)


# --- the whole completion --------------------------------------------------------------------------------------------


def test_complete_sends_the_body_and_notes_the_exchange_and_the_later_event() -> None:
    service = TabbyService(_monitor(("qwen-coder",)), None)  # no config: the shipped qwen.json
    sent: list[tuple[str, dict[str, Any]]] = []

    async def fetch(model: str, body: bytes) -> bytes:
        sent.append((model, orjson.loads(body)))
        usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
        return orjson.dumps({"id": "cmpl-9", "choices": [{"index": 0, "text": "a + b<|endoftext|>"}], "usage": usage})

    exchange = _exchange()
    response = asyncio.run(service.complete(_request(language="typescriptreact"), exchange, fetch))
    assert response.model_dump() == {"id": "cmpl-9", "choices": [{"index": 0, "text": "a + b"}]}
    assert [model for model, _ in sent] == ["qwen-coder"] and sent[0][1]["prompt"].startswith("<|fim_prefix|>")
    assert (exchange.model, exchange.language, exchange.completion_id) == ("qwen-coder", "typescript", "cmpl-9")
    assert (exchange.prompt_tokens, exchange.completion_tokens) == (11, 3)

    later = _exchange()
    event = LogEventRequest.model_validate({"type": "view", "completion_id": "cmpl-9", "choice_index": 0})
    service.note_event(event, None, later)
    assert (later.model, later.language, later.completion_id) == ("qwen-coder", "typescript", "cmpl-9")
    unknown = _exchange()
    service.note_event(
        LogEventRequest.model_validate({"type": "view", "completion_id": "x", "choice_index": 0}), None, unknown
    )
    assert (unknown.model, unknown.completion_id) == (None, "x")


def test_complete_does_not_call_the_upstream_for_a_model_nobody_serves() -> None:
    service = TabbyService(_monitor(("qwen-coder",), tabby_model_name="gone"), None)

    async def fetch(model: str, body: bytes) -> bytes:
        raise AssertionError("no upstream call for a model nobody serves")

    with pytest.raises(ModelNotFound, match="'gone' does not exist"):
        asyncio.run(service.complete(_request(), _exchange(), fetch))
