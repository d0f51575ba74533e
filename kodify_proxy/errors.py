"""One error tree for kodify-proxy and the only place that knows the OpenAI error shape.

Every failure a client sees is a `KodifyError` subclass carrying its HTTP status and `code`; the OpenAI `type`
follows from the status (`TYPE_BY_STATUS`).
`to_body` is the shape, `render` its bytes for our ASGI layer, `to_proxy_exception` the same for LiteLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from pydantic import ValidationError

if TYPE_CHECKING:
    from litellm.proxy._types import ProxyException

TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "auth_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    501: "not_implemented_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def type_for_status(status: int) -> str:
    """The OpenAI error type for an HTTP status (client errors default to invalid_request_error)."""
    return TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "internal_server_error")


class KodifyError(Exception):
    """A problem reported to a client: the HTTP status, OpenAI error type, param, code and message."""

    status_code: int = 500
    error_code: ClassVar[str | None] = None  # the body's `code`; None: the status as a string

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    @property
    def error_type(self) -> str:
        """The body's `type`, from the status (TYPE_BY_STATUS): one table, not one copy per class."""
        return type_for_status(self.status_code)

    @property
    def code(self) -> str:
        """The body's `code`: a stable string a client can test (OpenAI's where it has one)."""
        return self.error_code or str(self.status_code)

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error body: `{"error": {"message", "type", "param", "code"}}`."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def render(self) -> bytes:
        """The body as JSON bytes."""
        return orjson.dumps(self.to_body())


class InvalidRequest(KodifyError):
    """The request body is malformed or a field has a wrong value (400)."""

    status_code = 400


class Unauthorized(KodifyError):
    """No token, a malformed one, or one nobody holds (401)."""

    status_code = 401
    error_code = "invalid_api_key"


class Forbidden(KodifyError):
    """The token is valid but may not do this (403)."""

    status_code = 403


class RouteNotFound(KodifyError):
    """No such route on this server (404)."""

    status_code = 404
    error_code = "route_not_found"


class ModelNotFound(KodifyError):
    """The requested model is served by no upstream (404)."""

    status_code = 404
    error_code = "model_not_found"


class MethodNotAllowed(KodifyError):
    """The route exists, but not for this HTTP method (405)."""

    status_code = 405
    error_code = "method_not_allowed"


class RequestTimeout(KodifyError):
    """The request's headers or body did not arrive within KODIFY_BODY_TIMEOUT (408); the connection is closed."""

    status_code = 408
    error_code = "request_timeout"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        # The rest of the request may still arrive on this connection, so it cannot carry another one.
        super().__init__(message, param=param, headers={"connection": "close"})


class PayloadTooLarge(KodifyError):
    """The request body is larger than KODIFY_MAX_BODY_BYTES (413)."""

    status_code = 413


class UnsupportedMediaType(KodifyError):
    """The request body is not sent as JSON (400, as vLLM answers it, with its own code)."""

    status_code = 400
    error_code = "unsupported_media_type"


class InternalError(KodifyError):
    """A bug of ours: the message says where to look, never what the traceback says (500)."""

    status_code = 500


class UpstreamFailed(KodifyError):
    """An upstream answered with a broken response, a 5xx, or refused the connection (502)."""

    status_code = 502


class UpstreamUnavailable(KodifyError):
    """No upstream serving the model is reachable right now, or a database we need is down (503)."""

    status_code = 503


class UiUnavailable(KodifyError):
    """LiteLLM's admin UI cannot sign anyone in: it has no database of its own (DATABASE_URL)."""

    status_code = 503
    error_code = "ui_needs_database"


class UpstreamTimeout(KodifyError):
    """The upstream did not answer within the request timeout, or a stream went silent (504)."""

    status_code = 504

    @classmethod
    def no_answer(cls, upstream: str, seconds: float) -> UpstreamTimeout:
        """The request timeout ran out (KODIFY_REQUEST_TIMEOUT, or the upstream's own `timeout`)."""
        return cls(f"Upstream {upstream} did not answer within {seconds:g} s (KODIFY_REQUEST_TIMEOUT)")


class UpstreamRejected(KodifyError):
    """An error someone else decided (vLLM's 4xx, LiteLLM's): its status and message, our shape."""

    def __init__(self, message: str, *, status_code: int, param: str | None = None) -> None:
        self.status_code = status_code
        super().__init__(message, param=param)


# Every class a client can meet, for the error-shape table test and the docs.
ERROR_CLASSES: tuple[type[KodifyError], ...] = (
    InvalidRequest,
    Unauthorized,
    Forbidden,
    RouteNotFound,
    ModelNotFound,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    UnsupportedMediaType,
    InternalError,
    UpstreamFailed,
    UpstreamUnavailable,
    UiUnavailable,
    UpstreamTimeout,
)


@dataclass(frozen=True)
class ErrorBody:
    """What an error answer someone else sent says: vLLM's `{"error": {...}}`, LiteLLM's, FastAPI's `{"detail":
    ...}`, or plain text. `found` is False for a body that names no error (a JSON answer of another shape)."""

    message: str | None = None
    type: str | None = None
    param: str | None = None
    status: int | None = None  # the body's `code`, when it is an HTTP status
    found: bool = False
    plain_text: bool = False  # not JSON: the message is the body's text


def read_error_body(body: bytes | bytearray) -> ErrorBody:
    """The one parser of error bodies, for the lane, the LiteLLM path and the journal alike."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = bytes(body[:2000]).decode("utf-8", "replace").strip()
        return ErrorBody(message=text or None, found=bool(text), plain_text=True)
    if not isinstance(data, dict):
        return ErrorBody()
    error = data.get("error")
    if isinstance(error, str):
        return ErrorBody(message=error, found=True)
    if not isinstance(error, dict):
        detail = data.get("detail")
        return ErrorBody(message=detail, found=True) if isinstance(detail, str) else ErrorBody()
    code = error.get("code")
    return ErrorBody(
        message=_text(error.get("message")),
        type=_text(error.get("type")),
        param=_text(error.get("param")),
        status=int(code) if isinstance(code, int | str) and str(code).isdigit() else None,
        found=True,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def to_proxy_exception(error: KodifyError) -> ProxyException:
    """Our error as LiteLLM's ProxyException, for the few places LiteLLM calls us (custom_auth)."""
    from litellm.proxy._types import ProxyException

    return ProxyException(
        message=error.message, type=error.error_type, param=error.param, code=error.status_code, openai_code=error.code
    )


def describe_validation(exc: ValidationError, *, first_only: bool = False) -> str:
    """A pydantic error as `where: what` lines joined by `; ` (for files we read: config.yml, the preprocessing
    config, spool lines). Client requests use protocol.invalid_request, environment variables settings' own."""
    problems = exc.errors(include_url=False)[: 1 if first_only else None]
    return "; ".join(f"{'.'.join(map(str, p['loc'])) or 'top level'}: {p['msg']}" for p in problems)


class StartupError(Exception):
    """The server can't start; the message says why and what to do (serve exits with status 1)."""


class InstanceConflict(StartupError):
    """A setting this server cannot share with another one running (its address, its journal spool directory):
    refused before anything starts, like a bad setting (serve exits with status 2)."""
