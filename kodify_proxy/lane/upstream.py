"""Calling vLLM from the lane: a pooled keep-alive client per upstream, affinity order, failover, clear errors.

The client is aiohttp's: measured here, httpx's pool spends a third of the lane's CPU at 16 concurrent requests
choosing a connection (httpcore `_assign_requests_to_connections` asks every pooled socket whether it expired),
and aiohttp served 3.3x the requests per second sequentially, 12.8x at 16 concurrent (docs/benchmarks.md).
Closing a response that is not read to the end closes its connection, which is how vLLM learns to stop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp

from kodify_proxy.errors import (
    KodifyError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    read_error_body,
)
from kodify_proxy.lane.routing import order_upstreams
from kodify_proxy.settings import Settings
from kodify_proxy.upstream_monitor import UpstreamMonitor
from kodify_proxy.upstreams import Upstream

log = logging.getLogger("kodify_proxy.lane")

# Refused, unreachable, or too slow to accept: the request never reached vLLM's engine, another upstream may take it.
_TRY_NEXT: Final = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# A pooled connection vLLM had closed meanwhile: worth one more try on a fresh one.
_STALE: Final = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
_ERROR_BODY_BYTES: Final = 64 << 10
InFlight = Callable[[str, int], None]  # (upstream URL, +1 / -1)


def user_agent() -> str:
    """What the lane calls itself in requests to vLLM."""
    from importlib import metadata

    try:
        return f"kodify-proxy/{metadata.version('kodify-proxy')}"
    except metadata.PackageNotFoundError:
        return "kodify-proxy"


class UpstreamPool:
    """One aiohttp session per upstream, keeping connections to vLLM open between keystrokes (opened in the loop)."""

    def __init__(self, upstreams: tuple[Upstream, ...]) -> None:
        self.upstreams = upstreams
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def start(self) -> None:
        """Open the sessions (in the serving event loop)."""
        agent = user_agent()
        for upstream in self.upstreams:
            headers = {"user-agent": agent, "content-type": "application/json"}
            if upstream.api_key is not None:
                headers["authorization"] = f"Bearer {upstream.api_key.get_secret_value()}"
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
            self._sessions[upstream.url] = aiohttp.ClientSession(headers=headers, connector=connector, trust_env=False)

    def session(self, upstream: Upstream) -> aiohttp.ClientSession:
        """The pooled session of `upstream`."""
        return self._sessions[upstream.url]

    async def aclose(self) -> None:
        """Close every pooled connection (shutdown)."""
        await asyncio.gather(*(session.close() for session in self._sessions.values()))
        self._sessions.clear()


@dataclass(frozen=True)
class UpstreamRequest:
    """What the lane sends: a JSON body for one model's endpoint (`/completions`), streamed or not."""

    model: str
    path: str
    body: bytes
    stream: bool
    affinity: str | None = None
    request_id: str | None = None


@dataclass
class Opened:
    """An upstream that answered 200: its response, whose body is still to be read."""

    upstream: Upstream
    response: aiohttp.ClientResponse
    _done: Callable[[], None]
    _closed: bool = False

    def streams(self) -> bool:
        """The answer is a server-sent event stream."""
        return self.response.content_type == "text/event-stream"

    def close(self) -> None:
        """Let the connection go: back to the pool when the body was read to its end, else closed."""
        if self._closed:
            return
        self._closed = True
        if self.response.content.is_eof():
            self.response.release()
        else:
            self.response.close()
        self._done()


def describe(exc: BaseException) -> str:
    """An exception as `Type: message`, for error messages."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def upstream_error(upstream: Upstream, status: int, body: bytes) -> KodifyError:
    """vLLM's error answer in our shape: a 4xx keeps its status and message, a 5xx is a 502 naming the upstream."""
    read = read_error_body(body)
    message, param = read.message, read.param
    if 400 <= status < 500:
        return UpstreamRejected(
            message or f"The upstream refused the request ({status})", status_code=status, param=param
        )
    detail = f": {message}" if message else ""
    return UpstreamFailed(f"Upstream {upstream.url} answered {status}{detail}; check the vLLM server's log")


