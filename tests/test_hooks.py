"""The hooks' pure parts: n limits, and turning LiteLLM's wrapped upstream failures into clear errors."""

from __future__ import annotations

import httpx
import litellm
import pytest

from kodify_proxy.errors import InvalidRequest
from kodify_proxy.hooks import check_n, is_connection_failure, upstream_rejection


@pytest.mark.parametrize("n", [None, 1, 4])
def test_n_within_limit(n: int | None) -> None:
    check_n({"n": n}, 4)


@pytest.mark.parametrize(
    ("n", "fragment"), [(5, "n=5 is out of range"), (0, "n=0"), ("2", "got '2'"), (True, "got True"), (2.0, "got 2.0")]
)
def test_n_outside_limit_names_the_limit(n: object, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_n({"n": n}, 4)
    assert caught.value.param == "n" and fragment in caught.value.message and "4" in caught.value.message


VLLM_JSON = (
    'litellm.BadRequestError: Hosted_vllmException - {"error":{"message":"n must be 1 when using greedy '
    'sampling, got 2.","type":"BadRequestError","param":null,"code":400}}'
)
VLLM_REPR = (
    "litellm.BadRequestError: OpenAIException - Error code: 400 - {'error': {'message': 'max_tokens=9 cannot "
    "be greater than max_model_len=5. (parameter=max_tokens, value=9)', 'type': 'BadRequestError', "
    "'param': None, 'code': 400}}"
)


@pytest.mark.parametrize(
    ("message", "status", "expected_message", "param"),
    [
        (VLLM_JSON, 400, "n must be 1 when using greedy sampling, got 2.", None),
        (
            VLLM_REPR,
            400,
            "max_tokens=9 cannot be greater than max_model_len=5. (parameter=max_tokens, value=9)",
            "max_tokens",
        ),
    ],
)
def test_upstream_rejection_keeps_vllms_message(
    message: str, status: int, expected_message: str, param: str | None
) -> None:
    exc = litellm.BadRequestError(message=message, model="m", llm_provider="hosted_vllm")
    rejected = upstream_rejection(exc)
    assert rejected is not None
    assert (rejected.message, rejected.status_code, rejected.param) == (expected_message, status, param)
    assert rejected.to_body()["error"]["type"] == "invalid_request_error"


def test_upstream_rejection_ignores_server_errors_and_plain_text() -> None:
    assert upstream_rejection(litellm.InternalServerError(message=VLLM_JSON, model="m", llm_provider="x")) is None
    assert upstream_rejection(litellm.BadRequestError(message="no body here", model="m", llm_provider="x")) is None


def test_connection_failure_found_in_the_chain_not_by_litellm_label() -> None:
    refused = litellm.APIConnectionError(message="boom", llm_provider="x", model="m")
    refused.__cause__ = httpx.ConnectError("refused")
    assert is_connection_failure(refused)
    crash = litellm.APIConnectionError(message="'str' object has no attribute 'get'", llm_provider="x", model="m")
    crash.__cause__ = AttributeError("'str' object has no attribute 'get'")
    assert not is_connection_failure(crash)
    wrapped = litellm.InternalServerError(message="OpenAIException - Connection error.", llm_provider="x", model="m")
    assert is_connection_failure(wrapped)
