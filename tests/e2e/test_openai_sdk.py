"""The official `openai` SDK against kodify-proxy in front of a real vLLM server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import SERVED_MODEL, ResponseCounter
from tests.journal_support import journal_rows
from tests.servers import Server, fake_upstream, free_port, kodify_proxy, upstreams_yaml

pytestmark = pytest.mark.e2e
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write a Python function that adds two numbers."}
]


@pytest.fixture
def client(vllm_proxy: Server, sent: ResponseCounter) -> Iterator[openai.OpenAI]:
    """The official SDK pointed at the journaling proxy; every response it gets is counted."""
    with openai.OpenAI(
        base_url=vllm_proxy.url + "/v1", api_key="unused", max_retries=0, http_client=sent.http_client()
    ) as sdk:
        yield sdk


def _client(proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models(client: openai.OpenAI) -> None:
    (model,) = client.models.list().data
    assert model.id == SERVED_MODEL


def test_chat(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=SERVED_MODEL,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens >= 1


def test_streamed_chat(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=SERVED_MODEL,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) >= 2 and "".join(pieces)


def test_completions_with_vllm_sampling_parameters(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=SERVED_MODEL,
        prompt="def add(a, b):\n    return",
        max_tokens=6,
        temperature=1.0,
        n=2,
        extra_body={"top_k": 1, "min_tokens": 6, "ignore_eos": True},
    )
    assert len(reply.choices) == 2
    assert reply.choices[0].text == reply.choices[1].text  # top_k=1 makes sampling greedy: vLLM got it
    assert reply.usage is not None and reply.usage.completion_tokens == 12


def test_n_above_max_n(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=SERVED_MODEL, messages=MESSAGES, n=5)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "n" and "MAX_N=4" in error["message"]


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert SERVED_MODEL in str(caught.value)


def test_vllm_own_validation_reaches_the_client_cleanly(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=SERVED_MODEL, prompt="x", max_tokens=100000)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "max_tokens" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("max_tokens=100000 cannot be greater than max_model_len=512")
    with pytest.raises(openai.BadRequestError) as greedy:
        client.chat.completions.create(
            model=SERVED_MODEL,
            messages=MESSAGES,
            n=2,
            temperature=0,
        )
    assert isinstance(greedy.value.body, dict)
    assert greedy.value.body["message"] == "n must be 1 when using greedy sampling, got 2."


def test_stopped_upstream(tmp_path: Path, vllm: str) -> None:
    """A second upstream serving the same model stops: requests keep working; alone, they fail fast with 503."""
    decoy = fake_upstream(tmp_path, (SERVED_MODEL,)).start()
    proxy = kodify_proxy(tmp_path, upstreams_yaml(vllm, decoy.url), name="two-upstreams").start()
    try:
        decoy.stop()
        with _client(proxy) as client:
            for _ in range(4):
                reply = client.completions.create(model=SERVED_MODEL, prompt="import", max_tokens=2, temperature=0)
                assert reply.choices[0].text
    finally:
        proxy.stop()
    dead = f"http://127.0.0.1:{free_port()}"
    lonely = kodify_proxy(tmp_path, f"upstreams:\n  {dead}:\n    models: [{SERVED_MODEL}]\n", name="dead").start()
    try:
        with _client(lonely) as client, pytest.raises(openai.APIStatusError) as caught:
            client.completions.create(model=SERVED_MODEL, prompt="x", max_tokens=2)
        assert caught.value.status_code in (502, 503) and dead in str(caught.value)
        assert httpx.get(lonely.url + "/health").status_code == 503
    finally:
        lonely.stop()


def test_every_request_of_the_sdk_is_in_the_journal(
    client: openai.OpenAI, vllm_proxy: Server, journal_url: str, sent: ResponseCounter
) -> None:
    """One journal row per response the SDK got, found by its request id: this test's own (a completion, a stream, a
    400 of ours, vLLM's 404 for an unknown model) and those of every test that ran before it, in whatever order."""
    client.completions.create(model=SERVED_MODEL, prompt="import", max_tokens=2, temperature=0)
    chunks = client.chat.completions.create(model=SERVED_MODEL, messages=MESSAGES, max_tokens=2, stream=True)
    assert [chunk for chunk in chunks]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=SERVED_MODEL, messages=MESSAGES, n=5)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    expected = sent.by_base[vllm_proxy.url]
    assert "" not in expected and len(expected) >= 4 and set(expected.values()) >= {200, 400, 404}
    deadline = time.monotonic() + 30
    rows = journal_rows(journal_url)
    while not expected.keys() <= {r["request_id"] for r in rows} and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = journal_rows(journal_url)
    assert {r["request_id"]: r["status"] for r in rows if r["request_id"] in expected} == expected
    assert len({r["request_id"] for r in rows}) == len(rows)  # nothing journaled twice
