"""The autocompletion lane as real processes: vLLM's answer as it came, cancellation, routing, affinity.

Two fake upstreams serve `shared`, the session one `fake-model`; the proxy serves /v1/completions in the lane.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.clients import abandon_sync
from tests.servers import Server, fake_upstream, kodify_proxy, upstreams_yaml

SHARED = "shared"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    tmp = tmp_path_factory.mktemp("pair")
    servers = (fake_upstream(tmp, (SHARED,)).start(), fake_upstream(tmp, (SHARED,)).start())
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory, upstream: Server, pair: tuple[Server, Server]) -> Iterator[Server]:
    config = upstreams_yaml(upstream.url, pair[0].url, pair[1].url)
    env = {"KODIFY_STREAM_IDLE_TIMEOUT": "1", "MAX_N": "4"}
    server = kodify_proxy(tmp_path_factory.mktemp("lane"), config, env=env, name="lane").start()
    yield server
    server.stop()


def post(server: Server, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30, **kw)


def events(response: httpx.Response) -> list[Any]:
    """The `data:` payloads of an event stream, JSON-decoded ([DONE] as the string)."""
    found = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            found.append(payload if payload == "[DONE]" else json.loads(payload))
    return found


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# --- faithful: what vLLM answers is what the client gets ---------------------------------------------------------


def test_a_token_id_prompt_and_vllms_own_fields_come_through(lane: Server, upstream: Server) -> None:
    body = {"model": "fake-model", "prompt": [1, 2, 3], "return_token_ids": True, "echo": True, "logprobs": 1}
    response = post(lane, "/v1/completions", body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert (choice["prompt_token_ids"], choice["token_ids"]) == ([1, 2, 3], [7, 8, 9])
    assert httpx.get(upstream.url + "/_last").json() == body  # sent as the client wrote it


def test_an_n2_stream_keeps_each_choice_with_its_index_and_one_finish_reason(lane: Server) -> None:
    response = post(lane, "/v1/completions", {"model": "fake-model", "prompt": "x", "n": 2, "stream": True})
    chunks = [e for e in events(response) if e != "[DONE]"]
    by_index: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for chunk in chunks:
        for choice in chunk["choices"]:
            by_index[choice["index"]].append(choice)
    assert ["".join(c["text"] for c in by_index[i]) for i in (0, 1)] == [" return 42", " return 42"]
    assert [[c["finish_reason"] for c in by_index[i] if c["finish_reason"]] for i in (0, 1)] == [["length"]] * 2
    assert events(response)[-1] == "[DONE]" and "usage" not in json.dumps(chunks)


def test_include_usage_is_answered_as_vllm_answers_it(lane: Server) -> None:
    body = {"model": "fake-model", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
    chunks = events(post(lane, "/v1/completions", body))
    assert chunks[-1] == "[DONE]"
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
    }


def test_vllms_own_rejection_keeps_its_status_and_message(lane: Server) -> None:
    response = post(lane, "/v1/completions", {"model": "fake-model", "prompt": "a", "suffix": "b"})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "suffix is not currently supported",
        "type": "invalid_request_error",
        "param": "suffix",
        "code": "400",
    }


def test_no_response_header_names_an_upstream(lane: Server, upstream: Server) -> None:
    for path, body in (
        ("/v1/completions", {"model": "fake-model", "prompt": "x"}),
        ("/v1/completions", {"model": "fake-model", "prompt": "x", "stream": True}),
        ("/v1/chat/completions", {"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}),
    ):
        response = post(lane, path, body)
        assert response.status_code == 200
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        assert str(upstream.port) not in headers and "api-base" not in headers and "llm_provider" not in headers


# --- a stream that goes silent or breaks ---------------------------------------------------------------------------


def test_a_silent_stream_ends_with_a_timeout_error_event(lane: Server) -> None:
    started = time.monotonic()
    response = post(lane, "/v1/completions", {"model": "fake-model", "prompt": "SILENT:5", "stream": True})
    assert response.status_code == 200 and time.monotonic() - started < 4  # KODIFY_STREAM_IDLE_TIMEOUT=1
    *_, error, done = events(response)
    assert done == "[DONE]"
    assert error["error"]["type"] == "timeout_error" and "sent nothing for 1 s" in error["error"]["message"]


def test_a_stream_whose_upstream_dies_ends_with_an_upstream_error_event(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp = tmp_path_factory.mktemp("dying")
    dying = fake_upstream(tmp, ("fake-model",)).start()
    proxy = kodify_proxy(tmp, upstreams_yaml(dying.url), name="dying-proxy").start()
    try:
        with httpx.stream(
            "POST", proxy.url + "/v1/completions", json={"model": "fake-model", "prompt": "DRIP:10", "stream": True}
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            dying.kill()
            rest = [line for line in lines if line.startswith("data: ")]
        error = json.loads(rest[-2][len("data: ") :])["error"]
        assert rest[-1] == "data: [DONE]"
        assert error["type"] == "upstream_error" and dying.url in error["message"]
    finally:
        proxy.stop()


# --- cancellation: the upstream sees the client leave -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "fake-model", "prompt": "DRIP:4"}),
        ("/v1/completions", {"model": "fake-model", "prompt": "DRIP:4", "stream": True}),
        ("/v1/completions", {"language": "python", "segments": {"prefix": "# DRIP:4\nx = ", "suffix": "\n"}}),
        ("/v1/chat/completions", {"model": "fake-model", "messages": [{"role": "user", "content": "DRIP:4"}]}),
        (
            "/v1/chat/completions",
            {"model": "fake-model", "messages": [{"role": "user", "content": "DRIP:4"}], "stream": True},
        ),
    ],
    ids=["lane", "lane-stream", "tabby", "chat", "chat-stream"],
)
def test_a_client_that_leaves_closes_the_upstream_request(
    lane: Server, upstream: Server, path: str, body: dict[str, Any]
) -> None:
    def left() -> int:
        return int(httpx.get(upstream.url + "/_disconnects").json())

    before = left()
    started = time.monotonic()
    abandon_sync(lane.url + path, body, after=0.5)
    eventually(lambda: left() == before + 1, timeout=2.0)  # long before the 4 s answer would have ended
    assert time.monotonic() - started < 2.5


def test_a_chat_stream_that_outruns_the_client_is_closed_when_its_client_leaves(lane: Server, upstream: Server) -> None:
    """The upstream sends 50,000 chunks as fast as it can, so the relay always finds the next one waiting (as with
    vLLM's tiny model): the client's hang-up must still close the upstream request at once, not when the backlog is
    worked through. (LiteLLM's path had this bug: docs/litellm-seams.md.)"""

    def left() -> int:
        return int(httpx.get(upstream.url + "/_disconnects").json())

    body = {"model": "fake-model", "messages": [{"role": "user", "content": "FLOOD:50000"}], "stream": True}
    warm = {**body, "messages": [{"role": "user", "content": "FLOOD:10"}]}  # a first call may take > 0.5 s
    assert httpx.post(lane.url + "/v1/chat/completions", json=warm, timeout=30).status_code == 200
    before = left()
    received = abandon_sync(lane.url + "/v1/chat/completions", body, after=0.5)
    assert received.count(b"data: ") > 10  # it was streaming when the client left
    eventually(lambda: left() == before + 1, timeout=3.0)


# --- routing: failover, affinity ----------------------------------------------------------------------------------


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json().get("system_fingerprint") or response.json().get("choices"))


def tabby(file: str) -> dict[str, Any]:
    return {"language": "python", "segments": {"prefix": "x = ", "suffix": "\n", "filepath": file}}


def test_one_files_keystrokes_go_to_one_upstream_and_files_spread(
    tmp_path_factory: pytest.TempPathFactory, pair: tuple[Server, Server]
) -> None:
    config = upstreams_yaml(pair[0].url, pair[1].url, extra=f"tabby:\n  model_name: {SHARED}\n")
    proxy = kodify_proxy(tmp_path_factory.mktemp("affinity"), config, name="affinity").start()
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            for file in ("a.py", "b.py", "c.py"):
                seen = {served_by_tabby(client, pair, file) for _ in range(8)}
                assert len(seen) == 1, f"{file} went to {seen}"
            spread = Counter(served_by_tabby(client, pair, f"src/m{i}.py") for i in range(60))
            assert min(spread.values()) >= 15, spread  # 60 files on 2 upstreams: evenly, give or take

            def answered(prompt: str) -> str:
                return served_by(client.post("/v1/completions", json={"model": SHARED, "prompt": prompt}))

            head = "import os\n" * 30  # a file's first lines: longer than the key's prompt start
            pairs = [{answered(f"# file {i}\n{head}x = {k}") for k in range(2)} for i in range(30)]
            assert all(len(both) == 1 for both in pairs)  # the prompt's start picks the upstream
            assert len(set().union(*pairs)) == 2

            def turn(conversation: int, turns: int) -> str:
                messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{conversation}"}]
                for t in range(turns):
                    messages += [{"role": "assistant", "content": "a"}, {"role": "user", "content": f"more {t}"}]
                return served_by(client.post("/v1/chat/completions", json={"model": SHARED, "messages": messages}))

            conversations = [{turn(i, turns) for turns in range(4)} for i in range(30)]
            assert all(len(turns) == 1 for turns in conversations)  # a conversation's turns stay on one upstream
            assert len(set().union(*conversations)) == 2  # conversations spread
    finally:
        proxy.stop()


def served_by_tabby(client: httpx.Client, pair: tuple[Server, Server], file: str) -> str:
    """Which of the pair answered a Tabby request (each counts its prompts)."""
    marker = f"{file}-{time.monotonic_ns()}"
    body = tabby(file)
    body["segments"]["prefix"] = f"# {marker}\nx = "
    assert client.post("/v1/completions", json=body).status_code == 200
    counts = [int(httpx.get(s.url + "/_count", params={"contains": marker}).json()) for s in pair]
    assert sorted(counts) == [0, 1], counts
    return pair[counts.index(1)].url


def test_affinity_off_spreads_one_file(tmp_path_factory: pytest.TempPathFactory, pair: tuple[Server, Server]) -> None:
    config = upstreams_yaml(pair[0].url, pair[1].url, extra=f"tabby:\n  model_name: {SHARED}\n")
    env = {"KODIFY_CACHE_AFFINITY": "false"}
    proxy = kodify_proxy(tmp_path_factory.mktemp("no-affinity"), config, env=env, name="no-affinity").start()
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            assert len({served_by_tabby(client, pair, "one.py") for _ in range(24)}) == 2
    finally:
        proxy.stop()


def test_a_refused_connection_fails_over_at_once_and_none_left_is_503(
    lane: Server, pair: tuple[Server, Server]
) -> None:
    first, second = pair
    second.stop()
    try:
        statuses = [post(lane, "/v1/completions", {"model": SHARED, "prompt": f"p{i}"}).status_code for i in range(10)]
        chats = [{"model": SHARED, "messages": [{"role": "user", "content": f"c{i}"}]} for i in range(10)]
        statuses += [post(lane, "/v1/chat/completions", chat).status_code for chat in chats]
        assert statuses == [200] * 20
        first.stop()
        eventually(lambda: post(lane, "/v1/completions", {"model": SHARED, "prompt": "x"}).status_code == 503)
        error = post(lane, "/v1/completions", {"model": SHARED, "prompt": "x"}).json()["error"]
        assert (
            error["type"] == "service_unavailable" and first.url in error["message"] and second.url in error["message"]
        )
    finally:
        first.start()
        second.start()
    started = time.monotonic()
    eventually(lambda: post(lane, "/v1/completions", {"model": SHARED, "prompt": "x"}).status_code == 200, timeout=5)
    assert time.monotonic() - started < 3.0  # KODIFY_DOWN_RECHECK_INTERVAL (0.25 s), not the 10 s discovery interval
