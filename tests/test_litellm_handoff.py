"""LiteLLM's errors made ours: vLLM's own message dug out of LiteLLM's text, timeouts, refusals, the rest cleaned."""

from __future__ import annotations

import pytest

from kodify_proxy.errors import UpstreamFailed, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from kodify_proxy.litellm_handoff import classify, error_fields, upstream_rejection
from kodify_proxy.settings import load_settings
from kodify_proxy.upstream_monitor import UpstreamMonitor
from kodify_proxy.upstreams import UpstreamState, parse_config

VLLM_JSON = (
    'litellm.BadRequestError: Hosted_vllmException - {"error":{"message":"n must be 1 when using greedy '
    'sampling, got 2.","type":"BadRequestError","param":null,"code":400}}'
)
VLLM_REPR = (
    "litellm.BadRequestError: OpenAIException - Error code: 400 - {'error': {'message': 'max_tokens=9 cannot "
    "be greater than max_model_len=5. (parameter=max_tokens, value=9)', 'type': 'BadRequestError', "
    "'param': None, 'code': 400}}"
)


def monitor() -> UpstreamMonitor:
    config = parse_config("upstreams:\n  http://vllm:8000:\n", __import__("pathlib").Path("config.yml"))
    state = UpstreamState(config.upstreams[0], healthy=True, models=("m",))
    return UpstreamMonitor(config, load_settings({"KODIFY_REQUEST_TIMEOUT": "7"}), [state])


@pytest.mark.parametrize(
    ("message", "expected_message", "param"),
    [
        (VLLM_JSON, "n must be 1 when using greedy sampling, got 2.", None),
        (
            VLLM_REPR,
            "max_tokens=9 cannot be greater than max_model_len=5. (parameter=max_tokens, value=9)",
            "max_tokens",
        ),
    ],
)
def test_upstream_rejection_keeps_vllms_message(message: str, expected_message: str, param: str | None) -> None:
    rejected = upstream_rejection(400, message)
    assert rejected is not None
    assert (rejected.message, rejected.status_code, rejected.param) == (expected_message, 400, param)
    assert rejected.to_body()["error"]["type"] == "invalid_request_error"


def test_upstream_rejection_ignores_server_errors_and_plain_text() -> None:
    assert upstream_rejection(500, VLLM_JSON) is None
    assert upstream_rejection(400, "no body here") is None


@pytest.mark.parametrize(
    ("status", "message", "kind", "fragment"),
    [
        (400, VLLM_JSON, UpstreamRejected, "n must be 1"),
        (408, "litellm.Timeout: Connection timed out after 7.0 seconds.", UpstreamTimeout, "within 7 s"),
        (500, "litellm.InternalServerError: OpenAIException - Connection error.", UpstreamFailed, "refused"),
        (429, "No deployments available for selected model", UpstreamUnavailable, "is failing"),
        (
            500,
            "litellm.APIConnectionError: Hosted_vllmException - 'str' object has no attribute 'get'\n"
            "Received Model Group=m\nAvailable Model Group Fallbacks=None",
            UpstreamRejected,
            "'str' object has no attribute 'get'",
        ),
    ],
)
def test_classify(status: int, message: str, kind: type, fragment: str) -> None:
    error = classify(status, message, None, "m", monitor())
    assert isinstance(error, kind) and fragment in error.message
    assert "litellm." not in error.message and "Received Model Group" not in error.message
    if kind in (UpstreamTimeout, UpstreamFailed, UpstreamUnavailable):
        assert "http://vllm:8000" in error.message


def test_an_unclassified_error_keeps_its_status_with_a_real_type() -> None:
    error = classify(500, "litellm.InternalServerError: something odd", None, "m", monitor())
    assert error.to_body()["error"] == {
        "message": "something odd",
        "type": "internal_server_error",
        "param": None,
        "code": "500",
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": {"message": "x", "type": "None", "param": "n", "code": "400"}}', ("x", "n", 400)),
        (b'{"detail": "Not Found"}', ("Not Found", None, None)),
        (b"Internal Server Error", ("Internal Server Error", None, None)),
        (b'{"error": {"message": "y", "code": null}}', ("y", None, None)),
    ],
)
def test_error_fields(body: bytes, expected: tuple[str, str | None, int | None]) -> None:
    assert error_fields(body) == expected
