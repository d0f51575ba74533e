"""Clients that behave as IDE plugins do, for tests and benchmarks: one that gives up and hangs up mid-request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit


async def abandon(url: str, body: Any, after: float, headers: Mapping[str, str] | None = None) -> bytes:
    """POST `body` as JSON (bytes: sent as they are), read whatever comes for `after` seconds, then drop the
    connection (as tabby-agent's abort or a closed IDE does). The bytes received so far.

    A raw socket on purpose: an HTTP client library's own cancellation may wait for the next chunk to arrive
    before it lets go, which is not what a client that left looks like to the server.
    """
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"Content-Length: {len(data)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    await writer.drain()
    received = b""
    deadline = time.monotonic() + after
    try:
        while (left := deadline - time.monotonic()) > 0:
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                break
            received += chunk
    except TimeoutError:
        pass
    writer.transport.abort()
    return received


def abandon_sync(url: str, body: Any, after: float, headers: Mapping[str, str] | None = None) -> bytes:
    """`abandon` for synchronous tests."""
    return asyncio.run(abandon(url, body, after, headers))
