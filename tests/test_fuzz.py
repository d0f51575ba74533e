"""Thousands of generated bodies at our routes: every answer is a success or an OpenAI-shaped 4xx, and the server
lives on. Bodies are arbitrary JSON, valid requests with fields replaced by arbitrary values, and plain bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import Server, kodify_proxy, upstreams_yaml

ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/events", "/tabby/v1/completions"]
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "/v1/completions": {"model": "fake-model", "prompt": "def f(", "max_tokens": 4},
    "/v1/embeddings": {"model": "fake-embed", "input": ["a"]},
    "/v1/events": {"type": "view", "completion_id": "cmpl-1", "choice_index": 0},
    "/tabby/v1/completions": {"language": "python", "segments": {"prefix": "def f(", "suffix": "):"}},
}
FIELDS = sorted({key for body in VALID.values() for key in body} | {"n", "stream", "temperature", "stop", "suffix"})
EXAMPLES = 600  # per test; three tests: 1,800 bodies, on top of the 1,000-route walk in test_surface.py

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, upstream: Server) -> Iterator[httpx.Client]:
    env = {"MAX_N": "4", "COMPLETIONS_PREPROCESSING_CONFIG": "preprocess_configs/qwen.json"}
    server = kodify_proxy(tmp_path_factory.mktemp("fuzz"), upstreams_yaml(upstream.url), env=env, name="fuzz").start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
    log = server.log_text()
    server.stop()
    assert "Traceback" not in log


def check(response: httpx.Response) -> None:
    """A success, or our OpenAI-shaped 4xx."""
    if response.status_code < 300:
        return
    assert 400 <= response.status_code < 500, (response.status_code, response.request.content[:300], response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"] not in ("None", "null", "")
    assert error["param"] is None or isinstance(error["param"], str)
    assert isinstance(error["code"], str)


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(route=st.sampled_from(ROUTES), body=json_values)
def test_arbitrary_json(target: httpx.Client, route: str, body: Any) -> None:
    check(target.post(route, content=json.dumps(body), headers={"content-type": "application/json"}))


@SETTINGS
@given(route=st.sampled_from(ROUTES), field=st.sampled_from(FIELDS), value=json_values)
def test_a_valid_request_with_one_field_replaced(target: httpx.Client, route: str, field: str, value: Any) -> None:
    body = {**VALID[route], field: value}
    content, headers = json.dumps(body), {"content-type": "application/json"}  # Infinity too: not JSON, a 400
    if body.get("stream") is True:
        with target.stream("POST", route, content=content, headers=headers) as response:
            response.read()
        check(response)
        return
    check(target.post(route, content=content, headers=headers))


@SETTINGS
@given(
    route=st.sampled_from(ROUTES),
    body=st.binary(max_size=200),
    content_type=st.sampled_from(["application/json", None]),
)
def test_arbitrary_bytes(target: httpx.Client, route: str, body: bytes, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    check(target.post(route, content=body, headers=headers))


def test_the_server_lives_on(target: httpx.Client) -> None:
    assert target.get("/health").status_code == 200
    assert target.post("/v1/completions", json=VALID["/v1/completions"]).status_code == 200
