"""Chat through LiteLLM against the real vLLM server directly, the same greedy request: what we guarantee is equal,
and the differences LiteLLM makes that no seam fixes (docs/litellm-seams.md) are pinned, so an upgrade that fixes
one fails here and the doc gets updated."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SERVED_MODEL
from tests.servers import Server, kodify_proxy, upstreams_yaml

pytestmark = pytest.mark.e2e
CHAT = {
    "model": SERVED_MODEL,
    "messages": [{"role": "user", "content": "Write a Python function."}],
    "max_tokens": 8,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, vllm: str) -> Iterator[Server]:
    server = kodify_proxy(tmp_path_factory.mktemp("chat-fidelity"), upstreams_yaml(vllm), name="chat").start()
    yield server
    server.stop()


def stream(base: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", base + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        lines = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_the_answer_itself_is_vllms(vllm: str, proxy: Server) -> None:
    direct = httpx.post(vllm + "/v1/chat/completions", json=CHAT, timeout=60).json()
    through = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=60).json()
    assert through["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert through["choices"][0]["finish_reason"] == direct["choices"][0]["finish_reason"]
    usage = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert {k: through["usage"][k] for k in usage} == {k: direct["usage"][k] for k in usage}
    assert text_of(stream(proxy.url, CHAT)) == text_of(stream(vllm, CHAT))


def test_vllms_refusal_keeps_its_status_and_message(vllm: str, proxy: Server) -> None:
    body = {**CHAT, "max_tokens": 100000}
    direct = httpx.post(vllm + "/v1/chat/completions", json=body, timeout=60)
    through = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=60)
    assert through.status_code == direct.status_code == 400
    assert through.json()["error"]["message"] == direct.json()["error"]["message"]
    assert through.json()["error"]["type"] == "invalid_request_error"


def test_known_difference_finish_reason_in_an_extra_empty_chunk(vllm: str, proxy: Server) -> None:
    direct, through = stream(vllm, CHAT), stream(proxy.url, CHAT)
    assert direct[-1]["choices"][0]["delta"].get("content") and direct[-1]["choices"][0]["finish_reason"]
    last = through[-1]["choices"][0]
    assert last["finish_reason"] == "length" and not last["delta"].get("content")


def test_known_difference_the_usage_chunk_carries_a_choice(vllm: str, proxy: Server) -> None:
    body = {**CHAT, "stream_options": {"include_usage": True}}
    direct, through = stream(vllm, body), stream(proxy.url, body)
    assert direct[-1]["choices"] == [] and direct[-1]["usage"]["completion_tokens"] == 8
    assert through[-1]["usage"]["completion_tokens"] == 8 and through[-1]["choices"] != []


def test_known_difference_vllms_extra_fields_move_or_vanish(vllm: str, proxy: Server) -> None:
    direct = httpx.post(vllm + "/v1/chat/completions", json=CHAT, timeout=60).json()
    through = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=60).json()
    assert "stop_reason" in direct["choices"][0] and "token_ids" in direct["choices"][0]
    assert "stop_reason" not in through["choices"][0]
    assert "provider_specific_fields" in through["choices"][0]
