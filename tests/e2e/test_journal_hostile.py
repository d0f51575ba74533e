"""Nothing lost, whatever a client sends: lone surrogates (JSON `\\udXXX` escapes) in a model name and in a Tabby
event, sent beside ordinary requests to kodify-proxy with the journal on in front of the real vLLM server."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.e2e.conftest import SERVED_MODEL
from tests.journal_support import journal_rows
from tests.servers import Server

# Raw JSON, so the escapes reach the server as a client wrote them (json.dumps would refuse nothing, but httpx's
# json= would encode the surrogate as invalid UTF-8 bytes instead).
HOSTILE = {
    "/v1/chat/completions": b'{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}',
    "/v1/completions": b'{"model": "tiny\\ud800", "prompt": "x", "max_tokens": 2}',
    "/v1/events": b'{"type": "view", "completion_id": "\\ud800", "choice_index": 0, "view_id": "\\udc00v"}',
}
ORDINARY = b'{"model": "%s", "prompt": "def f", "max_tokens": 2, "temperature": 0}' % SERVED_MODEL.encode()


def test_hostile_text_costs_no_row_its_own_or_anyone_elses(vllm_proxy: Server, journal_url: str) -> None:
    sends = [*HOSTILE.items(), *[("/v1/completions", ORDINARY)] * 10]
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=vllm_proxy.url, timeout=60, headers=headers) as client, ThreadPoolExecutor(13) as pool:
        responses = list(pool.map(lambda sent: client.post(sent[0], content=sent[1]), sends))
    statuses = {response.request.content: response.status_code for response in responses}
    assert statuses == {**dict(zip(HOSTILE.values(), (404, 404, 200), strict=True)), ORDINARY: 200}
    # The model is named as repr() spells it: the escape, not the lone surrogate (which no encoder takes).
    assert responses[0].json()["error"]["message"].startswith("The model '\\udfff' does not exist")
    sent = {response.headers["x-litellm-call-id"]: response.status_code for response in responses}
    assert len(sent) == 13
    deadline = time.monotonic() + 30
    rows = journal_rows(journal_url)
    while not sent.keys() <= {row["request_id"] for row in rows} and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = journal_rows(journal_url)
    stored = {row["request_id"]: row for row in rows if row["request_id"] in sent}
    assert {rid: row["status"] for rid, row in stored.items()} == sent  # rows in = rows out
    marked = sorted(
        (row["route"], row["model"], row["completion_id"]) for row in stored.values() if row["text_replaced"]
    )
    assert marked == [
        ("/v1/chat/completions", "\ufffd", None),
        ("/v1/completions", "tiny\ufffd", None),
        ("/v1/events", None, "\ufffd"),
    ]
    event = next(row for row in stored.values() if row["route"] == "/v1/events")
    assert (event["event_type"], event["view_id"]) == ("view", "\ufffdv")
