"""The core server as a real process in front of a fake upstream: pass-through, limits and error shapes."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.servers import Server


def _client(proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)


def _assert_openai_error(
    response: httpx.Response, status: int, param: str | None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["code"] == (code or str(status))
    assert isinstance(error["type"], str) and error["type"] not in ("None", "")
    assert "Traceback" not in error["message"]
    return dict(error)


def test_startup_logs_what_the_original_logs(proxy: Server) -> None:
    log = proxy.log_text()
    assert "Application startup complete." in log
    assert f"Uvicorn running on http://127.0.0.1:{proxy.port}" in log


def test_models_lists_every_discovered_model(proxy: Server) -> None:
    ids = {m.id for m in _client(proxy).models.list()}
    assert ids == {"fake-model", "fake-embed"}


def test_one_model_is_its_entry_of_the_list(proxy: Server) -> None:
    listed = httpx.get(proxy.url + "/v1/models").json()["data"]
    for entry in listed:
        assert httpx.get(proxy.url + "/v1/models/" + entry["id"]).json() == entry
    with _client(proxy) as client:
        assert client.models.retrieve("fake-embed").id == "fake-embed"  # the SDK's retrieve
    for missing in ("nope", "org/fake-model"):
        error = _assert_openai_error(httpx.get(proxy.url + "/v1/models/" + missing), 404, "model", "model_not_found")
        assert error["message"] == f"The model '{missing}' does not exist. Served models: fake-model, fake-embed"


def test_liveness_and_readiness_probes(proxy: Server) -> None:
    for path in ("/health/liveliness", "/health/liveness"):
        alive = httpx.get(proxy.url + path)
        assert alive.status_code == 200 and alive.json() == "I'm alive!"
    ready = httpx.get(proxy.url + "/health/readiness")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "upstreams_up": 1}


def test_chat_non_stream(proxy: Server) -> None:
    reply = _client(proxy).chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello world"
    assert reply.usage is not None and reply.usage.total_tokens == 8


def test_chat_stream(proxy: Server) -> None:
    stream = _client(proxy).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello world"


def test_completions_pass_vllm_sampling_parameters_unchanged(proxy: Server, upstream: Server) -> None:
    extra = {"top_k": 5, "repetition_penalty": 1.1, "min_tokens": 2, "ignore_eos": True}
    reply = _client(proxy).completions.create(model="fake-model", prompt="def", max_tokens=3, n=2, extra_body=extra)
    assert [c.text for c in reply.choices] == [" return 42", " return 42"]
    sent = httpx.get(upstream.url + "/_last").json()
    assert {k: sent[k] for k in extra} == extra
    assert sent["n"] == 2 and sent["max_tokens"] == 3 and sent["prompt"] == "def"


def test_embeddings(proxy: Server) -> None:
    reply = _client(proxy).embeddings.create(model="fake-embed", input=["a", "b"])
    assert [d.embedding for d in reply.data] == [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}),
        ("/v1/completions", {"model": "fake-model", "prompt": "x"}),
    ],
)
def test_n_above_max_n_is_rejected_with_the_limit(proxy: Server, path: str, body: dict[str, Any]) -> None:
    for n in (5, "5", 5.0):  # vLLM reads "5" and 5.0 as 5: so does MAX_N
        response = httpx.post(proxy.url + path, json={**body, "n": n})
        error = _assert_openai_error(response, 400, "n")
        assert "MAX_N=4" in error["message"] and "1 to 4" in error["message"]
    assert httpx.post(proxy.url + path, json={**body, "n": 4}).status_code == 200
    assert httpx.post(proxy.url + path, json={**body, "n": "4"}).status_code == 200


def test_unknown_model_is_404_listing_served_models(proxy: Server) -> None:
    body = {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}
    error = _assert_openai_error(
        httpx.post(proxy.url + "/v1/chat/completions", json=body), 404, "model", "model_not_found"
    )
    assert "'gpt-9'" in error["message"] and "fake-model" in error["message"]


def test_malformed_json_is_400(proxy: Server) -> None:
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        content=b'{"model": "fake-model", "messages": ',
        headers={"content-type": "application/json"},
    )
    error = _assert_openai_error(response, 400, "request_body")
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/chat/completions", "messages", "hi"),
        ("/v1/chat/completions", "max_tokens", "abc"),
        ("/v1/chat/completions", "temperature", "hot"),
        ("/v1/completions", "prompt", {"a": 1}),
        ("/v1/completions", "seed", 2**64),
    ],
)
def test_a_field_vllm_refuses_gets_vllms_400_naming_the_field(proxy: Server, path: str, field: str, value: Any) -> None:
    """The lane checks only what is ours (JSON, MAX_N, sizes, finite numbers); vLLM's refusal reaches the client."""
    body: dict[str, Any] = {"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "prompt": "x"}
    body[field] = value
    error = _assert_openai_error(httpx.post(proxy.url + path, json=body), 400, f"body.{field}")
    assert "validation error" in error["message"] and f"'body.{field}'" in error["message"]


@pytest.mark.parametrize(("field", "value"), [("stream", "yes"), ("n", "2")])
def test_what_vllm_reads_leniently_is_served(proxy: Server, field: str, value: Any) -> None:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "x"}], field: value}
    response = httpx.post(proxy.url + "/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text


def test_health_needs_no_auth_and_shows_addresses_only_to_the_master_key(proxy: Server, upstream: Server) -> None:
    response = httpx.get(proxy.url + "/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "models": ["fake-model", "fake-embed"],
        "upstreams": [{"healthy": True, "failing": False, "models": ["fake-model", "fake-embed"]}],
    }
    assert upstream.url not in response.text and str(upstream.port) not in response.text
    assert proxy.health()["upstreams"] == [
        {"url": upstream.url, "healthy": True, "failing": False, "models": ["fake-model", "fake-embed"], "error": None}
    ]
