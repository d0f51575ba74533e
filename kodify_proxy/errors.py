"""One error tree for kodify-proxy and its one mapping to OpenAI-shaped error bodies."""

from __future__ import annotations

from typing import Any


class KodifyError(Exception):
    """A problem reported to a client: the HTTP status, OpenAI error type, param and message."""

    status_code = 500
    error_type = "internal_server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else str(self.status_code)

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error body: `{"error": {"message", "type", "param", "code"}}`."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class InvalidRequest(KodifyError):
    """The request body is malformed or a field has a wrong value (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class ModelNotFound(KodifyError):
    """The requested model is served by no upstream (404)."""

    status_code = 404
    error_type = "not_found_error"


class UpstreamFailed(KodifyError):
    """An upstream answered with a broken response or refused the connection (502)."""

    status_code = 502
    error_type = "upstream_error"


class UpstreamUnavailable(KodifyError):
    """No upstream serving the model is reachable right now (503)."""

    status_code = 503
    error_type = "service_unavailable"


class UpstreamTimeout(KodifyError):
    """The upstream did not answer within the request timeout (504)."""

    status_code = 504
    error_type = "timeout_error"


_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "auth_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class UpstreamRejected(KodifyError):
    """The upstream refused the request itself (its 4xx), passed on with its own message and status."""

    def __init__(self, message: str, *, status_code: int, param: str | None = None) -> None:
        self.status_code = status_code
        self.error_type = _TYPE_BY_STATUS.get(status_code, "invalid_request_error")
        super().__init__(message, param=param)
