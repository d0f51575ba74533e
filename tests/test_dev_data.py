"""POST /v1/dev-data: Continue's events, built exactly as core/data/log.ts builds them and validated by
@continuedev/config-yaml's own zod schemas (tests/continue_dev_data.mjs), posted to a real kodify-proxy with per-user
tokens and its journal in a real PostgreSQL; refused bodies; the pure reading of an event."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from kodify_proxy import dev_data
from kodify_proxy.acceptance import Client, Suggestion
from kodify_proxy.exchange import Exchange
from kodify_proxy.journal.record import BodyPolicy, build_row
from kodify_proxy.preprocess import load_shipped
from kodify_proxy.users import UserStore
from tests.journal_support import TcpForwarder, fresh_database, journal_rows, via_port
from tests.servers import REPO, Server, kodify_proxy, upstreams_yaml
from tests.test_surface import assert_ours

NODE_SCRIPT = REPO / "tests" / "continue_dev_data.mjs"
IDE = {"name": "VSCode", "version": "1.96.2", "extensionVersion": "1.0.5"}
# What client-config writes: the events that feed the report, Continue's noCode level.
DESTINATION = {"schema": "0.2.0", "level": "noCode", "events": ["autocomplete", "nextEditOutcome"]}
PREFIX, SUFFIX = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"


@cache
def config_yaml_package() -> str:
    """@continuedev/config-yaml from npm, pinned, in the cache dir (scripts/continue-config-yaml.sh): its index.js."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts/continue-config-yaml.sh")], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"installing @continuedev/config-yaml failed:\n{done.stderr[-3000:]}"
    return done.stdout.strip().splitlines()[-1]


