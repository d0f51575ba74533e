"""Pure: what the lane's relay does to each event of a vLLM stream (StreamPlan), exact bytes in and out."""

from __future__ import annotations

from datetime import UTC, datetime

from kodify_proxy.exchange import Exchange
from kodify_proxy.lane.relay import StreamPlan, with_fingerprint

# vLLM 0.32's own chat stream with include_usage asked by us: the fingerprint moved to the usage chunk.
ROLE = b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
TOKEN = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
FINISH = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"length"}]}\n\n'
USAGE = (
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":13,"total_tokens":17,"completion_tokens":4},'
    b'"system_fingerprint":"vllm-0.32.0"}\n\n'
)
DONE = b"data: [DONE]\n\n"
# What vLLM sends when nobody asked for usage: the fingerprint on the finishing chunk, last.
FINISH_WITHOUT_USAGE = (
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"length"}],'
    b'"system_fingerprint":"vllm-0.32.0"}\n\n'
)


def exchange() -> Exchange:
    return Exchange("r", "POST", "/v1/chat/completions", "/v1/chat/completions", datetime.now(UTC), 0.0)


def run(plan: StreamPlan, events: list[bytes]) -> bytes:
    return b"".join(plan.event(event) for event in events) + plan.flush()


def test_usage_the_client_did_not_ask_for_leaves_vllms_stream_as_it_would_have_been() -> None:
    seen = exchange()
    out = run(StreamPlan(seen, drop_usage=True), [ROLE, TOKEN, FINISH, USAGE, DONE])
    assert out == ROLE + TOKEN + FINISH_WITHOUT_USAGE + DONE
    assert (seen.prompt_tokens, seen.completion_tokens) == (13, 4)


def test_usage_the_client_asked_for_is_passed_on_untouched_and_counted() -> None:
    seen = exchange()
    events = [ROLE, TOKEN, FINISH, USAGE, DONE]
    assert run(StreamPlan(seen), events) == b"".join(events)
    assert (seen.prompt_tokens, seen.completion_tokens) == (13, 4)


def test_a_stream_that_ends_without_its_usage_chunk_still_gets_its_finishing_chunk() -> None:
    seen = exchange()
    assert run(StreamPlan(seen, drop_usage=True), [ROLE, FINISH]) == ROLE + FINISH
    assert seen.completion_tokens is None


def test_the_fingerprint_is_spliced_in_last_and_only_once() -> None:
    assert with_fingerprint(FINISH, "vllm-0.32.0") == FINISH_WITHOUT_USAGE
    assert with_fingerprint(FINISH_WITHOUT_USAGE, "other") == FINISH_WITHOUT_USAGE
    assert with_fingerprint(DONE, "x") == DONE
    assert with_fingerprint(FINISH, 'a"b') == FINISH[:-3] + b',"system_fingerprint":"a\\"b"}\n\n'
