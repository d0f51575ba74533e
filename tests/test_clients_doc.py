"""docs/clients.md: its config blocks, and the requests Continue sends for each model entry of them, answered by
kodify-proxy (in front of the fake upstream serving `fake-model` and `fake-embed`).

The same blocks drive the real clients in the e2e tier: `cn` (tests/e2e/test_continue.py) and tabby-agent
(tests/e2e/tabby_agent_driver.py) read them through `client_config`.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
import yaml

from tests.servers import REPO, Server
from tests.test_dev_data import autocomplete, continue_bodies, run_node

CLIENTS_DOC = REPO / "docs" / "clients.md"
# A tested block is the fenced block right after its marker comment (invisible when the Markdown is rendered).
_BLOCK = re.compile(r"^<!-- tested: (?P<name>[^>]+?) -->\n```[a-z]*\n(?P<body>.*?)^```$", re.M | re.S)
PLACEHOLDERS = {"<kodify-proxy>", "<token>", "<model>", "<embedding-model>"}
BLOCKS = ("continue config.yaml", "continue config.json", "tabby-agent config.toml")
CONTINUE_CONFIGS = ("continue config.yaml", "continue config.json")
FAKE = {
    "<kodify-proxy>": "",
    "<token>": "sk-kodify-doc-token",
    "<model>": "fake-model",
    "<embedding-model>": "fake-embed",
}
PREFIX, SUFFIX = "def fib(n):\n    if n <= 1:\n        return n\n    return ", "\n\n\nprint(fib(10))\n"


def doc_blocks() -> dict[str, str]:
    """Every tested block of docs/clients.md by name, as written (placeholders in it)."""
    return {match["name"]: match["body"] for match in _BLOCK.finditer(CLIENTS_DOC.read_text())}


def client_config(name: str, values: Mapping[str, str]) -> str:
    """Block `name` of docs/clients.md with its placeholders (`<kodify-proxy>`, `<token>`, ...) replaced by `values`."""
    text = doc_blocks()[name]
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def continue_models(name: str, values: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The model entry Continue takes for chat, autocomplete and embed from a config block, YAML or classic JSON."""
    text = client_config(name, values)
    if name.endswith(".json"):
        config = json.loads(text)
        return {
            "chat": config["models"][0],
            "autocomplete": config["tabAutocompleteModel"],
            "embed": config["embeddingsProvider"],
        }
    models = yaml.safe_load(text)["models"]
    return {role: next(m for m in models if role in m["roles"]) for role in ("chat", "autocomplete", "embed")}


def continue_fim(model: str, prefix: str, suffix: str) -> tuple[str, list[str]]:
    """The prompt and stop words Continue's autocomplete builds for `model` (core/autocomplete/templating/
    AutocompleteTemplate.ts getTemplateForModel, getStopTokens.ts): Qwen's tokens for a name with `qwen` and `coder`,
    StarCoder's for the names it does not know."""
    name = model.lower()
    if "qwen" in name and "coder" in name:
        tokens = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
        stop = ["<|endoftext|>", *tokens, "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<|im_start|>", "<|im_end|>"]
    else:
        tokens = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
        stop = [*tokens, "<file_sep>", "<|endoftext|>", "</fim_middle>", "</code>"]
    prompt = f"{tokens[0]}{prefix}{tokens[1]}{suffix}{tokens[2]}"
    return prompt, [*stop, "\n\n", "\r\n\r\n", "/src/", "#- coding: utf-8", "```"]