def run_node(request: dict[str, Any]) -> Any:
    """tests/continue_dev_data.mjs with `request` on stdin: its JSON answer."""
    done = subprocess.run(
        ["node", str(NODE_SCRIPT), config_yaml_package()],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def continue_bodies(specs: list[dict[str, Any]], destination: dict[str, Any] = DESTINATION) -> list[dict[str, Any]]:
    """The POST bodies Continue sends for `specs` (those its destination's `events` leave out are not sent)."""
    request = {"mode": "events", "destination": destination, "ide": IDE, "userToken": "", "profileId": "local"}
    answers = run_node({**request, "events": specs})
    return [answer["body"] for answer in answers if answer["body"] is not None]


def autocomplete(completion_id: str, accepted: bool, filepath: str = "file:///work/src/calc.py") -> dict[str, Any]:
    """An autocomplete suggestion the IDE showed: taken (accepted) or left for 10 s."""
    return {
        "kind": "autocomplete",
        "filepath": filepath,
        "model": "fake-model",
        "completion": "return a + b",
        "prefix": PREFIX,
        "suffix": SUFFIX,
        "prompt": f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>",
        "accepted": accepted,
        "completionId": completion_id,
    }


def next_edit(completion_id: str, outcome: str, request_id: str = "chatcmpl-next-1") -> dict[str, Any]:
    """A next edit shown, then accepted, rejected or aborted."""
    return {
        "kind": "nextEditOutcome",
        "fileUri": "file:///work/src/lib.rs",
        "model": "fake-model",
        "requestId": request_id,
        "completionId": completion_id,
        "prompt": "<|editable_region_start|>fn add() {}<|editable_region_end|>",
        "outcome": outcome,
    }


# --- the pure reading of an event ------------------------------------------------------------------------------------


def noted(body: dict[str, Any]) -> Exchange:
    exchange = Exchange("r", "POST", "/v1/dev-data", "/v1/dev-data", datetime(2026, 12, 9, tzinfo=UTC), 0.0)
    dev_data.note_event(dev_data.DevDataRequest.model_validate(body), load_shipped("qwen"), exchange)
    return exchange


def test_an_autocomplete_event_as_log_ts_sends_it_with_code() -> None:
    (body,) = continue_bodies([autocomplete("c-1", True)], {**DESTINATION, "level": "all"})
    exchange = noted(body)
    assert (exchange.model, exchange.language, exchange.completion_id) == ("fake-model", "python", "c-1")
    assert exchange.client == Client("Continue", "1.0.5")
    assert exchange.suggestion == Suggestion("autocomplete", shown=True, accepted=True)
    assert exchange.dev_event is not None
    assert (exchange.dev_event.name, exchange.dev_event.schema, exchange.dev_event.response_id) == (
        "autocomplete",
        "0.2.0",
        None,
    )
    kept = json.loads(exchange.dev_event.data_json)
    assert body["data"]["prefix"] == PREFIX  # level all: the code was sent ...
    assert not {"prefix", "suffix", "prompt", "completion"} & set(kept)  # ... and is not in event_data
    assert kept == {k: v for k, v in body["data"].items() if k not in dev_data.CODE_FIELDS}
    assert kept["filepath"] == "file:///work/src/calc.py" and kept["userAgent"] == "VSCode/1.96.2 (Continue/1.0.5)"


def test_a_next_edit_names_our_response() -> None:
    accepted, aborted = continue_bodies([next_edit("n-1", "accept"), next_edit("n-2", "abort")])
    exchange = noted(accepted)
    assert exchange.dev_event is not None and exchange.dev_event.response_id == "chatcmpl-next-1"
    assert exchange.suggestion == Suggestion("next_edit", shown=True, accepted=True, aborted=False)
    assert exchange.language is None  # noCode leaves out fileUri, so the language with it
    assert noted(aborted).suggestion == Suggestion("next_edit", shown=False, accepted=False, aborted=True)
    (with_code,) = continue_bodies([next_edit("n-3", "reject")], {**DESTINATION, "level": "all"})
    assert noted(with_code).language == "rust"


def test_the_code_is_in_the_row_only_with_bodies_kept() -> None:
    (body,) = continue_bodies([autocomplete("c-2", False)], {**DESTINATION, "level": "all"})
    exchange = noted(body)
    exchange.request_body = json.dumps(body).encode()
    with_bodies, without = build_row(exchange, BodyPolicy(keep=True)), build_row(exchange, BodyPolicy(keep=False))
    assert with_bodies.request_body is not None and PREFIX in json.loads(with_bodies.request_body)["data"]["prefix"]
    assert without.request_body is None
    for row in (with_bodies, without):
        assert row.event_data is not None and "prefix" not in json.loads(row.event_data)
        assert (row.event_type, row.suggestion, row.shown, row.accepted, row.client) == (
            "autocomplete",
            "autocomplete",
            True,
            False,
            "Continue",
        )


@pytest.mark.parametrize(
    ("data", "kept"),
    [
        ({"prompt": "x", "modelName": "m", "n": 1}, '{"modelName":"m","n":1}'),
        ({"lone": "\ud800", "big": 2**70}, '{"lone": "\ud800", "big": 1180591620717411303424}'),  # as json.dumps
    ],
)
def test_render_data(data: dict[str, Any], kept: str) -> None:
    assert dev_data.render_data(data) == kept


# --- through a real kodify-proxy -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevDataProxy:
    server: Server
    journal: str
    tokens: dict[str, str]  # user -> token
    journal_link: TcpForwarder  # the proxy reaches its journal database through it: stop() is an outage


@pytest.fixture(scope="module")
def dev_proxy(tmp_path_factory: pytest.TempPathFactory, upstream: Server, database_url: str) -> Iterator[DevDataProxy]:
    """Per-user tokens (alice, bob), the journal in a fresh PostgreSQL database (through a forwarder that can cut it
    off), bodies off, events up to 4 KiB."""
    with fresh_database(database_url, prefix="kodify_dev_data") as url:
        target = make_url(url)
        link = TcpForwarder(target.host or "127.0.0.1", target.port or 5432).start()
        store = UserStore.from_settings_values(url, "kodify_users", 5.0)
        store.ensure_table()
        tokens = {name: store.add(name, None).token for name in ("alice", "bob")}
        store.close()
        env = {
            "MTSAI_AUTH": "true",
            "AUTH_TYPE": "DB",
            "DB_URL": url,
            "LOGS": "True",
            "KODIFY_JOURNAL_URL": via_port(url, link.port),
            "KODIFY_JOURNAL_RETRY_INTERVAL": "0.5",
            "RUN_MIGRATIONS": "1",
            "KODIFY_JOURNAL_BODIES": "false",
            "KODIFY_EVENT_MAX_BYTES": "4096",
        }
        server = kodify_proxy(tmp_path_factory.mktemp("dev-data"), upstreams_yaml(upstream.url), env=env)
        server.start()
        try:
            yield DevDataProxy(server, url, tokens, link)
        finally:
            server.stop()
            link.stop()


def post(proxy: DevDataProxy, body: Any, user: str | None = "alice", path: str = "/v1/dev-data") -> httpx.Response:
    """A POST as Continue's log.ts makes it: JSON, the user's token as Bearer."""
    headers = {"Content-Type": "application/json"}
    if user is not None:
        headers["Authorization"] = f"Bearer {proxy.tokens.get(user, user)}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(proxy.server.url + path, content=content, headers=headers, timeout=30)


def rows_by_completion(proxy: DevDataProxy, *completion_ids: str, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """The journal's rows by completion id, once it holds those named (the writer stores them within a second)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {row["completion_id"]: row for row in journal_rows(proxy.journal) if row["completion_id"]}
        if set(completion_ids) <= set(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


COLUMNS = (
    "user_id",
    "route",
    "status",
    "event_type",
    "event_schema",
    "model",
    "language",
    "suggestion",
    "shown",
    "accepted",
    "aborted",
    "response_id",
    "client",
    "client_version",
    "request_body",
)


def test_events_are_stored_for_the_user_whose_token_sent_them(dev_proxy: DevDataProxy) -> None:
    alice = continue_bodies([autocomplete("a-1", True), autocomplete("a-2", False), next_edit("a-3", "accept")])
    bob = continue_bodies([autocomplete("b-1", False, "/home/bob/web/app.tsx"), next_edit("b-2", "abort")])
    for user, bodies in (("alice", alice), ("bob", bob)):
        for body in bodies:
            response = post(dev_proxy, body, user)
            assert (response.status_code, response.content) == (200, b""), response.text
            assert response.headers["x-litellm-call-id"]
    rows = rows_by_completion(dev_proxy, "a-1", "a-2", "a-3", "b-1", "b-2")
    got = {cid: tuple(rows[cid][name] for name in COLUMNS) for cid in ("a-1", "a-2", "a-3", "b-1", "b-2")}
    auto, edit, response_id = (
        ("autocomplete", "0.2.0", "fake-model"),
        ("nextEditOutcome", "0.2.0", "fake-model"),
        "chatcmpl-next-1",
    )
    client = ("Continue", "1.0.5", None)  # bodies off: no request_body
    assert got == {
        "a-1": ("alice", "/v1/dev-data", 200, *auto, "python", "autocomplete", True, True, None, None, *client),
        "a-2": ("alice", "/v1/dev-data", 200, *auto, "python", "autocomplete", True, False, None, None, *client),
        "a-3": ("alice", "/v1/dev-data", 200, *edit, None, "next_edit", True, True, False, response_id, *client),
        "b-1": ("bob", "/v1/dev-data", 200, *auto, "typescript", "autocomplete", True, False, None, None, *client),
        "b-2": ("bob", "/v1/dev-data", 200, *edit, None, "next_edit", False, False, True, response_id, *client),
    }
    kept = json.loads(rows["a-1"]["event_data"])
    assert kept["completionId"] == "a-1" and kept["accepted"] is True and "prefix" not in kept


def test_any_event_name_and_schema_is_kept_and_the_path_without_v1_too(dev_proxy: DevDataProxy) -> None:
    future = {"name": "someFutureEvent", "data": {"completionId": "f-1", "extra": [1, 2]}, "schema": "9.1.0"}
    (tokens,) = continue_bodies(
        [{"kind": "tokensGenerated", "model": "fake-model", "promptTokens": 3, "generatedTokens": 5}],
        {"schema": "0.1.0"},  # 0.1.0 has no base fields: no userAgent
    )
    tokens["data"]["completionId"] = "t-1"  # only to find the row
    assert post(dev_proxy, future, "bob", "/dev-data").status_code == 200
    assert post(dev_proxy, tokens, "bob").status_code == 200
    rows = rows_by_completion(dev_proxy, "f-1", "t-1")
    assert tuple(rows["f-1"][name] for name in ("route", "event_type", "event_schema", "suggestion", "client")) == (
        "/dev-data",
        "someFutureEvent",
        "9.1.0",
        None,
        "Continue",
    )
    assert json.loads(rows["f-1"]["event_data"]) == future["data"]
    assert tuple(rows["t-1"][name] for name in ("event_type", "event_schema", "model", "client_version")) == (
        "tokensGenerated",
        "0.1.0",
        "fake-model",
        None,
    )


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b'{"name": "autocomplete", "data": {', "request_body", "not valid JSON"),
        (b"[]", "request_body", "must be a JSON object"),
        ({"data": {}, "schema": "0.2.0"}, "name", "Field required"),
        ({"name": "autocomplete", "data": [], "schema": "0.2.0"}, "data", "valid dictionary"),
        ({"name": "autocomplete", "data": {}}, "schema", "Field required"),
        ({"name": "", "data": {}, "schema": "0.2.0"}, "name", "at least 1 character"),
        ({"name": "autocomplete", "data": {}, "schema": 2}, "schema", "valid string"),
    ],
)
def test_a_malformed_event_is_a_400_naming_the_field(
    dev_proxy: DevDataProxy, body: Any, param: str, words: str
) -> None:
    error = assert_ours(post(dev_proxy, body), 400)
    assert error["param"] == param and words in error["message"], error


def test_an_event_over_its_bound_is_a_413(dev_proxy: DevDataProxy) -> None:
    body = {"name": "autocomplete", "data": {"prefix": "x" * 5000}, "schema": "0.2.0"}
    error = assert_ours(post(dev_proxy, body), 413)
    assert "larger than 4096 bytes (KODIFY_EVENT_MAX_BYTES)" in error["message"]


@pytest.mark.parametrize(("user", "words"), [(None, "Missing API key"), ("sk-kodify-" + "x" * 43, "no user has this")])
def test_without_a_users_token_an_event_is_a_401(dev_proxy: DevDataProxy, user: str | None, words: str) -> None:
    (body,) = continue_bodies([autocomplete("u-1", True)])
    error = assert_ours(post(dev_proxy, body, user), 401, "invalid_api_key")
    assert words in error["message"]


def test_tabby_events_name_their_client_and_count_the_same_way(dev_proxy: DevDataProxy) -> None:
    headers = {
        "Authorization": f"Bearer {dev_proxy.tokens['bob']}",
        "User-Agent": "Node.js/v20.20.2 tabby-agent/1.9.0-dev probe-ide/0.1.0 probe-plugin/0.0.1",
    }
    for kind in ("view", "select", "dismiss"):
        event = {"type": kind, "completion_id": f"tabby-{kind}", "choice_index": 0}
        response = httpx.post(dev_proxy.server.url + "/v1/events", json=event, headers=headers, timeout=30)
        assert response.status_code == 200
    rows = rows_by_completion(dev_proxy, "tabby-view", "tabby-select", "tabby-dismiss")
    got = {kind: tuple(rows[f"tabby-{kind}"][name] for name in COLUMNS[7:14]) for kind in ("view", "select", "dismiss")}
    assert got == {
        "view": ("autocomplete", True, False, None, None, "Tabby", "1.9.0-dev"),
        "select": ("autocomplete", False, True, None, None, "Tabby", "1.9.0-dev"),
        "dismiss": (None, None, None, None, None, "Tabby", "1.9.0-dev"),
    }
    assert not [row for row in journal_rows(dev_proxy.journal) if row["status"] >= 500]


def test_events_sent_while_the_journal_database_is_down_are_stored_once_it_is_back(dev_proxy: DevDataProxy) -> None:
    bodies = continue_bodies([autocomplete(f"outage-{n}", n % 2 == 0) for n in range(6)])
    dev_proxy.journal_link.stop()
    try:
        for body in bodies:
            assert post(dev_proxy, body, "bob").status_code == 200  # answered at once: the spool holds them
        deadline = time.monotonic() + 20
        while "Journal database unavailable" not in dev_proxy.server.log_text():  # the writer tried, and failed
            assert time.monotonic() < deadline, dev_proxy.server.log_text()[-3000:]
            time.sleep(0.2)
        assert not {"outage-0", "outage-5"} & set(rows_by_completion(dev_proxy, timeout=0))
    finally:
        dev_proxy.journal_link.start()
    ids = [f"outage-{n}" for n in range(6)]
    rows = rows_by_completion(dev_proxy, *ids, timeout=60)
    assert [(rows[cid]["user_id"], rows[cid]["accepted"]) for cid in ids] == [("bob", n % 2 == 0) for n in range(6)]