class Lane:
    """Sends lane requests to the model's healthy upstreams: affinity first, the next one on a refused connection."""

    def __init__(self, monitor: UpstreamMonitor, pool: UpstreamPool, settings: Settings, in_flight: InFlight) -> None:
        self.monitor = monitor
        self.pool = pool
        self.settings = settings
        self._in_flight = in_flight

    def _candidates(self, request: UpstreamRequest) -> list[Upstream]:
        healthy = {s.upstream.url: s.upstream for s in self.monitor.upstreams_for(request.model) if s.healthy}
        if not healthy:
            raise self.monitor.unavailable(request.model)
        key = request.affinity if self.settings.cache_affinity else None
        return [healthy[url] for url in order_upstreams(key, list(healthy))]

    def _timeout(self, upstream: Upstream, stream: bool) -> aiohttp.ClientTimeout:
        total = upstream.timeout or self.settings.request_timeout
        read = self.settings.stream_idle_timeout if stream else total
        return aiohttp.ClientTimeout(
            total=None if stream else total, connect=self.settings.connect_timeout, sock_read=read
        )

    async def open(self, request: UpstreamRequest) -> Opened:
        """The first upstream that answers 200 (headers only); KodifyError for every other outcome."""
        failures: list[str] = []
        for upstream in self._candidates(request):
            response = await self._send(upstream, request, failures)
            if response is None:
                continue
            opened = Opened(upstream, response, functools.partial(self._in_flight, upstream.url, -1))
            if response.status == 200:
                return opened
            body = await self._read_error(opened)
            if response.status >= 500:
                self.monitor.report_failure(upstream.url)
            raise upstream_error(upstream, response.status, body)
        raise UpstreamUnavailable(
            f"No upstream serving {request.model!r} is reachable: {'; '.join(failures)}. Check that the vLLM "
            "server is running; requests resume as soon as it answers GET /v1/models"
        )

    async def _send(
        self, upstream: Upstream, request: UpstreamRequest, failures: list[str]
    ) -> aiohttp.ClientResponse | None:
        session, url = self.pool.session(upstream), upstream.api_base + request.path
        headers = {"x-request-id": request.request_id} if request.request_id else None
        timeout = self._timeout(upstream, request.stream)
        for attempt in (1, 2):  # a second try only for a pooled connection vLLM had already closed
            self._in_flight(upstream.url, 1)
            try:
                return await session.post(url, data=request.body, headers=headers, timeout=timeout)
            except _TRY_NEXT as exc:
                self._in_flight(upstream.url, -1)
                failures.append(f"{upstream.url} ({describe(exc)})")
                self.monitor.report_failure(upstream.url, connection=True)
                return None
            except TimeoutError:
                self._in_flight(upstream.url, -1)
                raise self.timeout(upstream) from None
            except _STALE as exc:
                self._in_flight(upstream.url, -1)
                if attempt == 2:
                    failures.append(f"{upstream.url} ({describe(exc)})")
                    self.monitor.report_failure(upstream.url, connection=True)
        return None

    @staticmethod
    async def _read_error(opened: Opened) -> bytes:
        try:
            return await opened.response.content.read(_ERROR_BODY_BYTES)
        except (aiohttp.ClientError, TimeoutError):
            return b""
        finally:
            opened.close()

    def timeout(self, upstream: Upstream) -> UpstreamTimeout:
        """The 504 for an upstream that took longer than its timeout."""
        seconds = upstream.timeout or self.settings.request_timeout
        return UpstreamTimeout.no_answer(upstream.url, seconds)

    async def read(self, request: UpstreamRequest) -> tuple[Upstream, bytes]:
        """A non-streamed call: the upstream that answered and its whole 200 body."""
        opened = await self.open(request)
        return opened.upstream, await self.whole(opened)

    async def whole(self, opened: Opened) -> bytes:
        """The whole body of an opened 200 answer (the connection goes back to the pool)."""
        try:
            body = await opened.response.read()
        except TimeoutError:
            raise self.timeout(opened.upstream) from None
        except aiohttp.ClientError as exc:
            self.monitor.report_failure(opened.upstream.url, connection=True)
            raise UpstreamFailed(
                f"Upstream {opened.upstream.url} broke the connection mid-answer ({describe(exc)}): "
                "check the vLLM server"
            ) from None
        finally:
            opened.close()
        self.monitor.report_success(opened.upstream.url)
        return body
