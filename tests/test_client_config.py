"""kodify_proxy/client_config.py: the pure builders against exact configs, and `kodify-proxy client-config` against a
real kodify-proxy in front of the fake upstream (its answers, an unreachable proxy, a refused token). The printed
configs driving the real clients against a real vLLM: tests/e2e/test_client_config.py."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator

import pytest
import yaml

from kodify_proxy.client_config import (
    ClientConfigError,
    ClientModels,
    Endpoint,
    ServedModel,
    autocomplete_prompt_tokens,
    build_continue_config,
    build_kodify_config,
    build_tabby_config,
    chat_max_tokens,
    choose_models,
    client_token,
    render_client_config,
    render_toml,
    tabby_prompt_lines,
)
from tests.servers import Server, free_port, kodify_proxy, run_cli, upstreams_yaml

QWEN = ServedModel("Qwen2.5-Coder-7B-Instruct", 32768)
EMBED = ServedModel("bge-m3-embed", 8192)
TINY = ServedModel("tiny", 512)
ENDPOINT = Endpoint("http://kodify:8000", "${{ secrets.KODIFY_TOKEN }}")
TOKEN = "sk-kodify-client-config-token"


# --- choosing the models -----------------------------------------------------------------------------------------


def test_chat_and_autocomplete_take_the_first_model_that_does_not_embed() -> None:
    chosen = choose_models((EMBED, QWEN, TINY), tool_use=True)
    assert chosen == ClientModels(chat=QWEN, autocomplete=QWEN, embed=EMBED, tool_use=True)
    assert choose_models((TINY,)) == ClientModels(chat=TINY, autocomplete=TINY, embed=None, tool_use=False)


def test_a_proxy_serving_only_embedding_models_has_no_chat_model() -> None:
    with pytest.raises(ClientConfigError, match=r"serves no chat model \(served: bge-m3-embed\)"):
        choose_models((EMBED,))
    with pytest.raises(ClientConfigError, match=r"served: none"):
        choose_models(())


@pytest.mark.parametrize(
    ("context", "chat", "prompt", "lines"),
    [(512, 128, 320, 12), (2048, 512, 1024, 20), (32768, 4096, 1024, 20), (128, 32, 80, 4)],
)
def test_budgets_fit_the_context(context: int, chat: int, prompt: int, lines: int) -> None:
    assert (chat_max_tokens(context), autocomplete_prompt_tokens(context), tabby_prompt_lines(context)) == (
        chat,
        prompt,
        lines,
    )


# --- the builders ------------------------------------------------------------------------------------------------


def test_continue_config_yaml() -> None:
    config = build_continue_config(choose_models((QWEN, EMBED), tool_use=True), ENDPOINT)
    common = {"provider": "openai", "apiBase": "http://kodify:8000/v1", "apiKey": "${{ secrets.KODIFY_TOKEN }}"}
    assert config == {
        "name": "Kodify",
        "version": "1.0.0",
        "schema": "v1",
        "models": [
            {
                "name": "Kodify",
                "provider": "openai",
                "model": "Qwen2.5-Coder-7B-Instruct",
                "apiBase": "http://kodify:8000/v1",
                "apiKey": "${{ secrets.KODIFY_TOKEN }}",
                "roles": ["chat", "edit", "apply"],
                "capabilities": ["tool_use"],
                "defaultCompletionOptions": {"contextLength": 32768, "maxTokens": 4096},
            },
            {
                "name": "Kodify autocomplete",
                **common,
                "model": "Qwen2.5-Coder-7B-Instruct",
                "roles": ["autocomplete"],
                "defaultCompletionOptions": {"contextLength": 32768, "maxTokens": 256},
                "autocompleteOptions": {
                    "debounceDelay": 250,
                    "maxPromptTokens": 1024,
                    "useCache": True,
                    "onlyMyCode": True,
                },
            },
            {"name": "Kodify embeddings", **common, "model": "bge-m3-embed", "roles": ["embed"]},
        ],
    }


def test_continue_config_without_tool_parser_embeddings_or_context_length() -> None:
    config = build_continue_config(choose_models((ServedModel("m"),)), Endpoint("http://k", "t"))
    chat, auto = config["models"]
    assert "capabilities" not in chat and "defaultCompletionOptions" not in chat
    assert "defaultCompletionOptions" not in auto
    assert auto["autocompleteOptions"] == {"debounceDelay": 250, "useCache": True, "onlyMyCode": True}


def test_continue_config_text_is_that_yaml() -> None:
    text = render_client_config("continue", choose_models((TINY,), tool_use=True), ENDPOINT)
    assert text.startswith("name: Kodify\nversion: 1.0.0\nschema: v1\nmodels:\n- name: Kodify\n  provider: openai\n")
    assert "  apiKey: ${{ secrets.KODIFY_TOKEN }}\n" in text
    assert "  capabilities:\n  - tool_use\n  defaultCompletionOptions:\n    contextLength: 512\n" in text
    assert yaml.safe_load(text) == build_continue_config(choose_models((TINY,), tool_use=True), ENDPOINT)


def test_kodify_config_json() -> None:
    endpoint = Endpoint("http://kodify:8000", "<token>")
    config = build_kodify_config(choose_models((QWEN, EMBED), tool_use=True), endpoint)
    base = {"provider": "openai", "model": "Qwen2.5-Coder-7B-Instruct", "apiBase": "http://kodify:8000/v1"}
    assert config == {
        "models": [
            {
                "title": "Kodify",
                **base,
                "apiKey": "<token>",
                "contextLength": 32768,
                "completionOptions": {"maxTokens": 4096},
                "capabilities": {"tools": True},
            }
        ],
        "tabAutocompleteModel": {
            "title": "Kodify autocomplete",
            **base,
            "apiKey": "<token>",
            "contextLength": 32768,
            "completionOptions": {"maxTokens": 256},
        },
        "tabAutocompleteOptions": {"debounceDelay": 250, "maxPromptTokens": 1024, "useCache": True, "onlyMyCode": True},
        "embeddingsProvider": {
            "provider": "openai",
            "model": "bge-m3-embed",
            "apiBase": "http://kodify:8000/v1",
            "apiKey": "<token>",
        },
    }
    text = render_client_config("kodify", choose_models((QWEN, EMBED), tool_use=True), endpoint)
    assert json.loads(text) == config and text.startswith('{\n  "models": [\n    {\n      "title": "Kodify",\n')


def test_kodify_config_without_tool_parser_has_no_capabilities_nor_embeddings() -> None:
    config = build_kodify_config(choose_models((TINY,)), Endpoint("http://k", "t"))
    assert set(config) == {"models", "tabAutocompleteModel", "tabAutocompleteOptions"}
    assert "capabilities" not in config["models"][0]
    assert config["models"][0]["contextLength"] == 512 and config["tabAutocompleteOptions"]["maxPromptTokens"] == 320


def test_tabby_config_toml() -> None:
    text = render_client_config("tabby", choose_models((TINY,)), Endpoint("http://kodify:8000", "<token>"))
    assert text == (
        "[server]\n"
        'endpoint = "http://kodify:8000"\n'
        'token = "<token>"\n'
        "\n"
        "[completion.prompt]\n"
        "maxPrefixLines = 12\n"
        "maxSuffixLines = 12\n"
        "\n"
        "[completion.debounce]\n"
        'mode = "adaptive"\n'
        "interval = 250\n"
        "\n"
        "[anonymousUsageTracking]\n"
        "disable = true\n"
    )
    assert tomllib.loads(text) == build_tabby_config(choose_models((TINY,)), Endpoint("http://kodify:8000", "<token>"))


def test_toml_strings_are_escaped() -> None:
    config = {"server": {"token": 'a"b\\c\n', "n": 3, "ok": False}}
    assert tomllib.loads(render_toml(config)) == config


def test_the_token_is_written_only_when_asked() -> None:
    env = {"KODIFY_TOKEN": TOKEN}
    assert client_token("continue", "KODIFY_TOKEN", False, env) == "${{ secrets.KODIFY_TOKEN }}"
    assert client_token("kodify", "KODIFY_TOKEN", False, env) == "<token>"
    assert client_token("tabby", "KODIFY_TOKEN", False, env) == "<token>"
    assert client_token("tabby", "KODIFY_TOKEN", True, env) == TOKEN
    with pytest.raises(ClientConfigError, match=r"--with-token: \$MY_TOKEN is empty"):
        client_token("continue", "MY_TOKEN", True, env)


# --- the command against a real kodify-proxy (fake upstream) ----------------------------------------------------


@pytest.fixture(scope="module")
def token_proxy(tmp_path_factory: pytest.TempPathFactory, upstream: Server) -> Iterator[Server]:
    """kodify-proxy with one shared token (VLLM_API_KEY) in front of the fake upstream (fake-model, fake-embed)."""
    tmp = tmp_path_factory.mktemp("client-config")
    server = kodify_proxy(tmp, upstreams_yaml(upstream.url), env={"VLLM_API_KEY": TOKEN}, name="cc-proxy").start()
    yield server
    server.stop()


def _env(**values: str) -> dict[str, str]:
    """This environment without KODIFY_TOKEN, plus `values`."""
    return {**{k: v for k, v in os.environ.items() if k != "KODIFY_TOKEN"}, **values}


def test_client_config_prints_the_served_models(token_proxy: Server) -> None:
    done = run_cli("client-config", "continue", "--url", token_proxy.url, env=_env(KODIFY_TOKEN=TOKEN))
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    chat, auto, embed = config["models"]
    assert (chat["model"], auto["model"], embed["model"]) == ("fake-model", "fake-model", "fake-embed")
    assert chat["capabilities"] == ["tool_use"]  # the fake upstream takes tools
    assert chat["defaultCompletionOptions"] == {"contextLength": 512, "maxTokens": 128}
    assert chat["apiKey"] == "${{ secrets.KODIFY_TOKEN }}" and TOKEN not in done.stdout
    assert chat["apiBase"] == token_proxy.url + "/v1"


def test_client_config_with_token_and_client_url(token_proxy: Server) -> None:
    args = ["client-config", "tabby", "--url", token_proxy.url + "/", "--client-url", "https://kodify.example.com"]
    done = run_cli(*args, "--token-env", "MY_TOKEN", "--with-token", env=_env(MY_TOKEN=TOKEN))
    assert done.returncode == 0, done.stderr
    assert tomllib.loads(done.stdout)["server"] == {"endpoint": "https://kodify.example.com", "token": TOKEN}


def test_a_refused_token_is_one_line_and_exit_1(token_proxy: Server) -> None:
    done = run_cli("client-config", "kodify", "--url", token_proxy.url, env=_env(KODIFY_TOKEN="sk-wrong"))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"error: kodify-proxy at {token_proxy.url} refused the token (401) for GET /v1/models: "
        "set $KODIFY_TOKEN to a client token (docs/auth.md)\n"
    )


def test_an_unreachable_proxy_is_one_line_and_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli("client-config", "continue", "--url", url, env=_env())
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"error: cannot reach kodify-proxy at {url} (ConnectError: ")
    assert done.stderr.endswith("); is it running? pass --url\n") and done.stderr.count("\n") == 1


def test_a_bad_token_env_name_is_refused_by_the_parser() -> None:
    done = run_cli("client-config", "continue", "--token-env", "not a name")
    assert done.returncode == 2 and "is not an environment variable name" in done.stderr