def sse_events(response: httpx.Response) -> list[Any]:
    """The `data:` events of an event stream, JSON-decoded; the final `[DONE]` as the string."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    data = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    return [item if item == "[DONE]" else json.loads(item) for item in data]


def post(entry: dict[str, Any], path: str, body: dict[str, Any]) -> httpx.Response:
    """What Continue's `openai` provider does: POST to `apiBase` + path with the entry's key as a Bearer token."""
    headers = {"Authorization": f"Bearer {entry['apiKey']}"}
    return httpx.post(entry["apiBase"] + path, json=body, headers=headers, timeout=30)


@pytest.fixture
def values(proxy: Server) -> dict[str, str]:
    return {**FAKE, "<kodify-proxy>": proxy.url}


def test_every_client_config_block_is_there_and_parses() -> None:
    blocks = doc_blocks()
    assert sorted(blocks) == sorted(BLOCKS)
    for name, text in blocks.items():
        assert set(re.findall(r"<[a-z-]+>", text)) <= PLACEHOLDERS, name
    filled = {name: client_config(name, {**FAKE, "<kodify-proxy>": "http://kodify:8000"}) for name in BLOCKS}
    assert yaml.safe_load(filled["continue config.yaml"])["schema"] == "v1"
    classic = set(json.loads(filled["continue config.json"]))
    assert classic == {"models", "tabAutocompleteModel", "embeddingsProvider", "data"}
    tabby = tomllib.loads(filled["tabby-agent config.toml"])
    assert tabby["server"] == {"endpoint": "http://kodify:8000", "token": FAKE["<token>"]}
    assert tabby["anonymousUsageTracking"] == {"disable": True}


@pytest.mark.parametrize("config", CONTINUE_CONFIGS)
def test_every_continue_model_entry_points_at_the_openai_api(config: str) -> None:
    models = continue_models(config, {**FAKE, "<kodify-proxy>": "http://kodify:8000"})
    assert set(models) == {"chat", "autocomplete", "embed"}
    for role, entry in models.items():
        assert entry["provider"] == "openai", role
        assert (entry["apiBase"], entry["apiKey"]) == ("http://kodify:8000/v1", FAKE["<token>"]), role


@pytest.mark.parametrize("config", CONTINUE_CONFIGS)
def test_chat_as_continue_sends_it(config: str, values: dict[str, str]) -> None:
    entry = continue_models(config, values)["chat"]
    tool = {"type": "function", "function": {"name": "Read", "parameters": {"type": "object", "properties": {}}}}
    body = {
        "model": entry["model"],
        "messages": [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "say hi"}],
        "stream": True,
        "tools": [tool],
        "stream_options": {"include_usage": True},
    }
    events = sse_events(post(entry, "/chat/completions", body))
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
    assert text == "Hello world" and events[-1] == "[DONE]"


@pytest.mark.parametrize("config", CONTINUE_CONFIGS)
def test_autocomplete_as_continue_sends_it(config: str, values: dict[str, str]) -> None:
    entry = continue_models(config, values)["autocomplete"]
    prompt, stop = continue_fim(entry["model"], PREFIX, SUFFIX)
    assert prompt.startswith("<fim_prefix>")  # `fake-model` is no qwen...coder name: StarCoder's tokens
    body = {"model": entry["model"], "prompt": prompt, "max_tokens": 64, "temperature": 0.01, "stop": stop}
    events = sse_events(post(entry, "/completions", {**body, "stream": True}))
    assert "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"]) == " return 42"
    assert events[-1] == "[DONE]"


@pytest.mark.parametrize("config", CONTINUE_CONFIGS)
def test_embeddings_as_continue_sends_them(config: str, values: dict[str, str]) -> None:
    entry = continue_models(config, values)["embed"]
    answer = post(entry, "/embeddings", {"model": entry["model"], "input": ["def fib(n):", "class Tree:"]})
    assert answer.status_code == 200, answer.text
    assert [item["index"] for item in answer.json()["data"]] == [0, 1]


def test_continue_fim_templates_follow_the_model_name() -> None:
    assert continue_fim("Qwen2.5-Coder-7B-Instruct", "a", "b")[0] == "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>"
    assert continue_fim("Qwen2.5-7B-Instruct", "a", "b")[0] == "<fim_prefix>a<fim_suffix>b<fim_middle>"
    assert continue_fim("tiny", "a", "b")[0] == "<fim_prefix>a<fim_suffix>b<fim_middle>"


@pytest.mark.parametrize("config", CONTINUE_CONFIGS)
def test_the_data_block_takes_continues_events(config: str, values: dict[str, str]) -> None:
    text = client_config(config, values)
    (data,) = json.loads(text)["data"] if config.endswith(".json") else yaml.safe_load(text)["data"]
    if config.endswith(".yaml"):  # config-yaml's own schema takes the whole file
        assert run_node({"mode": "config", "config": yaml.safe_load(text)})["data"] == [data]
    bodies = continue_bodies([autocomplete("doc-1", True)], {k: data[k] for k in ("schema", "level", "events")})
    headers = {"Authorization": f"Bearer {data['apiKey']}"}
    assert [httpx.post(data["destination"], json=b, headers=headers, timeout=30).status_code for b in bodies] == [200]
