"""Pure row building: what the gateway saw plus LiteLLM's event -> exactly this journal row."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from kodify_proxy.exchange import Exchange
from kodify_proxy.journal.record import BodyPolicy, JournalRow, build_row, clip, sse_error

STARTED = datetime(2025, 11, 27, 8, 0, tzinfo=UTC)
CHAT = b'{"model":"m","n":2,"messages":[{"role":"user","content":"hi"}]}'
ERROR_400 = b'{"error":{"message":"n=9 is out of range","type":"invalid_request_error","param":"n","code":"400"}}'
SSE = (
    b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}\n\ndata: [DONE]\n\n'
)


def exchange(**changes: object) -> Exchange:
    values: dict[str, object] = {
        "request_id": "rid-1",
        "method": "POST",
        "route": "/v1/chat/completions",
        "path": "/v1/chat/completions",
        "started_at": STARTED,
        "t0": 10.0,
        "request_body": CHAT,
        "model": "m",
        "n": 2,
        "status": 200,
        "content_type": "application/json",
        "response_body": bytearray(b'{"ok":true}'),
        "response_bytes": 11,
        "ended_at": 10.25,
        "completed": True,
    }
    values.update(changes)
    return Exchange(**values)  # type: ignore[arg-type]


def test_a_plain_success_row() -> None:
    done = exchange(user_id="alice", key_alias="laptop", upstream="http://u:8000", prompt_tokens=5, completion_tokens=3)
    row = build_row(done, BodyPolicy())
    assert row == JournalRow(
        request_id="rid-1",
        started_at=STARTED,
        user_id="alice",
        key_alias="laptop",
        method="POST",
        route="/v1/chat/completions",
        model="m",
        upstream="http://u:8000",
        status=200,
        error_type=None,
        error_message=None,
        stream=False,
        latency_ms=250.0,
        ttft_ms=None,
        prompt_tokens=5,
        completion_tokens=3,
        n=2,
        request_bytes=len(CHAT),
        request_body=CHAT.decode(),
        request_body_truncated=False,
        response_bytes=11,
        response_body='{"ok":true}',
        response_body_truncated=False,
    )


def test_a_rejection_keeps_the_error_the_client_saw() -> None:
    row = build_row(
        exchange(status=400, response_body=bytearray(ERROR_400), response_bytes=len(ERROR_400)), BodyPolicy()
    )
    assert (row.status, row.error_type, row.error_message) == (400, "invalid_request_error", "n=9 is out of range")


def test_an_error_body_that_is_not_json_is_named_by_status_or_exception() -> None:
    plain = build_row(exchange(status=502, response_body=bytearray(b"Bad Gateway"), response_bytes=11), BodyPolicy())
    assert (plain.error_type, plain.error_message) == ("http_502", None)
    named = build_row(
        exchange(
            status=500,
            response_body=bytearray(b"oops"),
            response_bytes=4,
            error_class="APIConnectionError",
        ),
        BodyPolicy(),
    )
    assert named.error_type == "APIConnectionError"


def test_a_stream_is_stored_once_assembled_with_time_to_first_token() -> None:
    assembled = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}}]}
    row = build_row(
        exchange(
            content_type="text/event-stream; charset=utf-8",
            response_body=bytearray(SSE),
            response_bytes=len(SSE),
            first_byte_at=10.05,
            assembled_response=assembled,
        ),
        BodyPolicy(),
    )
    assert (row.stream, row.ttft_ms, row.latency_ms) == (True, 50.0, 250.0)
    assert row.response_body is not None and json.loads(row.response_body) == assembled
    assert row.response_bytes == len(SSE)


def test_a_stream_without_an_assembled_response_keeps_the_raw_events() -> None:
    row = build_row(
        exchange(
            content_type="text/event-stream", response_body=bytearray(SSE), response_bytes=len(SSE), first_byte_at=10.01
        ),
        BodyPolicy(),
    )
    assert row.response_body == SSE.decode()


def test_an_error_event_inside_a_stream_is_the_error_type() -> None:
    body = b'data: {"choices":[]}\n\ndata: {"error":{"message":"upstream broke","type":"upstream_error"}}\n\n'
    row = build_row(
        exchange(content_type="text/event-stream", response_body=bytearray(body), response_bytes=len(body)),
        BodyPolicy(),
    )
    assert (row.status, row.error_type, row.error_message) == (200, "upstream_error", "upstream broke")


@pytest.mark.parametrize(
    ("changes", "status", "error_type", "message"),
    [
        (
            {"disconnected": True, "completed": False, "response_bytes": 120},
            499,
            "client_disconnected",
            "the client closed the connection after 120 bytes of the response",
        ),
        ({"disconnected": True, "completed": True}, 200, None, None),  # left after the last byte: a success
        (
            {"status": None, "completed": False, "response_bytes": 0},
            500,
            "internal_error",
            "the server sent no response (an internal error; see the server log)",
        ),
        (
            {"completed": False, "response_bytes": 7},
            200,
            "incomplete_response",
            "the response was cut off after 7 bytes",
        ),
    ],
)
def test_cut_off_exchanges(
    changes: dict[str, object], status: int, error_type: str | None, message: str | None
) -> None:
    row = build_row(exchange(**changes), BodyPolicy())
    assert (row.status, row.error_type, row.error_message) == (status, error_type, message)


def test_metadata_only_keeps_no_body_but_still_has_model_and_n() -> None:
    row = build_row(exchange(), BodyPolicy(keep=False))
    assert (row.request_body, row.response_body, row.model, row.n) == (None, None, "m", 2)
    assert (row.request_bytes, row.response_bytes) == (len(CHAT), 11)
    assert (row.request_body_truncated, row.response_body_truncated) == (False, False)


def test_bodies_over_the_cap_are_cut_and_marked() -> None:
    row = build_row(exchange(), BodyPolicy(max_bytes=10))
    assert (row.request_body, row.request_body_truncated) == (CHAT[:10].decode(), True)
    assert (row.response_body, row.response_body_truncated) == ('{"ok":true', True)
    assert row.request_bytes == len(CHAT)


@pytest.mark.parametrize(
    ("data", "total", "cap", "expected"),
    [
        (b"abc", 3, 3, ("abc", False)),
        (b"abcdef", 6, 4, ("abcd", True)),
        ("Привет".encode(), 12, 5, ("Пр", True)),  # a split two-byte character is dropped, not garbled
        (b"abc", 10_000, 3, ("abc", True)),  # held 3 of 10000 bytes
    ],
)
def test_clip(data: bytes, total: int, cap: int, expected: tuple[str, bool]) -> None:
    assert clip(data, total, cap) == expected


def test_nul_characters_are_replaced_for_postgresql() -> None:
    escaped = build_row(exchange(model="m\x00"), BodyPolicy())
    assert escaped.model == "m\ufffd"
    raw = build_row(exchange(request_body=b"\x00abc"), BodyPolicy())
    assert raw.request_body == "\ufffdabc"


@pytest.mark.parametrize(("n", "stored"), [(2**40, 2**31 - 1), (-(2**40), -(2**31)), (3, 3), (None, None)])
def test_a_count_that_does_not_fit_its_column_is_clamped(n: int | None, stored: int | None) -> None:
    assert build_row(exchange(n=n), BodyPolicy()).n == stored


def test_sse_error_ignores_streams_without_one() -> None:
    assert sse_error(SSE) is None


def test_ready_waits_for_the_success_event_of_a_2xx_and_any_event_of_an_error() -> None:
    assert exchange().ready()  # served by us: nothing to wait for
    done = exchange(awaiting_litellm=True)
    assert not done.ready()
    done.saw_failure = True
    assert not done.ready()  # a retried call can fail first and then succeed: wait for the success
    done.saw_success = True
    assert done.ready()
    failed = exchange(status=400, awaiting_litellm=True)
    failed.saw_failure = True
    assert failed.ready()
    assert not exchange(ended_at=None).ready()


def test_an_error_we_sent_is_taken_as_is() -> None:
    sent = exchange(status=503, response_body=bytearray(b"{}"))
    sent.took_error("service_unavailable", "No upstream serving 'm' is reachable")
    row = build_row(sent, BodyPolicy())
    assert (row.error_type, row.error_message) == ("service_unavailable", "No upstream serving 'm' is reachable")


def test_values_longer_than_their_column_are_cut_to_fit() -> None:
    row = build_row(exchange(path="/v1/" + "p" * 600, model="m" * 300), BodyPolicy())
    assert (len(row.route), row.model) == (512, "m" * 255)
