"""The one error tree: every class a client can meet, with its status, type and code (as datasette's
test_error_shape pins its own), and the body's shape."""

from __future__ import annotations

import json

import pytest

from kodify_proxy import errors
from kodify_proxy.errors import ERROR_CLASSES, KodifyError, UpstreamRejected, to_proxy_exception, type_for_status

TABLE = {
    errors.InvalidRequest: (400, "invalid_request_error", "400"),
    errors.Unauthorized: (401, "auth_error", "invalid_api_key"),
    errors.Forbidden: (403, "permission_error", "403"),
    errors.RouteNotFound: (404, "not_found_error", "route_not_found"),
    errors.ModelNotFound: (404, "not_found_error", "model_not_found"),
    errors.MethodNotAllowed: (405, "invalid_request_error", "method_not_allowed"),
    errors.RequestTimeout: (408, "timeout_error", "request_timeout"),
    errors.PayloadTooLarge: (413, "invalid_request_error", "413"),
    errors.UnsupportedMediaType: (400, "invalid_request_error", "unsupported_media_type"),
    errors.InternalError: (500, "internal_server_error", "500"),
    errors.UpstreamFailed: (502, "upstream_error", "502"),
    errors.UpstreamUnavailable: (503, "service_unavailable", "503"),
    errors.UiUnavailable: (503, "service_unavailable", "ui_needs_database"),
    errors.UpstreamTimeout: (504, "timeout_error", "504"),
}


def test_the_table_covers_every_class() -> None:
    assert set(TABLE) == set(ERROR_CLASSES)
    assert {cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, KodifyError)} == {
        KodifyError,
        UpstreamRejected,
        *ERROR_CLASSES,
    }


@pytest.mark.parametrize(("cls", "expected"), TABLE.items(), ids=[cls.__name__ for cls in TABLE])
def test_status_type_and_code(cls: type[KodifyError], expected: tuple[int, str, str]) -> None:
    error = cls("what went wrong and how to fix it", param="n")
    assert (error.status_code, error.error_type, error.code) == expected
    body = json.loads(error.render())
    assert body == {
        "error": {
            "message": "what went wrong and how to fix it",
            "type": expected[1],
            "param": "n",
            "code": expected[2],
        }
    }


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "auth_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (418, "invalid_request_error"),
        (500, "internal_server_error"),
        (502, "upstream_error"),
        (599, "internal_server_error"),
    ],
)
def test_someone_elses_error_keeps_its_status_with_our_type(status: int, kind: str) -> None:
    error = UpstreamRejected("vLLM said so", status_code=status)
    assert (error.status_code, error.error_type, error.code) == (status, kind, str(status))
    assert type_for_status(status) == kind


def test_a_param_is_a_string_or_null_and_headers_ride_along() -> None:
    assert json.loads(errors.InvalidRequest("x").render())["error"]["param"] is None
    assert errors.MethodNotAllowed("x", headers={"allow": "POST"}).headers == {"allow": "POST"}
    assert errors.RequestTimeout("x").headers == {"connection": "close"}  # uvicorn then closes the socket


def test_litellm_gets_the_same_error() -> None:
    exc = to_proxy_exception(errors.Unauthorized("no token"))
    assert (exc.message, exc.type, exc.code, exc.openai_code) == ("no token", "auth_error", "401", "invalid_api_key")
