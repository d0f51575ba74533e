"""Streamed FIM completions cut by kodify-proxy: the pure SSE cutter, and the `openai` SDK against a real proxy
process and the fake upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from kodify_proxy.fim.post import StreamCut
from kodify_proxy.fim.stream import SseCutter
from tests.servers import Server, kodify_proxy, upstreams_yaml

# The 5th and 6th stop strings go past the upstream's 4 (qwen.json: upstream_stop_limit 4).
CLIENT_STOP = ["<A>", "<B>", "<C>", "<D>", "<STOP5>", "<STOP6>"]


@pytest.fixture(scope="module")
def stream_proxy(session_tmp: Path, upstream: Server) -> Iterator[Server]:
    """Dummy auth, COMPLETIONS_PREPROCESSING_CONFIG=preprocess_configs/qwen.json."""
    env = {"COMPLETIONS_PREPROCESSING_CONFIG": "preprocess_configs/qwen.json"}
    server = kodify_proxy(session_tmp, upstreams_yaml(upstream.url), env=env, name="fim-stream-proxy").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(stream_proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=stream_proxy.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def _stream(
    client: openai.OpenAI, pieces: list[str], prompt: str = "x = ", suffix: str = "\n", n: int = 1
) -> tuple[list[str], list[str | None], int]:
    """Each choice's assembled text and last finish_reason, and how many chunks came."""
    stream = client.completions.create(
        model="fake-model",
        prompt=f"# REPLY:{json.dumps(pieces)}\n{prompt}",
        suffix=suffix,
        max_tokens=32,
        temperature=0,
        stop=CLIENT_STOP,
        stream=True,
        n=n,
    )
    texts: list[str] = [""] * n
    finish: list[str | None] = [None] * n
    count = 0
    for chunk in stream:
        count += 1
        for choice in chunk.choices:
            texts[choice.index] += choice.text or ""
            finish[choice.index] = choice.finish_reason or finish[choice.index]
    return texts, finish, count


@pytest.mark.parametrize(
    ("pieces", "text"),
    [
        (["a = 1", "<ST", "OP5>", "junk"], "a = 1"),  # the 5th stop, split across chunks
        (["b", "(2)<S", "TOP6>c"], "b(2)"),  # the 6th
        (["c()", "<|endo", "ftext|>", "more"], "c()"),  # a special token split across chunks
        (["<|fim_", "middle|>d()", "<|file_sep|>x"], "d()"),  # a leading special token is dropped
        (["e", "\n\n", "f"], "e"),  # the config's "\n\n", 7th after the client's six
        (["<STOP5>", "g"], ""),  # a stop at the very start
    ],
)
def test_stream_cut_at_stops_and_special_tokens(client: openai.OpenAI, pieces: list[str], text: str) -> None:
    texts, finish, _ = _stream(client, pieces)
    assert texts == [text] and finish == ["stop"]


def test_stream_without_a_match_is_unchanged(client: openai.OpenAI) -> None:
    pieces = ["def f", "(x):", " <S", "TOP", " ret", "urn x <|", "fim x"]
    texts, finish, count = _stream(client, pieces)
    assert texts == ["".join(pieces)] and finish == ["length"]
    assert count >= 5  # passed on chunk by chunk, not buffered


def test_stream_crlf_round_trip(client: openai.OpenAI) -> None:
    texts, finish, _ = _stream(client, ["b()\r", "\n    c()", "<STOP6>"], prompt="if a:\r\n    ", suffix="\r\n")
    assert texts == ["b()\r\n    c()"] and finish == ["stop"]


def test_stream_one_line_when_the_cursor_line_goes_on(client: openai.OpenAI) -> None:
    texts, _, _ = _stream(client, ["a, ", "b\nc = 1"], prompt="print(", suffix=")\n")
    assert texts == ["a, b"]


def test_stream_plain_prompt_is_not_touched(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="fake-model", prompt=f"REPLY:{json.dumps(['a<|endo', 'ftext|>b'])}", max_tokens=8, stream=True
    )
    assert "".join(choice.text or "" for chunk in stream for choice in chunk.choices) == "a<|endoftext|>b"


# --- the pure SSE cutter (kodify_proxy/fim_stream.py) ---


def _event(text: str | None, finish: str | None = None, index: int = 0) -> bytes:
    choice: dict[str, object] = {"index": index, "finish_reason": finish}
    if text is not None:
        choice["text"] = text
    return b"data: " + json.dumps({"id": "c", "choices": [choice]}).encode() + b"\n\n"


def _texts(output: bytes) -> list[tuple[str, str | None]]:
    events = [e for e in output.split(b"\n\n") if e.startswith(b"data: {")]
    return [(c.get("text", ""), c["finish_reason"]) for e in events for c in json.loads(e[len(b"data: ") :])["choices"]]


def test_sse_cutter_cuts_a_stop_split_across_events_and_network_reads() -> None:
    stream = _event("ret") + _event("urn 1<ST") + _event("OP5> more") + _event(None, "length") + b"data: [DONE]\n\n"
    cutter = SseCutter(lambda: StreamCut(("<STOP5>",)))
    reads = [stream[i : i + 7] for i in range(0, len(stream), 7)]  # events split at arbitrary byte offsets
    output = b"".join(cutter.feed(r, final=i == len(reads) - 1) for i, r in enumerate(reads))
    assert "".join(t for t, _ in _texts(output)) == "return 1"
    assert _texts(output)[-1][1] == "stop"
    assert output.endswith(b"data: [DONE]\n\n")


def test_sse_cutter_passes_an_unmatched_stream_and_holds_only_a_possible_start() -> None:
    cutter = SseCutter(lambda: StreamCut(("<STOP5>",)))
    assert _texts(cutter.feed(_event("x = 1"), final=False)) == [("x = 1", None)]
    assert _texts(cutter.feed(_event(" <ST"), final=False)) == [(" ", None)]  # "<ST" may start "<STOP5>"
    tail = cutter.feed(_event("OP"), final=False) + cutter.feed(_event(None, "length"), final=True)
    assert _texts(tail) == [("<STOP", "length")]


def test_sse_cutter_leaves_usage_done_and_comments_alone() -> None:
    usage = b'data: {"id":"c","choices":[],"usage":{"total_tokens":3}}\n\n'
    cutter = SseCutter(lambda: StreamCut(("<STOP5>",)))
    assert cutter.feed(b": keep-alive\n\n" + usage + b"data: [DONE]\n\n", final=True) == (
        b": keep-alive\n\n" + usage + b"data: [DONE]\n\n"
    )
