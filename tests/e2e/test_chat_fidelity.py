"""Chat in the lane answers as vLLM itself does: the same request to the real vLLM server directly and through
kodify-proxy gives the same body, the same stream chunk for chunk and the same refusals, but for the fields that
differ between any two calls. Through LiteLLM (KODIFY_CHAT_LANE=litellm) the differences it makes, that no seam
fixes (docs/litellm-seams.md), are pinned, so an upgrade that fixes one fails here and the doc gets updated."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SERVED_MODEL
from tests.e2e.test_fidelity import by_choice, comparable
from tests.servers import Server, kodify_proxy, upstreams_yaml

pytestmark = pytest.mark.e2e
CHAT = {
    "model": SERVED_MODEL,
    "messages": [{"role": "user", "content": "Write a Python function."}],
    "max_tokens": 8,
    "temperature": 0,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

NAMED = {"type": "function", "function": {"name": "get_weather"}}  # vLLM then decodes the arguments as JSON


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory, vllm: str) -> Iterator[Server]:
    server = kodify_proxy(tmp_path_factory.mktemp("chat-lane"), upstreams_yaml(vllm), name="chat-lane").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def litellm_handoff(tmp_path_factory: pytest.TempPathFactory, vllm: str) -> Iterator[Server]:
    env = {"KODIFY_CHAT_LANE": "litellm"}
    server = kodify_proxy(tmp_path_factory.mktemp("chat-litellm"), upstreams_yaml(vllm), env=env, name="chat-litellm")
    yield server.start()
    server.stop()


def events(base: str, body: dict[str, Any]) -> list[Any]:
    """A chat stream's events: each chunk as JSON, and the closing [DONE]."""
    with httpx.stream("POST", base + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200, response.read()
        lines = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]] + ["[DONE]"]


def text_of(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1] if c["choices"])


STREAMS: dict[str, dict[str, Any]] = {
    "plain": {},
    "include-usage": {"stream_options": {"include_usage": True}},
    "continuous-usage-without-usage": {"stream_options": {"include_usage": False, "continuous_usage_stats": True}},
    "continuous-usage": {"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    "logprobs": {"logprobs": True, "top_logprobs": 2},
    "return-token-ids": {"return_token_ids": True},
    "tool-call": {"tools": [WEATHER], "tool_choice": NAMED, "max_tokens": 60},
    "tools-required": {"tools": [WEATHER], "tool_choice": "required", "max_tokens": 40},
    "tools-offered": {"tools": [WEATHER], "tool_choice": "auto"},
}


@pytest.mark.parametrize("extra", STREAMS.values(), ids=STREAMS.keys())
def test_a_chat_stream_is_vllms_own_chunk_for_chunk(vllm: str, lane: Server, extra: dict[str, Any]) -> None:
    body = {**CHAT, **extra}
    direct, proxied = events(vllm, body), events(lane.url, body)
    assert comparable(proxied) == comparable(direct)


def test_n2_streams_give_each_choice_vllms_chunks(vllm: str, lane: Server) -> None:
    body = {**CHAT, "n": 2, "seed": 7, "temperature": 0.8}
    direct, proxied = events(vllm, body), events(lane.url, body)
    assert by_choice(comparable(proxied)) == by_choice(comparable(direct))
    assert proxied[-1] == "[DONE]" and len(proxied) == len(direct)


ANSWERS: dict[str, dict[str, Any]] = {
    "plain": {},
    "prompt-logprobs": {"prompt_logprobs": 1},
    "return-token-ids": {"return_token_ids": True},
    "tool-call": {"tools": [WEATHER], "tool_choice": NAMED, "max_tokens": 60},
}


@pytest.mark.parametrize("extra", ANSWERS.values(), ids=ANSWERS.keys())
def test_a_chat_answer_is_vllms_own(vllm: str, lane: Server, extra: dict[str, Any]) -> None:
    direct = httpx.post(vllm + "/v1/chat/completions", json={**CHAT, **extra}, timeout=60)
    proxied = httpx.post(lane.url + "/v1/chat/completions", json={**CHAT, **extra}, timeout=60)
    assert proxied.status_code == direct.status_code == 200
    assert comparable(proxied.json()) == comparable(direct.json())


def test_a_forced_tool_call_is_a_tool_call(lane: Server) -> None:
    body = {**CHAT, **ANSWERS["tool-call"]}
    message = httpx.post(lane.url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["name"] == "get_weather"


REFUSALS: dict[str, dict[str, Any]] = {
    "max-tokens": {"max_tokens": 100000},
    "negative-temperature": {"temperature": -1},
    "seed-out-of-range": {"seed": 2**64},
    "no-messages": {"messages": []},
    "wrong-type": {"max_tokens": "abc"},
}


@pytest.mark.parametrize("extra", REFUSALS.values(), ids=REFUSALS.keys())
def test_vllms_refusal_keeps_its_status_and_words(vllm: str, lane: Server, extra: dict[str, Any]) -> None:
    direct = httpx.post(vllm + "/v1/chat/completions", json={**CHAT, **extra}, timeout=60)
    proxied = httpx.post(lane.url + "/v1/chat/completions", json={**CHAT, **extra}, timeout=60)
    assert proxied.status_code == direct.status_code == 400
    ours, theirs = proxied.json()["error"], direct.json()["error"]
    assert (ours["message"], ours["param"]) == (theirs["message"], theirs["param"])


def test_through_litellm_the_answer_itself_is_vllms(vllm: str, litellm_handoff: Server) -> None:
    direct = httpx.post(vllm + "/v1/chat/completions", json=CHAT, timeout=60).json()
    through = httpx.post(litellm_handoff.url + "/v1/chat/completions", json=CHAT, timeout=60).json()
    assert through["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    usage = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert {k: through["usage"][k] for k in usage} == {k: direct["usage"][k] for k in usage}
    assert text_of(events(litellm_handoff.url, CHAT)) == text_of(events(vllm, CHAT))


def test_through_litellm_known_difference_finish_reason_in_an_extra_empty_chunk(
    vllm: str, litellm_handoff: Server
) -> None:
    direct, through = events(vllm, CHAT)[:-1], events(litellm_handoff.url, CHAT)[:-1]
    assert direct[-1]["choices"][0]["delta"].get("content") and direct[-1]["choices"][0]["finish_reason"]
    last = through[-1]["choices"][0]
    assert last["finish_reason"] == "length" and not last["delta"].get("content")


def test_through_litellm_known_difference_the_usage_chunk_carries_a_choice(vllm: str, litellm_handoff: Server) -> None:
    body = {**CHAT, "stream_options": {"include_usage": True}}
    direct, through = events(vllm, body)[:-1], events(litellm_handoff.url, body)[:-1]
    assert direct[-1]["choices"] == [] and direct[-1]["usage"]["completion_tokens"] == 8
    assert through[-1]["usage"]["completion_tokens"] == 8 and through[-1]["choices"] != []


def test_through_litellm_known_difference_vllms_extra_fields_move(vllm: str, litellm_handoff: Server) -> None:
    direct = httpx.post(vllm + "/v1/chat/completions", json=CHAT, timeout=60).json()
    through = httpx.post(litellm_handoff.url + "/v1/chat/completions", json=CHAT, timeout=60).json()
    assert "stop_reason" in direct["choices"][0] and "token_ids" in direct["choices"][0]
    assert "stop_reason" not in through["choices"][0]
    assert "provider_specific_fields" in through["choices"][0]
