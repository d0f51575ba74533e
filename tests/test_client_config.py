"""kodify_proxy/client_config.py: the pure builders against exact configs, and `kodify-proxy client-config` against a
real kodify-proxy in front of the fake upstream (its answers, an unreachable proxy, a refused token). The printed
configs driving the real clients against a real vLLM: tests/e2e/test_client_config.py."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from kodify_proxy.client_config import (
    ClientConfigError,
    ClientModels,
    Credential,
    Endpoint,
    ServedModel,
    autocomplete_prompt_tokens,
    base_url,
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
from kodify_proxy.client_config_cli import find_credential
from kodify_proxy.launcher import ensure_master_key
from kodify_proxy.settings import load_settings
from tests.journal_support import fresh_database
from tests.servers import Server, free_port, kodify_proxy, run_cli, upstreams_yaml
from tests.test_dev_data import autocomplete, continue_bodies, next_edit, run_node

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
        "data": [
            {
                "name": "kodify-proxy",
                "destination": "http://kodify:8000/v1/dev-data",
                "schema": "0.2.0",
                "level": "noCode",
                "events": ["autocomplete", "nextEditOutcome"],
                "apiKey": "${{ secrets.KODIFY_TOKEN }}",
            }
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
    endpoint = Endpoint("http://kodify:8000", "<token>", dev_data_level="all")
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
        "data": [
            {
                "name": "kodify-proxy",
                "destination": "http://kodify:8000/v1/dev-data",
                "schema": "0.2.0",
                "level": "all",
                "events": ["autocomplete", "nextEditOutcome"],
                "apiKey": "<token>",
            }
        ],
    }
    text = render_client_config("kodify", choose_models((QWEN, EMBED), tool_use=True), endpoint)
    assert json.loads(text) == config and text.startswith('{\n  "models": [\n    {\n      "title": "Kodify",\n')


def test_kodify_config_without_tool_parser_has_no_capabilities_nor_embeddings() -> None:
    config = build_kodify_config(choose_models((TINY,)), Endpoint("http://k", "t"))
    assert set(config) == {"models", "tabAutocompleteModel", "tabAutocompleteOptions", "data"}
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
    given, shared = Credential(TOKEN, "$KODIFY_TOKEN", True), Credential(TOKEN, "VLLM_API_KEY (the shared token)", True)
    assert client_token("continue", "KODIFY_TOKEN", False, given) == "${{ secrets.KODIFY_TOKEN }}"
    assert client_token("kodify", "KODIFY_TOKEN", False, given) == "<token>"
    assert client_token("tabby", "KODIFY_TOKEN", False, given) == "<token>"
    assert client_token("tabby", "KODIFY_TOKEN", True, given) == TOKEN
    assert client_token("continue", "KODIFY_TOKEN", True, shared) == TOKEN  # the one shared token is the clients'
    with pytest.raises(ClientConfigError, match=r"--with-token: \$MY_TOKEN is empty; set it to a client token"):
        client_token("continue", "MY_TOKEN", True, Credential(None, "no credential", False))
    master = Credential("sk-master", "the master key (LITELLM_MASTER_KEY)", False)
    with pytest.raises(
        ClientConfigError, match=r"the master key \(LITELLM_MASTER_KEY\) is not written into a client"
    ) as e:
        client_token("continue", "KODIFY_TOKEN", True, master)
    assert "sk-master" not in str(e.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://kodify:8000", "http://kodify:8000"),
        ("http://kodify:8000/", "http://kodify:8000"),
        ("http://kodify:8000/v1", "http://kodify:8000"),
        ("https://kodify.example.com/v1/", "https://kodify.example.com"),
        ("https://example.com/kodify/v1", "https://example.com/kodify"),  # behind a path prefix
    ],
)
def test_the_url_with_or_without_v1(given: str, expected: str) -> None:
    assert base_url(given) == expected


DB_ENV = {"MTSAI_AUTH": "true", "AUTH_TYPE": "DB", "DB_URL": "postgresql://kodify:pw@db:5432/kodify"}


def test_the_credential_of_the_servers_own_environment(tmp_path: Path) -> None:
    state = {"KODIFY_STATE_DIR": str(tmp_path)}
    assert find_credential("KODIFY_TOKEN", {"KODIFY_TOKEN": TOKEN, "VLLM_API_KEY": "x"}) == Credential(
        TOKEN, "$KODIFY_TOKEN", True
    )
    assert find_credential("KODIFY_TOKEN", {"VLLM_API_KEY": TOKEN, **state}) == Credential(
        TOKEN, "VLLM_API_KEY (the shared token)", True
    )
    assert find_credential("KODIFY_TOKEN", state).token is None  # dummy auth: none needed
    assert find_credential("KODIFY_TOKEN", {**DB_ENV, **state}) == Credential(None, "no credential", False)
    generated = ensure_master_key(load_settings({**DB_ENV, **state}))  # what `serve` writes there
    assert find_credential("KODIFY_TOKEN", {**DB_ENV, **state}) == Credential(
        generated, f"the master key in {tmp_path / 'master_key'}", False
    )
    given = {**DB_ENV, **state, "LITELLM_MASTER_KEY": "sk-given-master"}
    assert find_credential("KODIFY_TOKEN", given) == Credential(
        "sk-given-master", "the master key (LITELLM_MASTER_KEY)", False
    )
    assert find_credential("KODIFY_TOKEN", {"MTSAI_AUTH": "maybe"}) == Credential(None, "no credential", False)


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


def test_the_url_may_end_in_v1_as_a_clients_api_base_does(token_proxy: Server) -> None:
    done = run_cli("client-config", "continue", "--url", token_proxy.url + "/v1/", env=_env(KODIFY_TOKEN=TOKEN))
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert config["models"][0]["apiBase"] == token_proxy.url + "/v1"
    assert config["data"][0]["destination"] == token_proxy.url + "/v1/dev-data"


def test_in_the_servers_environment_the_shared_token_asks(token_proxy: Server) -> None:
    done = run_cli("client-config", "kodify", "--url", token_proxy.url, env=_env(VLLM_API_KEY=TOKEN))
    assert done.returncode == 0, done.stderr
    assert done.stderr == "client-config: $KODIFY_TOKEN is unset; asking with VLLM_API_KEY (the shared token)\n"
    assert TOKEN not in done.stdout and json.loads(done.stdout)["models"][0]["apiKey"] == "<token>"
    written = run_cli("client-config", "kodify", "--url", token_proxy.url, "--with-token", env=_env(VLLM_API_KEY=TOKEN))
    assert json.loads(written.stdout)["data"][0]["apiKey"] == TOKEN  # the clients' one token, as asked


def test_the_data_block_is_continues_and_its_destination_takes_an_event(token_proxy: Server) -> None:
    args = ["client-config", "continue", "--url", token_proxy.url, "--with-token", "--dev-data-level", "all"]
    done = run_cli(*args, env=_env(KODIFY_TOKEN=TOKEN))
    assert done.returncode == 0, done.stderr
    (data,) = run_node({"mode": "config", "config": yaml.safe_load(done.stdout)})["data"]  # config-yaml's own schema
    assert (data["schema"], data["level"], data["apiKey"]) == ("0.2.0", "all", TOKEN)
    events = [autocomplete("cc-1", True), next_edit("cc-2", "accept")]
    bodies = continue_bodies(events, {key: data[key] for key in ("schema", "level", "events")})
    assert [body["name"] for body in bodies] == ["autocomplete", "nextEditOutcome"]
    for body in bodies:  # as core/data/log.ts posts it: the destination, the apiKey as Bearer
        headers = {"Authorization": f"Bearer {data['apiKey']}", "Content-Type": "application/json"}
        assert httpx.post(data["destination"], json=body, headers=headers, timeout=30).status_code == 200


@pytest.fixture(scope="module")
def users_proxy(tmp_path_factory: pytest.TempPathFactory, upstream: Server, database_url: str) -> Iterator[Server]:
    """kodify-proxy with per-user tokens (no user added) and the master key it generated into its state dir."""
    with fresh_database(database_url, prefix="kodify_client_config") as url:
        env = {"MTSAI_AUTH": "true", "AUTH_TYPE": "DB", "DB_URL": url}
        tmp = tmp_path_factory.mktemp("client-config-users")
        server = kodify_proxy(tmp, upstreams_yaml(upstream.url), env=env, name="cc-users").start()
        try:
            yield server
        finally:
            server.stop()


def test_in_the_servers_environment_the_master_key_reads_the_models(users_proxy: Server) -> None:
    inside = _env(**users_proxy.env)  # what `docker compose exec kodify-proxy ...` runs with
    master = users_proxy.master_key()
    done = run_cli("client-config", "continue", "--url", users_proxy.url, env=inside)
    assert done.returncode == 0, done.stderr
    state = users_proxy.env["KODIFY_STATE_DIR"]
    assert done.stderr == f"client-config: $KODIFY_TOKEN is unset; asking with the master key in {state}/master_key\n"
    assert master not in done.stdout and yaml.safe_load(done.stdout)["models"][0]["model"] == "fake-model"
    refused = run_cli("client-config", "continue", "--url", users_proxy.url, "--with-token", env=inside)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert "is not written into a client config" in refused.stderr and master not in refused.stderr
    outside = run_cli("client-config", "continue", "--url", users_proxy.url, env=_env())
    assert outside.returncode == 1 and "refused the token (401)" in outside.stderr
