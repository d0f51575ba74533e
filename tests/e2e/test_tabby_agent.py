"""Autocompletion end to end: the real tabby-agent 1.5.0 (npm) and the `openai` SDK against kodify-proxy in front of
a real vLLM server serving the tiny Qwen2 model (FIM tokens <|fim_prefix|> <|fim_suffix|> <|fim_middle|>)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kodify_proxy import fim
from kodify_proxy.fim import post as fim_post
from kodify_proxy.preprocess import PreprocessingConfig, load_shipped, parse_config
from tests.e2e.conftest import SERVED_MODEL, ResponseCounter
from tests.e2e.tabby_agent_driver import (
    RecordingRelay,
    install_agent,
    jsonl_complete_and_post_events,
    lsp_complete,
    write_agent_config,
)
from tests.servers import Server, kodify_proxy, upstreams_yaml

pytestmark = pytest.mark.e2e

TOKEN = "sk-kodify-e2e-tabby-shared-token"
DOCUMENT = "def fib(n):\n    if n <= 1:\n        return n\n    return \n\n\nprint(fib(10))\n"
LINE, CHARACTER = 3, 11  # after "    return "
OFFSET = DOCUMENT.index("return \n") + len("return ")


def e2e_config() -> PreprocessingConfig:
    """qwen.json made deterministic for a random model: greedy, 4 tokens.

    The tiny model's greedy output repeats one token; tabby-agent drops a completion whose line ends in six or more
    repeats (postprocess removeLineEndsWithRepetition), so four tokens keep it visible. Sampling would be random.
    """
    data = load_shipped("qwen").model_dump()
    data["temperature"] = 0.0
    data["max_tokens"]["default"] = 4
    return parse_config(json.dumps(data), Path("e2e-qwen.json"))


def e2e_proxy(tmp: Path, vllm: str, token: str, name: str) -> Server:
    """kodify-proxy (started) with one shared `token` in front of the real vLLM at `vllm`, Tabby completions made by
    `e2e_config`."""
    config = tmp / "e2e-qwen.json"
    config.write_text(e2e_config().model_dump_json())
    env = {"VLLM_API_KEY": token, "COMPLETIONS_PREPROCESSING_CONFIG": str(config)}
    return kodify_proxy(tmp, upstreams_yaml(vllm), env=env, name=name).start()


@pytest.fixture(scope="module")
def agent_cli() -> Path:
    return install_agent()


@pytest.fixture(scope="module")
def tabby_vllm_proxy(tmp_path_factory: pytest.TempPathFactory, vllm: str) -> Iterator[Server]:
    """kodify-proxy with one shared token (VLLM_API_KEY) and the e2e config, in front of the real vLLM."""
    server = e2e_proxy(tmp_path_factory.mktemp("tabby-vllm"), vllm, TOKEN, "tabby-vllm-proxy")
    yield server
    server.stop()


@pytest.fixture
def relay(tabby_vllm_proxy: Server) -> Iterator[RecordingRelay]:
    recorder = RecordingRelay(tabby_vllm_proxy.url).start()
    yield recorder
    recorder.stop()


def direct_text(vllm: str, request: fim.FimInput, config: PreprocessingConfig, max_tokens: int) -> str:
    """What vLLM itself generates for the prompt our builder makes, post-processed by the same rules."""
    built = fim.build_prompt(request, config)
    body = {
        "model": SERVED_MODEL,
        "prompt": built.prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stop": list(built.stop),
    }
    answer = httpx.post(vllm + "/v1/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return fim_post.postprocess(answer.json()["choices"][0]["text"], built.post, config) or ""


def _tabby_answers(relay: RecordingRelay) -> list[dict[str, Any]]:
    return [json.loads(s.answer) for s in relay.seen if s.path == "/v1/completions"]


def test_tabby_agent_over_lsp_gets_a_completion_from_vllm(
    agent_cli: Path, relay: RecordingRelay, vllm: str, tmp_path: Path
) -> None:
    write_agent_config(tmp_path, relay.url, TOKEN)
    result = lsp_complete(agent_cli, tmp_path, DOCUMENT, LINE, CHARACTER)
    seen = relay.paths()
    assert seen[:3] == [
        ("GET", "/v1/health", 200),
        ("GET", "/v1beta/server_setting", 200),
        ("POST", "/v1/completions", 200),
    ], seen
    assert all(status == 200 for _, _, status in seen), seen
    (answer, *_) = _tabby_answers(relay)
    text = answer["choices"][0]["text"]
    assert text.strip() and answer["id"].startswith("cmpl-")
    item = result["items"][0]
    assert item["textEdit"]["newText"] == text and item["data"]["completionId"] == answer["id"]
    sent = json.loads(next(s.body for s in relay.seen if s.path == "/v1/completions"))
    assert sent == {"language": "python", "segments": {"prefix": DOCUMENT[:OFFSET], "suffix": DOCUMENT[OFFSET:]}}
    request = fim.FimInput(DOCUMENT[:OFFSET], DOCUMENT[OFFSET:], "python")
    assert text == direct_text(vllm, request, e2e_config(), max_tokens=4)


def tabby_suggestions(proxy: Server) -> dict[str, float]:
    """kodify_suggestions_total of Tabby's autocompletions by outcome, read with the master key."""
    text = httpx.get(proxy.url + "/metrics", headers={"Authorization": f"Bearer {proxy.master_key()}"}).text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "kodify_suggestions_total" and sample.labels["client"] == "tabby"
    }


