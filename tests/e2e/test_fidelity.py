"""The lane answers as vLLM itself does: the same request to the real vLLM server directly and through kodify-proxy,
greedy, gives the same body and the same stream, but for the fields that differ between any two calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SERVED_MODEL
from tests.servers import Server, kodify_proxy, upstreams_yaml

pytestmark = pytest.mark.e2e
PER_CALL = {"id", "created"}  # a new id and timestamp on every call, direct or not


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory, vllm: str) -> Iterator[Server]:
    server = kodify_proxy(tmp_path_factory.mktemp("fidelity"), upstreams_yaml(vllm), name="fidelity").start()
    yield server
    server.stop()


def comparable(value: Any) -> Any:
    """`value` without the per-call fields, at any depth."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in PER_CALL}
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return value


def both(vllm: str, lane: Server, body: dict[str, Any], path: str = "/v1/completions") -> tuple[Any, Any]:
    direct = httpx.post(vllm + path, json=body, timeout=60)
    proxied = httpx.post(lane.url + path, json=body, timeout=60)
    assert direct.status_code == proxied.status_code, (direct.text, proxied.text)
    return direct.json(), proxied.json()


def stream_of(base: str, body: dict[str, Any]) -> list[Any]:
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else comparable(json.loads(line)) for line in lines]


GREEDY = {"model": SERVED_MODEL, "max_tokens": 8, "temperature": 0}


@pytest.mark.parametrize(
    "extra",
    [
        {"prompt": [12, 34, 56, 78]},
        {"prompt": [[12, 34], [56, 78]]},
        {"prompt": "def add(a, b):", "echo": True, "logprobs": 2},
        {"prompt": [12, 34, 56], "return_token_ids": True, "prompt_logprobs": 1},
        {"prompt": ["import os", "def f("], "n": 1},
    ],
    ids=["token-ids", "token-id-batch", "echo-logprobs", "return-token-ids", "text-batch"],
)
def test_a_completion_is_vllms_own(vllm: str, lane: Server, extra: dict[str, Any]) -> None:
    direct, proxied = both(vllm, lane, {**GREEDY, **extra})
    assert comparable(proxied) == comparable(direct)


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 2, "seed": 7, "temperature": 0.8},
        {"stream_options": {"include_usage": True}},
        {"logprobs": 1, "return_token_ids": True},
        {},
    ],
    ids=["n2", "include-usage", "logprobs-token-ids", "plain"],
)
def test_a_stream_is_vllms_own(vllm: str, lane: Server, extra: dict[str, Any]) -> None:
    body = {**GREEDY, "prompt": "def add(a, b):", "stream": True, **extra}
    direct, proxied = stream_of(vllm, body), stream_of(lane.url, body)
    if extra.get("n"):  # two sequences may interleave differently from call to call: compare each choice's own chunks
        assert by_choice(proxied) == by_choice(direct)
    else:
        assert proxied == direct


def by_choice(chunks: list[Any]) -> dict[int, list[Any]]:
    found: dict[int, list[Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"] if isinstance(chunk, dict) else ():
            found.setdefault(choice["index"], []).append(choice)
    return found


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {**GREEDY, "prompt": "x", "max_tokens": 100000}),
        ("/v1/completions", {**GREEDY, "prompt": "x" * 3000}),
        ("/v1/completions", {**GREEDY, "prompt": "x", "temperature": -1}),
        ("/v1/completions", {**GREEDY, "prompt": "x", "seed": 2**64}),
        ("/v1/completions", {**GREEDY, "prompt": ""}),
    ],
    ids=["max-tokens", "too-long", "negative-temperature", "seed-out-of-range", "empty-prompt"],
)
def test_vllms_refusal_keeps_its_status_and_message(vllm: str, lane: Server, path: str, body: dict[str, Any]) -> None:
    """The lane refuses only what is ours (JSON, MAX_N, sizes, finite numbers): vLLM words the rest."""
    direct = httpx.post(vllm + path, json=body, timeout=60)
    proxied = httpx.post(lane.url + path, json=body, timeout=60)
    assert proxied.status_code == direct.status_code == 400
    ours, theirs = proxied.json()["error"], direct.json()["error"]
    assert (ours["message"], ours["param"]) == (theirs["message"], theirs["param"])
    assert (ours["type"], ours["code"]) == ("invalid_request_error", "400")


def test_models_are_listed_as_vllm_lists_them(vllm: str, lane: Server) -> None:
    direct = httpx.get(vllm + "/v1/models").json()
    proxied = httpx.get(lane.url + "/v1/models").json()
    assert comparable(proxied) == comparable(direct)
    assert proxied["data"][0]["max_model_len"] == 512


def test_the_lane_sends_no_header_naming_vllm(vllm: str, lane: Server) -> None:
    response = httpx.post(lane.url + "/v1/completions", json={**GREEDY, "prompt": "x"})
    port = vllm.rsplit(":", 1)[1]
    assert all(port not in value for value in response.headers.values())
    assert set(response.headers) == {"date", "server", "content-type", "content-length", "x-litellm-call-id"}
