"""Pure: the record of one request: the status the client saw, when it is final, and what the upstream's usage and
LiteLLM's log event add to it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kodify_proxy.exchange import (
    STATUS_CLIENT_CLOSED,
    Exchange,
    apply_log_event,
    note_usage,
    upstream_name,
    whole_number,
)
from kodify_proxy.upstreams import parse_config

UPSTREAMS = parse_config("upstreams:\n  http://a:8000:\n  http://b:8000/v1:\n", Path("config.yml")).upstreams


def _exchange() -> Exchange:
    return Exchange("r1", "POST", "/v1/chat/completions", "/v1/chat/completions", datetime.now(UTC), 0.0)


def test_the_final_status_is_what_the_client_saw() -> None:
    exchange = _exchange()
    assert exchange.final_status() == 500  # nothing was sent
    exchange.status = 200
    assert exchange.final_status() == 200
    exchange.disconnected = True
    assert exchange.final_status() == STATUS_CLIENT_CLOSED == 499  # left before the end
    exchange.completed = True
    assert exchange.final_status() == 200  # left after the last byte: it had its answer


def test_a_litellm_request_is_final_with_its_log_event() -> None:
    exchange = _exchange()
    assert not exchange.ready()
    exchange.ended_at = 1.0
    assert exchange.ready()  # the lane: once the response ended
    exchange.awaiting_litellm, exchange.status = True, 200
    assert not exchange.ready()
    exchange.saw_failure = True
    assert not exchange.ready()  # a 200 waits for the success event, which brings the tokens
    exchange.saw_success = True
    assert exchange.ready()
    failed = _exchange()
    failed.ended_at, failed.awaiting_litellm, failed.status, failed.saw_failure = 1.0, True, 502, True
    assert failed.ready()


@pytest.mark.parametrize(
    ("usage", "tokens"),
    [
        ({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}, (5, 7)),
        ({"prompt_tokens": True, "completion_tokens": 2.0}, (None, None)),  # not whole numbers
        ({"prompt_tokens": 3}, (3, None)),
        (None, (None, None)),
        ("5", (None, None)),
    ],
)
def test_note_usage(usage: object, tokens: tuple[int | None, int | None]) -> None:
    exchange = _exchange()
    note_usage(exchange, usage)
    assert (exchange.prompt_tokens, exchange.completion_tokens) == tokens


def test_whole_number() -> None:
    assert [whole_number(v) for v in (0, 10**30, -1, True, 1.0, "1", None)] == [0, 10**30, -1, None, None, None, None]


def test_upstream_name_is_the_config_url_litellm_called() -> None:
    assert upstream_name("http://a:8000/v1/chat/completions", UPSTREAMS) == "http://a:8000"
    assert upstream_name("http://b:8000/v1", UPSTREAMS) == "http://b:8000/v1"
    assert upstream_name("http://elsewhere/v1", UPSTREAMS) == "http://elsewhere/v1"
    assert upstream_name("", UPSTREAMS) is None and upstream_name(None, UPSTREAMS) is None


def test_litellm_log_events() -> None:
    exchange = _exchange()
    payload = {"api_base": "http://a:8000/v1", "prompt_tokens": 4, "completion_tokens": 9, "response": {"x": 1}}
    apply_log_event(exchange, payload, True, UPSTREAMS)
    assert (exchange.upstream, exchange.prompt_tokens, exchange.completion_tokens) == ("http://a:8000", 4, 9)
    assert exchange.assembled_response == {"x": 1} and exchange.saw_success and not exchange.saw_failure

    failed = _exchange()
    apply_log_event(failed, {"error_information": {"error_class": "Timeout"}}, False, UPSTREAMS)
    assert (failed.error_class, failed.saw_failure, failed.prompt_tokens) == ("Timeout", True, None)
