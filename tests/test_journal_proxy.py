"""A real kodify-proxy with LOGS=True against a real PostgreSQL: every kind of request lands in the journal, once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from tests.journal_support import SLOW_MODEL, fresh_database, journal_rows
from tests.servers import Server, kodify_proxy, upstreams_yaml

TOKEN = "sk-journal-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_CAP = 2048
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def journaled(
    tmp_path_factory: pytest.TempPathFactory, upstream: Server, slow: Server, database_url: str
) -> Iterator[tuple[Server, str]]:
    """The proxy (shared token, MAX_N=4) journaling into an empty database it migrates itself (RUN_MIGRATIONS=1)."""
    with fresh_database(database_url) as url:
        env = {
            "LOGS": "True",
            "KODIFY_JOURNAL_URL": url,
            "RUN_MIGRATIONS": "1",
            "VLLM_API_KEY": TOKEN,
            "MAX_N": "4",
            "KODIFY_JOURNAL_FLUSH_INTERVAL": "0.05",
            "KODIFY_JOURNAL_BODY_MAX_BYTES": str(BODY_CAP),
        }
        server = kodify_proxy(
            tmp_path_factory.mktemp("journal"), upstreams_yaml(upstream.url, slow.url), env=env, name="journal-proxy"
        ).start()
        yield server, url
        server.stop()


def request_id(response: httpx.Response) -> str:
    value = response.headers.get("x-litellm-call-id")
    assert value, f"no x-litellm-call-id on {response.status_code} {response.request.url}"
    return str(value)


def row_of(url: str, rid: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in journal_rows(url) if r["request_id"] == rid]
        if found:
            assert len(found) == 1
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"request {rid} is not in the journal after {timeout} s")


def test_a_chat_completion_row(journaled: tuple[Server, str], upstream: Server) -> None:
    proxy, url = journaled
    body = {"model": "fake-model", "n": 2, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{proxy.url}/v1/chat/completions", headers=AUTH, content=json.dumps(body), timeout=30)
    assert response.status_code == 200
    row = row_of(url, request_id(response))
    assert {
        k: row[k]
        for k in (
            "user_id",
            "key_alias",
            "method",
            "route",
            "model",
            "upstream",
            "status",
            "error_type",
            "error_message",
            "stream",
            "ttft_ms",
            "prompt_tokens",
            "completion_tokens",
            "n",
            "request_body_truncated",
            "response_body_truncated",
        )
    } == {
        "user_id": "shared",
        "key_alias": "kodify-shared-token",
        "method": "POST",
        "route": "/v1/chat/completions",
        "model": "fake-model",
        "upstream": upstream.url,
        "status": 200,
        "error_type": None,
        "error_message": None,
        "stream": False,
        "ttft_ms": None,
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "n": 2,
        "request_body_truncated": False,
        "response_body_truncated": False,
    }
    assert row["request_body"] == json.dumps(body)
    assert row["response_body"] == response.text
    assert (row["request_bytes"], row["response_bytes"]) == (len(json.dumps(body)), len(response.content))
    assert 0 < row["latency_ms"] < 30_000


def test_a_stream_from_the_openai_sdk_is_one_row_with_vllms_events(journaled: tuple[Server, str]) -> None:
    proxy, url = journaled
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=TOKEN)
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=[{"role": "user", "content": "stream please"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert text == "Hello world"
    row = row_of(url, raw.headers["x-litellm-call-id"])
    assert (row["status"], row["stream"], row["error_type"]) == (200, True, None)
    assert 0 < row["ttft_ms"] <= row["latency_ms"]
    assert row["completion_tokens"] is not None and row["prompt_tokens"] is not None
    # The chat lane stores the stream as the client got it (vLLM's events), as it does for completions.
    events = [line[len("data: ") :] for line in row["response_body"].splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Hello world"
    assert all(c["choices"] for c in chunks)  # the usage chunk the lane asked for is not the client's


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "error_type", "user"),
    [
        (
            "/v1/chat/completions",
            AUTH,
            {"model": "fake-model", "n": 9, "messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid_request_error",
            "shared",
        ),
        (
            "/v1/chat/completions",
            {"Authorization": "Bearer wrong"},
            {"model": "fake-model", "messages": [{"role": "user", "content": "x"}]},
            401,
            "auth_error",
            None,
        ),
        (
            "/v1/chat/completions",
            AUTH,
            {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            404,
            "not_found_error",
            "shared",
        ),
        (
            "/v1/completions",
            AUTH,
            {"model": "fake-model", "prompt": "def f(", "suffix": "x"},  # the upstream's 400
            400,
            "invalid_request_error",
            "shared",
        ),
    ],
)
def test_rejected_and_failed_requests_are_journaled(
    journaled: tuple[Server, str],
    path: str,
    headers: dict[str, str],
    body: dict[str, Any],
    status: int,
    error_type: str,
    user: str | None,
) -> None:
    proxy, url = journaled
    response = httpx.post(proxy.url + path, headers=headers, json=body, timeout=30)
    assert response.status_code == status
    row = row_of(url, request_id(response))
    assert (row["status"], row["error_type"], row["user_id"]) == (status, error_type, user)
    assert row["error_message"] == response.json()["error"]["message"]
    assert row["response_body"] == response.text


def test_a_client_leaving_mid_stream_is_journaled_as_499(journaled: tuple[Server, str]) -> None:
    proxy, url = journaled
    body = {"model": SLOW_MODEL, "stream": True, "messages": [{"role": "user", "content": "a long answer"}]}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{proxy.url}/v1/chat/completions", headers=AUTH, json=body) as response,
    ):
        rid = request_id(response)
        lines = response.iter_lines()
        received = [next(lines) for _ in range(3)]  # two chunks of twenty, then leave
    assert received[0].startswith("data: ")
    row = row_of(url, rid)
    assert (row["status"], row["error_type"], row["stream"], row["model"]) == (
        499,
        "client_disconnected",
        True,
        SLOW_MODEL,
    )
    assert row["ttft_ms"] is not None
    assert row["error_message"].startswith("the client closed the connection after ")


def test_a_locked_journal_table_delays_no_request(journaled: tuple[Server, str]) -> None:
    proxy, url = journaled
    engine = sa.create_engine(url)
    blocker = engine.connect()
    transaction = blocker.begin()
    # EXCLUSIVE blocks the writer's INSERTs (until lock_timeout) but still lets this test read the table.
    blocker.execute(sa.text("LOCK TABLE kodify_journal IN EXCLUSIVE MODE"))
    try:
        ids, slowest = [], 0.0
        with httpx.Client(base_url=proxy.url, headers=AUTH, timeout=30) as client:
            for _ in range(10):
                started = time.perf_counter()
                response = client.post("/v1/chat/completions", json={"model": "fake-model", "messages": MESSAGES})
                slowest = max(slowest, time.perf_counter() - started)
                assert response.status_code == 200
                ids.append(request_id(response))
        time.sleep(1.0)  # twenty flush intervals: without the lock these rows would be stored by now
        assert not set(ids) & {r["request_id"] for r in journal_rows(url)}
        assert slowest < 2.0, f"a request took {slowest:.2f} s while the journal table was locked"
    finally:
        transaction.rollback()
        blocker.close()
        engine.dispose()
    assert [row_of(url, rid, timeout=30)["request_id"] for rid in ids] == ids


def test_bodies_over_the_cap_are_truncated_and_marked(journaled: tuple[Server, str]) -> None:
    proxy, url = journaled
    body = {"model": "fake-embed", "input": "x" * 5000}
    response = httpx.post(f"{proxy.url}/v1/embeddings", headers=AUTH, json=body, timeout=30)
    assert response.status_code == 200
    row = row_of(url, request_id(response))
    sent = response.request.content
    assert (row["request_bytes"], row["request_body_truncated"]) == (len(sent), True)
    assert row["request_body"].encode() == sent[:BODY_CAP]
    assert (row["prompt_tokens"], row["response_body_truncated"]) == (2, False)


def test_a_client_chosen_call_id_is_replaced_by_a_unique_one(journaled: tuple[Server, str]) -> None:
    proxy, url = journaled
    body = {"model": "fake-model", "prompt": "x"}
    ids = [
        request_id(
            httpx.post(
                f"{proxy.url}/v1/completions",
                json=body,
                timeout=30,
                headers={**AUTH, "x-litellm-call-id": "client-chosen"},
            )
        )
        for _ in range(2)
    ]
    assert len(set(ids)) == 2 and "client-chosen" not in ids
    assert [row_of(url, rid)["status"] for rid in ids] == [200, 200]


def test_every_api_request_is_journaled_and_health_probes_are_not(journaled: tuple[Server, str]) -> None:
    proxy, url = journaled
    before = {r["request_id"] for r in journal_rows(url)}
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(base_url=proxy.url, headers=AUTH, timeout=30) as client:
        responses = [client.post("/v1/chat/completions", json=chat) for _ in range(5)]
        responses += [
            client.get("/v1/models"),
            client.post("/v1/completions", json={"model": "fake-model", "prompt": "y"}),
        ]
        responses += [client.post("/v1/embeddings", json={"model": "fake-embed", "input": "z"})]
        responses += [client.post("/chat/completions", json=chat)]  # the same route without /v1: journaled too
        assert client.post("/v2/chat/completions", json=chat).status_code == 404  # not a route of ours: no row
        for probe in ("/health", "/health/liveliness", "/health/readiness"):
            assert "x-litellm-call-id" not in client.get(probe).headers
    ids = {request_id(r) for r in responses}
    assert len(ids) == len(responses)
    deadline = time.monotonic() + 15
    while not ids <= {r["request_id"] for r in journal_rows(url)} and time.monotonic() < deadline:
        time.sleep(0.2)
    after = journal_rows(url)
    assert {r["request_id"] for r in after} - before == ids  # these requests, and nothing else (no probe)
    assert len(after) == len({r["request_id"] for r in after})
    models = next(r for r in after if r["route"] == "/v1/models")
    assert (models["status"], models["method"], models["request_body"]) == (200, "GET", "")


def test_the_proxy_said_where_the_journal_goes(journaled: tuple[Server, str]) -> None:
    proxy, _ = journaled
    log = proxy.log_text()
    assert "Journal schema is at revision 0005" in log
    assert "Journal on: postgresql+psycopg://postgres@127.0.0.1:5432/" in log
    assert "Journal database unavailable" not in log


def test_spool_is_empty_while_the_database_is_up(journaled: tuple[Server, str], tmp_path: Path) -> None:
    proxy, _ = journaled
    spool = proxy.instance_dir / "journal-spool"
    deadline = time.monotonic() + 10
    while list(spool.glob("segment-*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spool.is_dir() and list(spool.glob("segment-*.jsonl")) == []


def test_a_tabby_event_is_journaled_with_its_user(journaled: tuple[Server, str]) -> None:
    proxy, url = journaled
    event = {"type": "select", "completion_id": "cmpl-1", "choice_index": 0, "view_id": "v-1", "elapsed": 1200}
    response = httpx.post(f"{proxy.url}/v1/events?select_kind=line", headers=AUTH, content=json.dumps(event))
    assert response.status_code == 200 and response.content == b""
    row = row_of(url, request_id(response))
    assert (row["route"], row["status"], row["user_id"]) == ("/v1/events", 200, "shared")
    assert json.loads(row["request_body"]) == event


def test_health_reports_the_journal(journaled: tuple[Server, str]) -> None:
    proxy, _ = journaled
    assert httpx.get(f"{proxy.url}/health").json()["databases"]["journal"] == {"healthy": True}
    journal = proxy.health()["databases"]["journal"]
    assert journal["healthy"] is True and journal["database"] == "up" and journal["error"] is None
    assert journal["stored_rows"] >= 1 and "password" not in journal["where"]


def test_a_tabby_completion_and_its_events_are_linked(journaled: tuple[Server, str]) -> None:
    proxy, url = journaled
    tabby = {"language": "python", "segments": {"prefix": "def f(", "suffix": "):\n", "filepath": "a.py"}}
    answer = httpx.post(f"{proxy.url}/v1/completions", headers=AUTH, json=tabby, timeout=30)
    assert answer.status_code == 200
    completion_id = answer.json()["id"]
    event = {"type": "select", "completion_id": completion_id, "choice_index": 0, "view_id": "v-9", "elapsed": 800}
    selected = httpx.post(f"{proxy.url}/v1/events?select_kind=line", headers=AUTH, json=event, timeout=30)
    completion, selection = row_of(url, request_id(answer)), row_of(url, request_id(selected))
    assert completion_id == f"cmpl-{request_id(answer)}"  # vLLM names the completion after our request id
    assert (completion["completion_id"], completion["language"], completion["event_type"]) == (
        completion_id,
        "python",
        None,
    )
    assert {k: selection[k] for k in ("completion_id", "event_type", "choice_index", "select_kind", "view_id")} == {
        "completion_id": completion_id,
        "event_type": "select",
        "choice_index": 0,
        "select_kind": "line",
        "view_id": "v-9",
    }
    assert (selection["elapsed_ms"], selection["model"], selection["language"]) == (800, "fake-model", "python")