def test_tabby_agent_events_and_full_context(
    agent_cli: Path, relay: RecordingRelay, tabby_vllm_proxy: Server, tmp_path: Path
) -> None:
    # tabby-agent 1.5.0 posts events only in its JSON-lines mode (its LSP server has no telemetry request).
    write_agent_config(tmp_path, relay.url, TOKEN)
    before = tabby_suggestions(tabby_vllm_proxy)
    completion, posted = jsonl_complete_and_post_events(agent_cli, tmp_path, relay.url, TOKEN, DOCUMENT, OFFSET)
    after = tabby_suggestions(tabby_vllm_proxy)
    # its view and select count as an autocompletion shown and accepted (acceptance.py); the dismiss as neither
    assert {outcome: after.get(outcome, 0) - before.get(outcome, 0) for outcome in after} == {"shown": 1, "accepted": 1}
    assert completion["choices"] and completion["choices"][0]["text"].strip()
    assert posted == [True, True, True]
    seen = relay.paths()
    assert ("GET", "/v1/health", 200) in seen and ("GET", "/v1beta/server_setting", 200) in seen
    assert ("POST", "/v1/completions", 200) in seen
    events = [(path, status) for method, path, status in seen if path.startswith("/v1/events")]
    assert events == [("/v1/events", 200), ("/v1/events?select_kind=line", 200), ("/v1/events", 200)]
    assert all(status == 200 for _, _, status in seen), seen
    sent = json.loads(next(s.body for s in relay.seen if s.path == "/v1/completions"))
    assert sent["segments"]["declarations"] == [
        {"filepath": "/workspace/demo/util.py", "body": "def helper(x):\n    return x"}
    ]


def test_tabby_agent_with_a_wrong_token_is_unauthorized(agent_cli: Path, relay: RecordingRelay, tmp_path: Path) -> None:
    write_agent_config(tmp_path, relay.url, "sk-not-the-token")
    result = lsp_complete(agent_cli, tmp_path, DOCUMENT, LINE, CHARACTER, attempts=2)
    assert result["items"] == []
    seen = relay.paths()
    assert ("GET", "/v1/health", 401) in seen
    # 1.5.0 still tries completions after a 401 health check (newer agents stop); every one must be refused.
    assert {status for _, path, status in seen if path == "/v1/completions"} <= {401}
    assert all(status == 401 for _, _, status in seen), seen


def test_openai_sdk_legacy_completion_with_suffix(vllm_proxy: Server, vllm: str, sent: ResponseCounter) -> None:
    prefix, suffix = "def add(a, b):\n    return ", "\n\n\nprint(add(1, 2))\n"
    rejected = httpx.post(
        vllm + "/v1/completions",
        timeout=60,
        json={"model": SERVED_MODEL, "prompt": prefix, "suffix": suffix, "max_tokens": 4},
    )
    assert rejected.status_code == 400 and "suffix" in rejected.text  # why the proxy folds it into the prompt
    # The counting client: this proxy journals, and the journal check compares rows with responses counted.
    with openai.OpenAI(
        base_url=vllm_proxy.url + "/v1", api_key="unused", max_retries=0, http_client=sent.http_client()
    ) as client:
        reply = client.completions.create(model=SERVED_MODEL, prompt=prefix, suffix=suffix, max_tokens=4, temperature=0)
    text = reply.choices[0].text
    assert text.strip()
    assert text == direct_text(vllm, fim.FimInput(prefix, suffix), load_shipped("qwen"), max_tokens=4)
