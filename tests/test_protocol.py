"""Pure: what the lane reads of an OpenAI body (lane_fields): only what it routes and counts by, read as vLLM reads
it; every other field is vLLM's to judge."""

from __future__ import annotations

from typing import Any

import pytest

from kodify_proxy.errors import InvalidRequest
from kodify_proxy.protocol import LaneFields, lane_fields

CHAT = {"model": "m", "messages": []}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, LaneFields("m", None, False, False)),
        ({"n": 2, "stream": True}, LaneFields("m", 2, True, False)),
        ({"n": "3", "stream": "yes"}, LaneFields("m", 3, True, False)),  # vLLM's pydantic models are lax
        ({"n": 4.0, "stream": 1}, LaneFields("m", 4, True, False)),
        ({"n": [None], "stream": -1}, LaneFields("m", None, False, False)),  # vLLM refuses these itself
        ({"stream": True, "stream_options": {"include_usage": "true"}}, LaneFields("m", None, True, True)),
        ({"max_tokens": "abc", "temperature": -1, "seed": 2**70}, LaneFields("m", None, False, False)),
    ],
)
def test_the_fields_the_lane_reads(extra: dict[str, Any], expected: LaneFields) -> None:
    assert lane_fields({**CHAT, **extra}, max_n=4) == expected


@pytest.mark.parametrize("n", [5, "5", 5.0, 1e30, 0, -1])
def test_n_outside_max_n_is_ours_to_refuse_however_it_is_spelled(n: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        lane_fields({**CHAT, "n": n}, max_n=4)
    assert caught.value.param == "n" and "(MAX_N=4)" in caught.value.message


@pytest.mark.parametrize(("model", "shown"), [(None, ""), (7, ", got 7"), (["m"], ", got ['m']")])
def test_a_model_that_is_not_a_name_is_ours_to_refuse(model: Any, shown: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        lane_fields({"model": model} if model is not None else {})
    assert caught.value.param == "model"
    assert caught.value.message == f"Invalid value for 'model': send the name of a served model (GET /v1/models){shown}"


def test_stream_options_asked_of_vllm_only_when_the_client_did_not_ask() -> None:
    asked = lane_fields({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert asked.stream_options({}) is None
    assert lane_fields(CHAT).stream_options({}) is None  # not a stream: vLLM reports usage in the answer
    quiet = lane_fields({**CHAT, "stream": True, "stream_options": {"continuous_usage_stats": True}})
    assert quiet.stream_options({"stream_options": {"continuous_usage_stats": True, "x": 1}}) == {
        "continuous_usage_stats": False,  # usage in every chunk is more than the client asked for
        "x": 1,
        "include_usage": True,
    }
