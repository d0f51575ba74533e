"""Calling vLLM from the lane: a pooled keep-alive client per upstream, affinity order, failover, clear errors."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Final

import httpx
import orjson

from kodify_proxy.errors import KodifyError, UpstreamFailed, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from kodify_proxy.lane.routing import order_upstreams
from kodify_proxy.monitor import UpstreamMonitor
from kodify_proxy.settings import Settings
from kodify_proxy.upstreams import Upstream

log = logging.getLogger("kodify_proxy.lane")

# Refused, unreachable, or a pooled connection the upstream had closed: the request did not reach vLLM's engine.
_TRY_NEXT: Final = (httpx.ConnectError, httpx.ConnectTimeout)
_STALE: Final = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_ERROR_BODY_BYTES: Final = 64 << 10


def user_agent() -> str:
    """What the lane calls itself in requests to vLLM."""
    from importlib import metadata

    try:
        return f"kodify-proxy/{metadata.version('kodify-proxy')}"
    except metadata.PackageNotFoundError:
        return "kodify-proxy"


class UpstreamPool:
    """One httpx client per upstream, keeping connections to vLLM open between keystrokes."""

    def __init__(self, upstreams: tuple[Upstream, ...], settings: Settings) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=30)
        agent = user_agent()
        self._clients = {u.url: self._client(u, limits, agent) for u in upstreams}

    @staticmethod
    def _client(upstream: Upstream, limits: httpx.Limits, agent: str) -> httpx.AsyncClient:
        headers = {"user-agent": agent, "content-type": "application/json"}
        if upstream.api_key is not None:
            headers["authorization"] = f"Bearer {upstream.api_key.get_secret_value()}"
        transport = httpx.AsyncHTTPTransport(limits=limits, retries=0)
        return httpx.AsyncClient(base_url=upstream.api_base, headers=headers, transport=transport, trust_env=False)

    def client(self, upstream: Upstream) -> httpx.AsyncClient:
        """The pooled client of `upstream`."""
        return self._clients[upstream.url]

    async def aclose(self) -> None:
        """Close every pooled connection (shutdown)."""
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))


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
    response: httpx.Response


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def upstream_error(upstream: Upstream, status: int, body: bytes) -> KodifyError:
    """vLLM's error answer in our shape: a 4xx keeps its status and message, a 5xx is a 502 naming the upstream."""
    message, param = _error_fields(body)
    if 400 <= status < 500:
        return UpstreamRejected(
            message or f"The upstream refused the request ({status})", status_code=status, param=param
        )
    detail = f": {message}" if message else ""
    return UpstreamFailed(f"Upstream {upstream.url} answered {status}{detail}; check the vLLM server's log")


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return (body[:500].decode("utf-8", "replace").strip() or None), None
    error = data.get("error", data) if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, None
    message, param = error.get("message"), error.get("param")
    return (message if isinstance(message, str) else None), (param if isinstance(param, str) else None)


class Lane:
    """Sends lane requests to the model's healthy upstreams: affinity first, the next one on a refused connection."""

    def __init__(self, monitor: UpstreamMonitor, pool: UpstreamPool, settings: Settings) -> None:
        self.monitor = monitor
        self.pool = pool
        self.settings = settings

    def _candidates(self, request: UpstreamRequest) -> list[Upstream]:
        healthy = {s.upstream.url: s.upstream for s in self.monitor.upstreams_for(request.model) if s.healthy}
        if not healthy:
            raise self.monitor.unavailable(request.model)
        key = request.affinity if self.settings.cache_affinity else None
        return [healthy[url] for url in order_upstreams(key, list(healthy))]

    def _timeout(self, upstream: Upstream, stream: bool) -> httpx.Timeout:
        total = upstream.timeout or self.settings.request_timeout
        read = self.settings.stream_idle_timeout if stream else total
        return httpx.Timeout(total, connect=self.settings.connect_timeout, read=read)

    async def open(self, request: UpstreamRequest) -> Opened:
        """The first upstream that answers 200 (headers only); KodifyError for every other outcome."""
        failures: list[str] = []
        for upstream in self._candidates(request):
            response = await self._send(upstream, request, failures)
            if response is None:
                continue
            if response.status_code == 200:
                return Opened(upstream, response)
            body = await self._read_error(response)
            if response.status_code >= 500:
                self.monitor.report_failure(upstream.url)
            raise upstream_error(upstream, response.status_code, body)
        raise UpstreamUnavailable(
            f"No upstream serving {request.model!r} is reachable: {'; '.join(failures)}. Check that the vLLM "
            "server is running; requests resume as soon as it answers GET /v1/models"
        )

    async def _send(self, upstream: Upstream, request: UpstreamRequest, failures: list[str]) -> httpx.Response | None:
        client = self.pool.client(upstream)
        headers = {"x-request-id": request.request_id} if request.request_id else None
        for attempt in (1, 2):  # a second try only for a pooled connection vLLM had already closed
            built = client.build_request(
                "POST",
                request.path,
                content=request.body,
                headers=headers,
                timeout=self._timeout(upstream, request.stream),
            )
            try:
                return await client.send(built, stream=True)
            except _TRY_NEXT as exc:
                failures.append(f"{upstream.url} ({_describe(exc)})")
                self.monitor.report_failure(upstream.url, connection=True)
                return None
            except httpx.TimeoutException:
                raise self.timeout(upstream) from None
            except _STALE as exc:
                if attempt == 2:
                    failures.append(f"{upstream.url} ({_describe(exc)})")
                    self.monitor.report_failure(upstream.url, connection=True)
        return None

    @staticmethod
    async def _read_error(response: httpx.Response) -> bytes:
        try:
            body = b""
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > _ERROR_BODY_BYTES:
                    break
            return body
        except httpx.HTTPError:
            return b""
        finally:
            await response.aclose()

    def timeout(self, upstream: Upstream) -> UpstreamTimeout:
        """The 504 for an upstream that took longer than its timeout."""
        seconds = upstream.timeout or self.settings.request_timeout
        return UpstreamTimeout(f"Upstream {upstream.url} did not answer within {seconds:g} s (KODIFY_REQUEST_TIMEOUT)")

    async def read(self, request: UpstreamRequest) -> tuple[Upstream, bytes]:
        """A non-streamed call: the upstream that answered and its whole 200 body."""
        opened = await self.open(request)
        seconds = opened.upstream.timeout or self.settings.request_timeout
        try:
            async with asyncio.timeout(seconds):
                body = await opened.response.aread()
        except TimeoutError:
            raise self.timeout(opened.upstream) from None
        except httpx.HTTPError as exc:
            self.monitor.report_failure(opened.upstream.url, connection=True)
            raise UpstreamFailed(
                f"Upstream {opened.upstream.url} broke the connection mid-answer ({_describe(exc)}): "
                "check the vLLM server"
            ) from None
        finally:
            await opened.response.aclose()
        self.monitor.report_success(opened.upstream.url)
        return opened.upstream, body
