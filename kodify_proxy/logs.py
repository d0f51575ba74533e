"""Logging: our lines in uvicorn's format, and no traceback in the log for a request a client got wrong.

LiteLLM logs an upstream's 4xx (vLLM refusing a client's max_tokens, say) with its whole traceback
(litellm/litellm_core_utils/core_helpers.py::is_expected_client_error counts a provider's 4xx as unexpected); the
filter keeps the line and drops the traceback for those. Everything else LiteLLM logs stays as it is.
"""

from __future__ import annotations

import logging
from typing import Any, Final

LITELLM_LOGGERS: Final = ("LiteLLM Proxy", "LiteLLM Router", "LiteLLM")


def _client_error(exc: BaseException | None) -> bool:
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and not isinstance(status, bool) and 400 <= status < 500


class ClientErrorTracebacks(logging.Filter):
    """Keeps a record of a client's error, without its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always True: the record stays; only its exc_info may go."""
        if record.exc_info and _client_error(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def configure() -> None:
    """Our log lines in uvicorn's format (root untouched, so nothing is doubled); LiteLLM's 4xx without traceback."""
    ours = logging.getLogger("kodify_proxy")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    for name in LITELLM_LOGGERS:
        logging.getLogger(name).addFilter(ClientErrorTracebacks())


def name_worker(number: int) -> None:
    """With `serve --workers N`: every line this process logs from now on (ours, LiteLLM's, uvicorn's) opens with
    `[worker N]`, so one server's interleaved logs say which worker wrote each line."""
    previous = logging.getLogRecordFactory()
    prefix = f"[worker {number}] "

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if isinstance(record.msg, str):
            record.msg = prefix + record.msg
        return record

    logging.setLogRecordFactory(factory)
