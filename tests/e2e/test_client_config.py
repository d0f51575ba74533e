"""`kodify-proxy client-config` against kodify-proxy in front of a real vLLM, each printed config fed to its real
client: Continue's `cn` with config.yaml, tabby-agent with config.toml, and config.json's entries sent as Continue
sends them. The tool-use probe is checked both ways: a vLLM with the hermes tool parser (scripts/vllm-serve.sh's
default) and one started with `--no-enable-auto-tool-choice`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import LONG_CONTEXT, SERVED_MODEL, real_vllm
from tests.e2e.tabby_agent_driver import RecordingRelay, install_agent, lsp_complete
from tests.e2e.test_continue import TEST_OPTIONS, run_offline
from tests.e2e.test_tabby_agent import CHARACTER, DOCUMENT, LINE, e2e_proxy
from tests.servers import REPO, Server, kodify_proxy, upstreams_yaml
from tests.test_clients_doc import PREFIX, SUFFIX, continue_fim, post, sse_events

pytestmark = pytest.mark.e2e

TOKEN = "sk-kodify-e2e-client-config"
PROBE_REFUSAL = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


def client_config(proxy: Server, client: str, *args: str) -> str:
    """`kodify-proxy client-config CLIENT --url PROXY ARGS...` with the token in KODIFY_TOKEN; its stdout."""
    command = [sys.executable, "-m", "kodify_proxy.cli", "client-config", client, "--url", proxy.url, *args]
    env = {**os.environ, "KODIFY_TOKEN": TOKEN}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def config_proxy(tmp_path_factory: pytest.TempPathFactory, long_vllm: str) -> Iterator[Server]:
    """kodify-proxy with one shared token in front of the long-context vLLM (hermes tool parser on), Tabby
    completions greedy and 4 tokens long (tests/e2e/test_tabby_agent.py's e2e config)."""
    server = e2e_proxy(tmp_path_factory.mktemp("client-config"), long_vllm, TOKEN, "client-config-proxy")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def toolless_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server]]:
    """A real vLLM without auto tool choice (the flag turned back off after vllm-serve.sh's default), and
    kodify-proxy in front of it: (vLLM's URL, the proxy)."""
    tmp = tmp_path_factory.mktemp("client-config-toolless")
    with real_vllm(tmp / "vllm", "--no-enable-auto-tool-choice") as url:
        server = kodify_proxy(tmp, upstreams_yaml(url), env={"VLLM_API_KEY": TOKEN}, name="toolless-proxy").start()
        try:
            yield url, server
        finally:
            server.stop()


def test_continue_config_names_the_served_model_its_context_and_tool_use(config_proxy: Server) -> None:
    config = yaml.safe_load(client_config(config_proxy, "continue"))
    chat, auto = config["models"]
    assert (chat["model"], chat["capabilities"], chat["apiKey"]) == (
        SERVED_MODEL,
        ["tool_use"],
        "${{ secrets.KODIFY_TOKEN }}",
    )
    assert chat["defaultCompletionOptions"] == {"contextLength": LONG_CONTEXT, "maxTokens": LONG_CONTEXT // 4}
    assert auto["roles"] == ["autocomplete"] and auto["autocompleteOptions"]["maxPromptTokens"] == 1024


def test_cn_answers_with_the_printed_continue_config(config_proxy: Server, tmp_path: Path) -> None:
    cn = Path(
        subprocess.run(
            ["bash", str(REPO / "scripts/continue-cli.sh")], capture_output=True, text=True, timeout=600, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    config: dict[str, Any] = yaml.safe_load(client_config(config_proxy, "continue"))
    chat = config["models"][0]
    chat["defaultCompletionOptions"] |= TEST_OPTIONS  # greedy and short: the random model's answer is never empty
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    (workspace := tmp_path / "workspace").mkdir()
    (home := tmp_path / "home").mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "KODIFY_TOKEN": TOKEN,  # what `${{ secrets.KODIFY_TOKEN }}` resolves to (cn reads the environment first)
        "CONTINUE_CLI_ENABLE_TELEMETRY": "0",
        "CONTINUE_METRICS_ENABLED": "0",
        "CONTINUE_CLI_AUTO_UPDATED": "1",
        "NODE_NO_WARNINGS": "1",
    }
    command = ["node", str(cn), "-p", "Write a Python function that adds two numbers.", "--config", str(path)]
    result = run_offline([*command, "--readonly"], config_proxy.port, workspace, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), result.stderr[-3000:]


def test_tabby_agent_completes_with_the_printed_config_toml(config_proxy: Server, tmp_path: Path) -> None:
    relay = RecordingRelay(config_proxy.url).start()
    try:
        text = client_config(config_proxy, "tabby", "--with-token", "--client-url", relay.url)
        path = tmp_path / ".tabby-client" / "agent" / "config.toml"
        path.parent.mkdir(parents=True)
        path.write_text(text)
        result = lsp_complete(install_agent(), tmp_path, DOCUMENT, LINE, CHARACTER)
    finally:
        relay.stop()
    seen = relay.paths()
    assert ("POST", "/v1/completions", 200) in seen and all(status == 200 for _, _, status in seen), seen
    assert result["items"] and result["items"][0]["textEdit"]["newText"].strip()


def test_kodify_config_json_entries_answer_as_continue_sends_them(config_proxy: Server) -> None:
    config = json.loads(client_config(config_proxy, "kodify", "--with-token"))
    chat, auto = config["models"][0], config["tabAutocompleteModel"]
    assert chat["capabilities"] == {"tools": True} and chat["contextLength"] == LONG_CONTEXT
    tool = {"type": "function", "function": {"name": "Read", "parameters": {"type": "object", "properties": {}}}}
    messages = [{"role": "user", "content": "say hi"}]
    body = {"model": chat["model"], "messages": messages, "stream": True, "tools": [tool], "max_tokens": 8}
    assert sse_events(post(chat, "/chat/completions", body))[-1] == "[DONE]"
    prompt, stop = continue_fim(auto["model"], PREFIX, SUFFIX)
    max_tokens = auto["completionOptions"]["maxTokens"]
    body = {"model": auto["model"], "prompt": prompt, "max_tokens": max_tokens, "stop": stop, "stream": True}
    assert sse_events(post(auto, "/completions", body))[-1] == "[DONE]"


def test_without_a_tool_parser_the_config_has_no_tool_use(toolless_proxy: tuple[str, Server]) -> None:
    vllm, proxy = toolless_proxy
    probe = {"model": SERVED_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    tool = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}
    refused = httpx.post(
        vllm + "/v1/chat/completions", json={**probe, "tools": [tool], "tool_choice": "auto"}, timeout=60
    )
    assert refused.status_code == 400 and PROBE_REFUSAL in refused.json()["error"]["message"]
    chat, _ = yaml.safe_load(client_config(proxy, "continue"))["models"]
    assert "capabilities" not in chat and chat["defaultCompletionOptions"] == {"contextLength": 512, "maxTokens": 128}
    assert "capabilities" not in json.loads(client_config(proxy, "kodify"))["models"][0]
