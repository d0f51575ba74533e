"""Small ASGI pieces our layer is built from: whole responses, bounded body reads, replayed bodies, headers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from starlette.types import Message, Receive, Scope, Send

from kodify_proxy.errors import KodifyError, PayloadTooLarge, RequestTimeout

Headers = list[tuple[bytes, bytes]]
JSON = b"application/json"


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header `name` (lowercase), decoded as latin-1."""
    return header_value(scope["headers"], name)


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of header `name` (lowercase) in raw ASGI headers, decoded as latin-1."""
    for key, value in headers:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def replace_headers(headers: Iterable[tuple[bytes, bytes]], **values: bytes) -> Headers:
    """`headers` with the named ones (underscores for dashes) set to `values`, replacing any given."""
    names = {name.replace("_", "-").encode(): value for name, value in values.items()}
    kept = [(k, v) for k, v in headers if k.lower() not in names]
    return [*kept, *names.items()]


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None = JSON,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """One complete response (no Content-Type when `content_type` is None: an empty answer)."""
    kind = [(b"content-type", content_type)] if content_type is not None else []
    start = [*headers, *kind, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, error: KodifyError, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """`error` as an OpenAI-shaped JSON response with its status (and its own headers, e.g. Allow)."""
    extra = [(k.lower().encode(), v.encode("latin-1")) for k, v in error.headers.items()]
    await send_bytes(send, error.status_code, error.render(), JSON, [*headers, *extra])


async def read_body(
    receive: Receive, limit: int, timeout: float, setting: str = "KODIFY_MAX_BODY_BYTES"
) -> bytes | None:
    """The whole request body; None when the client left first; PayloadTooLarge past `limit` bytes (the `setting`
    that says so), RequestTimeout when it has not all arrived `timeout` seconds after we started reading
    (KODIFY_BODY_TIMEOUT)."""
    try:
        async with asyncio.timeout(timeout):
            return await _read_all(receive, limit, setting)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {timeout:g} s (KODIFY_BODY_TIMEOUT); send the whole body at once"
        ) from None


async def _read_all(receive: Receive, limit: int, setting: str) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes ({setting}); send a smaller one")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` once, then waits on the client (for its disconnect) as before."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
