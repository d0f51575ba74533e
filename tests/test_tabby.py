"""Tabby routes and FIM preprocessing through a real kodify-proxy process in front of the fake upstream."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import REPO, Server, kodify_proxy, upstreams_yaml

TOKEN = "sk-tabby-test-shared-token"
TABBY_BODY = {"language": "python", "segments": {"prefix": "def fib(n):\n    return ", "suffix": "\n"}}


@pytest.fixture(scope="module")
def fim_proxy(session_tmp: Path, upstream: Server) -> Iterator[Server]:
    """Dummy auth, COMPLETIONS_PREPROCESSING_CONFIG=preprocess_configs/qwen.json (relative, as the guide writes it),
    upstreams given 2 s."""
    env = {"COMPLETIONS_PREPROCESSING_CONFIG": "preprocess_configs/qwen.json", "KODIFY_REQUEST_TIMEOUT": "2"}
    server = kodify_proxy(session_tmp, upstreams_yaml(upstream.url), env=env, name="tabby-proxy").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_proxy(session_tmp: Path, upstream: Server) -> Iterator[Server]:
    """One shared token (VLLM_API_KEY), StarCoder2 config, Tabby routed to `fake-embed` by tabby.model_name."""
    config = upstreams_yaml(upstream.url, extra="tabby:\n  model_name: fake-embed\n")
    env = {"VLLM_API_KEY": TOKEN, "COMPLETIONS_PREPROCESSING_CONFIG": str(REPO / "preprocess_configs/starcoder2.json")}
    server = kodify_proxy(session_tmp, config, env=env, name="tabby-token-proxy").start()
    yield server
    server.stop()


def _last(upstream: Server) -> dict[str, Any]:
    body = httpx.get(upstream.url + "/_last").json()
    assert isinstance(body, dict)
    return body


def _post(server: Server, path: str, body: Any, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=30, **kw)


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error, dict)
    return error


# --- one path, two shapes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/completions", "/tabby/v1/completions"])
def test_tabby_body_gets_a_tabby_answer(fim_proxy: Server, upstream: Server, path: str) -> None:
    response = _post(fim_proxy, path, TABBY_BODY)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": f"cmpl-{response.headers['x-litellm-call-id']}",  # the upstream names it after our request id
        "choices": [{"index": 0, "text": " return 42"}],
    }
    assert _last(upstream) == {
        "model": "fake-model",
        "prompt": "<|fim_prefix|>def fib(n):\n    return <|fim_suffix|>\n<|fim_middle|>",
        "max_tokens": 64,
        "stop": ["\n\n", "\ndef ", "\nclass ", "\nimport "],  # vLLM takes 4; the rest cut the completion
        "temperature": 0.1,
        "stream": False,
    }


def test_openai_body_on_the_same_path_stays_openai(fim_proxy: Server, upstream: Server) -> None:
    response = _post(fim_proxy, "/v1/completions", {"model": "fake-model", "prompt": "Once upon", "max_tokens": 900})
    assert response.status_code == 200
    assert response.json()["object"] == "text_completion"
    assert response.json()["choices"][0]["text"] == " return 42"
    assert _last(upstream) == {"model": "fake-model", "prompt": "Once upon", "max_tokens": 900}  # not FIM: untouched


def test_openai_stream_still_streams(fim_proxy: Server) -> None:
    with httpx.stream(
        "POST",
        fim_proxy.url + "/v1/completions",
        timeout=30,
        json={"model": "fake-model", "prompt": "x", "stream": True},
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3


def test_tabby_snippets_temperature_and_seed(fim_proxy: Server, upstream: Server) -> None:
    body = {
        "language": "typescriptreact",
        "segments": {
            "prefix": "const x = ",
            "suffix": ";\n",
            "filepath": "src/app.tsx",
            "git_url": "https://github.com/acme/demo.git",
            "declarations": [{"filepath": "src/util.ts", "body": "export function helper(x: number) {\n  return x\n}"}],
            "relevant_snippets_from_changed_files": [{"filepath": "src/b.ts", "body": "const b = 1", "score": 0.8}],
            "clipboard": "ignored clipboard",
        },
        "temperature": 0.8,
        "seed": 123,
        "user": "someone",
        "mode": "standard",
    }
    assert _post(fim_proxy, "/v1/completions", body).status_code == 200
    sent = _last(upstream)
    assert sent["prompt"] == (
        "<|fim_prefix|>// Path: src/util.ts\n// export function helper(x: number) {\n//   return x\n// }\n//\n"
        "// Path: src/b.ts\n// const b = 1\nconst x = <|fim_suffix|>;\n<|fim_middle|>"
    )
    assert sent["temperature"] == 0.8 and sent["seed"] == 123
    assert sent["stop"] == ["\n\n", "\nfunction ", "\nasync function ", "\nclass "]


@pytest.mark.parametrize(
    ("prefix", "suffix", "reply", "choices"),
    [
        ("    return ", "\n", "x + 1<|endoftext|>junk", [{"index": 0, "text": "x + 1"}]),
        ("    return ", "\n", "x\n        y\nprint(1)", [{"index": 0, "text": "x\n        y"}]),
        ("print(", ")\n", "a, b\nc = 1", [{"index": 0, "text": "a, b"}]),
        ("x = ", "\n", "  \n  ", []),
        ("x = ", "\n", "1\n# a comment", [{"index": 0, "text": "1"}]),  # "\n#": a stop beyond the upstream's 4
        ("if a:\r\n    ", "\r\n", "b()\n    c()", [{"index": 0, "text": "b()\r\n    c()"}]),
    ],
)
def test_tabby_post_processing(
    fim_proxy: Server, prefix: str, suffix: str, reply: str, choices: list[dict[str, Any]]
) -> None:
    marker = f"# REPLY:{json.dumps(reply)}\n"
    body = {"language": "python", "segments": {"prefix": marker + prefix, "suffix": suffix}}
    response = _post(fim_proxy, "/v1/completions", body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"] == choices


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"language": "python", "segments": {}}, "segments.prefix"),
        ({"language": "python", "segments": {"prefix": 5}}, "segments.prefix"),
        ({"segments": {"prefix": "x"}, "temperature": -1}, "temperature"),
    ],
)
def test_bad_tabby_body_is_400_naming_the_field(fim_proxy: Server, body: dict[str, Any], param: str) -> None:
    error = _error(_post(fim_proxy, "/v1/completions", body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "Invalid Tabby completion request" in error["message"]


def test_tabby_path_with_a_non_tabby_body_is_400(fim_proxy: Server) -> None:
    error = _error(_post(fim_proxy, "/tabby/v1/completions", {"model": "fake-model", "prompt": "x"}), 400)
    assert error["param"] == "segments"


# --- FIM on the OpenAI /v1/completions -----------------------------------------------------------------------------


def test_openai_suffix_folded_into_the_prompt(fim_proxy: Server, upstream: Server) -> None:
    body = {
        "model": "fake-model",
        "prompt": "def add(a, b):\n    ",
        "suffix": "\n\nprint(add(1, 2))\n",
        "max_tokens": 5000,
        "stop": ["\n\n\n"],
        "temperature": 0,
    }
    response = _post(fim_proxy, "/v1/completions", body)
    assert response.status_code == 200, response.text
    sent = _last(upstream)
    assert "suffix" not in sent
    assert sent["prompt"] == "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    assert sent["max_tokens"] == 256 and sent["stop"] == ["\n\n\n", "\n\n", "<|fim_prefix|>", "<|fim_suffix|>"]


def test_openai_continue_starcoder_prompt_rebuilt_for_qwen(fim_proxy: Server, upstream: Server) -> None:
    body = {"model": "fake-model", "prompt": "<fim_prefix>x = <fim_suffix>\ny = 2<fim_middle>", "max_tokens": 16}
    assert _post(fim_proxy, "/v1/completions", body).status_code == 200
    assert _last(upstream)["prompt"] == "<|fim_prefix|>x = <|fim_suffix|>\ny = 2<|fim_middle|>"


@pytest.mark.parametrize(
    ("prompt", "suffix", "reply", "text"),
    [
        ("x = ", "\n", "1<|endoftext|>junk", "1"),
        ("if a:\r\n    ", "\r\n", "b()\n    c()", "b()\r\n    c()"),
        ("f(", ")", "a\nb", "a"),
    ],
)
def test_openai_fim_post_processing(fim_proxy: Server, prompt: str, suffix: str, reply: str, text: str) -> None:
    body = {"model": "fake-model", "prompt": f"# REPLY:{json.dumps(reply)}\n{prompt}", "suffix": suffix}
    response = _post(fim_proxy, "/v1/completions", body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == text


def test_openai_suffix_with_a_prompt_list_is_400(fim_proxy: Server) -> None:
    error = _error(
        _post(fim_proxy, "/v1/completions", {"model": "fake-model", "prompt": ["a", "b"], "suffix": "c"}), 400
    )
    assert error["param"] == "suffix" and "single string prompt" in error["message"]


# --- health, server_setting, events --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/health"), ("POST", "/v1/health"), ("GET", "/tabby/v1/health")]
)
def test_health_in_tabbys_shape(fim_proxy: Server, method: str, path: str) -> None:
    response = httpx.request(method, fim_proxy.url + path, timeout=10)
    assert response.status_code == 200, response.text
    health = response.json()
    assert health["version"]["git_describe"].startswith("v0.17.0-kodify-proxy-")
    assert health["model"] == "fake-model" and health["device"] == "remote"
    assert health["models"] == {"completion": {"remote": {"kind": "vllm/completion", "model_name": "fake-model"}}}
    assert isinstance(health["cpu_count"], int) and health["arch"] and "chat_model" not in health


@pytest.mark.parametrize("path", ["/v1beta/server_setting", "/tabby/v1beta/server_setting"])
def test_server_setting_disables_client_telemetry(fim_proxy: Server, path: str) -> None:
    response = httpx.get(fim_proxy.url + path, timeout=10)
    assert response.status_code == 200 and response.json() == {"disable_client_side_telemetry": True}


@pytest.mark.parametrize(
    ("path", "event"),
    [
        ("/v1/events", {"type": "view", "completion_id": "cmpl-1", "choice_index": 0, "view_id": "view-1"}),
        (
            "/v1/events?select_kind=line",
            {
                "type": "select",
                "select_kind": "line",
                "completion_id": "cmpl-1",
                "choice_index": 0,
                "view_id": "view-1",
                "elapsed": 1200,
            },
        ),
        ("/tabby/v1/events", {"type": "dismiss", "completion_id": "cmpl-1", "choice_index": 0, "elapsed": 300}),
    ],
)
def test_events_are_accepted_with_an_empty_body(fim_proxy: Server, path: str, event: dict[str, Any]) -> None:
    response = _post(fim_proxy, path, event)
    assert response.status_code == 200 and response.content == b""


@pytest.mark.parametrize(
    ("event", "param"),
    [
        ({"type": "completion", "completion_id": "c", "choice_index": 0}, "type"),
        ({"type": "view", "choice_index": 0}, "completion_id"),
    ],
)
def test_bad_event_is_400(fim_proxy: Server, event: dict[str, Any], param: str) -> None:
    assert _error(_post(fim_proxy, "/v1/events", event), 400)["param"] == param


# --- auth: the same on every route ----------------------------------------------------------------------------------

ROUTES = [
    ("GET", "/v1/health", None),
    ("POST", "/v1/health", None),
    ("GET", "/v1beta/server_setting", None),
    ("POST", "/v1/events", {"type": "view", "completion_id": "c", "choice_index": 0}),
    ("POST", "/v1/completions", TABBY_BODY),
    ("POST", "/tabby/v1/completions", TABBY_BODY),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_shared_token_required_on_every_tabby_route(token_proxy: Server, method: str, path: str, body: Any) -> None:
    url = token_proxy.url + path
    missing = httpx.request(method, url, json=body, timeout=30)
    assert "Missing API key" in _error(missing, 401)["message"]
    wrong = httpx.request(method, url, json=body, headers={"Authorization": "Bearer sk-wrong"}, timeout=30)
    assert "does not match" in _error(wrong, 401)["message"]
    right = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert right.status_code == 200, right.text


def test_master_key_reaches_tabby_health(token_proxy: Server) -> None:
    master = (Path(token_proxy.log_path).parent / "state" / "master_key").read_text().strip()
    response = httpx.get(token_proxy.url + "/v1/health", headers={"Authorization": f"Bearer {master}"}, timeout=10)
    assert response.status_code == 200 and response.json()["model"] == "fake-embed"


def test_tabby_model_name_and_config_from_settings(token_proxy: Server, upstream: Server) -> None:
    assert _post(token_proxy, "/v1/completions", TABBY_BODY, TOKEN).status_code == 200
    sent = _last(upstream)
    assert sent["model"] == "fake-embed"  # config.yml tabby.model_name
    assert sent["prompt"] == "<fim_prefix>def fib(n):\n    return <fim_suffix>\n<fim_middle>"  # starcoder2.json


# --- without COMPLETIONS_PREPROCESSING_CONFIG ---------------------------------------------------------------------


def test_unset_config_tabby_uses_qwen_openai_passes_through(proxy: Server, upstream: Server) -> None:
    assert _post(proxy, "/v1/completions", TABBY_BODY).status_code == 200
    assert _last(upstream)["prompt"] == "<|fim_prefix|>def fib(n):\n    return <|fim_suffix|>\n<|fim_middle|>"
    response = _post(proxy, "/v1/completions", {"model": "fake-model", "prompt": "a", "suffix": "b"})
    assert _error(response, 400)["message"].endswith("suffix is not currently supported")


# --- a broken config stops startup -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "COMPLETIONS_PREPROCESSING_CONFIG={path}: file not found"),
        (
            '{"name": "x",',
            "{path}: not valid JSON: Expecting property name enclosed in double quotes: line 1 column 14",
        ),
        ('{"name": "x"}', "{path}: invalid preprocessing config: template: Field required"),
    ],
)
def test_broken_config_stops_startup_naming_path_and_error(
    tmp_path: Path, upstream: Server, content: str | None, expected: str
) -> None:
    path = tmp_path / "preprocess.json"
    if content is not None:
        path.write_text(content)
    (tmp_path / "config.yml").write_text(upstreams_yaml(upstream.url))
    env = {
        "COMPLETIONS_PREPROCESSING_CONFIG": str(path),
        "KODIFY_STATE_DIR": str(tmp_path / "state"),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "kodify_proxy.cli", "serve", "--config", str(tmp_path / "config.yml"), "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert f"error: {expected.format(path=path)}" in result.stderr


# --- the same completion through LiteLLM (KODIFY_COMPLETIONS_LANE=litellm) ------------------------------------------


@pytest.fixture(scope="module")
def litellm_lane_proxy(session_tmp: Path, upstream: Server) -> Iterator[Server]:
    """Completions through LiteLLM's route instead of the lane; Tabby's flow is the same service call."""
    env = {
        "KODIFY_COMPLETIONS_LANE": "litellm",
        "COMPLETIONS_PREPROCESSING_CONFIG": "preprocess_configs/qwen.json",
        "KODIFY_REQUEST_TIMEOUT": "2",
    }
    server = kodify_proxy(session_tmp, upstreams_yaml(upstream.url), env=env, name="tabby-litellm-proxy").start()
    yield server
    server.stop()


def test_tabby_answer_through_litellm_is_the_lanes(
    fim_proxy: Server, litellm_lane_proxy: Server, upstream: Server
) -> None:
    answers = {}
    for server in (fim_proxy, litellm_lane_proxy):
        response = _post(server, "/v1/completions", TABBY_BODY)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["id"].startswith("cmpl-")
        answers[server.name] = {**answer, "id": "cmpl-…"}
        assert _last(upstream)["prompt"] == "<|fim_prefix|>def fib(n):\n    return <|fim_suffix|>\n<|fim_middle|>"
    assert (
        answers["tabby-proxy"]
        == answers["tabby-litellm-proxy"]
        == {
            "id": "cmpl-…",
            "choices": [{"index": 0, "text": " return 42"}],
        }
    )


def test_an_upstream_timeout_on_a_tabby_request_is_the_same_through_either_path(
    fim_proxy: Server, litellm_lane_proxy: Server
) -> None:
    slow = {**TABBY_BODY, "segments": {"prefix": "# SLEEP:4\n", "suffix": ""}}  # both proxies wait 2 s at most
    errors = [_post(server, "/v1/completions", slow) for server in (fim_proxy, litellm_lane_proxy)]
    assert [e.status_code for e in errors] == [504, 504], [e.text for e in errors]
    assert errors[0].json() == errors[1].json()
    assert errors[0].json()["error"]["type"] == "timeout_error"
