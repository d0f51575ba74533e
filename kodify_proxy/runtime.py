"""Everything one server process runs on, typed, and the one owner of its start-up and shut-down.

`serve` builds it before LiteLLM starts; the gateway's lifespan starts it once LiteLLM's own start-up is done (the
router exists then) and stops it after LiteLLM's shut-down. The parts LiteLLM loads by name (custom_auth, the
callback) find it through `current()`; everything else is handed it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp

from kodify_proxy.auth import Authenticator, TokenVerifier
from kodify_proxy.journal.service import Journal
from kodify_proxy.lane.upstream import Lane, UpstreamPool
from kodify_proxy.limits import Limiter, build_limiter
from kodify_proxy.preprocess import PreprocessingConfig
from kodify_proxy.prometheus_metrics import MULTIPROCESS_DIR_ENV, Metrics, UpstreamsUp
from kodify_proxy.request_recorder import RequestRecorder
from kodify_proxy.settings import Settings
from kodify_proxy.tabby.service import TabbyService
from kodify_proxy.upstream_board import UpstreamBoard
from kodify_proxy.upstream_monitor import RouterLike, UpstreamMonitor
from kodify_proxy.upstreams import KodifyConfig

log = logging.getLogger("kodify_proxy.runtime")


@dataclass
class Runtime:
    """What `kodify-proxy serve` prepared, and the services started with the app."""

    settings: Settings
    config: KodifyConfig
    monitor: UpstreamMonitor
    master_key: str
    authenticator: Authenticator
    preprocessing: PreprocessingConfig | None
    journal: Journal | None
    metrics: Metrics
    recorder: RequestRecorder
    pool: UpstreamPool
    lane: Lane
    tabby: TabbyService
    limiter: Limiter
    board: UpstreamBoard | None = None  # the server's one view of the upstreams, shared by its processes
    litellm: ASGIApp | None = None  # LiteLLM's FastAPI app, once imported
    started: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def verifier(self) -> TokenVerifier | None:
        """The per-user token cache (AUTH_TYPE=DB)."""
        return self.authenticator.verifier

    def start(self, router: Callable[[], RouterLike | None]) -> None:
        """Start the monitor and the journal writer (in the serving event loop, after LiteLLM's start-up)."""
        self.monitor.start(router, self.board)
        self.pool.start()
        if self.journal is not None:
            self.journal.start()
            self._tasks.append(asyncio.get_running_loop().create_task(self._watch_journal(self.journal)))
        if self.verifier is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._probe_users(self.verifier)))
        self.started = True

    async def _watch_journal(self, journal: Journal) -> None:
        """Keep the journal's gauges current (each worker's own, summed at scrape with `serve --workers`)."""
        while True:
            self.metrics.note_journal(journal.writer.status())
            await asyncio.sleep(1.0)

    def render_metrics(self) -> bytes:
        """GET /metrics: this process's journal state noted first, then every family."""
        if self.journal is not None:
            self.metrics.note_journal(self.journal.writer.status())
        return self.metrics.render()

    async def _probe_users(self, verifier: TokenVerifier) -> None:
        """Keep the user database's health current for /health without a query per request."""
        while True:
            await asyncio.sleep(self.settings.discovery_interval)
            try:
                await verifier.probe()
            except Exception:  # the probe must not die; the next round retries
                log.exception("User database probe failed")

    async def stop(self) -> None:
        """Stop what `start` started and close what `serve` opened: requests still waiting for LiteLLM's event are
        recorded, the journal is flushed, connections to upstreams and the user database are closed."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.monitor.stop()
        drained = self.recorder.drain()
        if drained:
            log.info("%d requests recorded at shutdown without LiteLLM's last event", drained)
        await self.pool.aclose()
        await self.limiter.aclose()
        if self.journal is not None:
            await asyncio.to_thread(self.journal.close)
        if self.verifier is not None:
            self.verifier.close()


def build_runtime(
    settings: Settings,
    config: KodifyConfig,
    monitor: UpstreamMonitor,
    master_key: str,
    verifier: TokenVerifier | None,
    preprocessing: PreprocessingConfig | None,
    journal: Journal | None,
    board: UpstreamBoard | None = None,
) -> Runtime:
    """Wire the services; nothing is started yet."""
    metrics = Metrics(monitor.served_models, os.environ.get(MULTIPROCESS_DIR_ENV))
    limiter = build_limiter(settings, metrics.limiter_errors.inc)
    sinks = [metrics.observe, limiter.settle] + ([journal.record] if journal is not None else [])
    recorder = RequestRecorder(
        sinks,
        capture_bytes=journal.policy.response_capture() if journal is not None else 0,
        ledger=journal.inflight if journal is not None else None,
    )
    pool = UpstreamPool(config.upstreams)
    runtime = Runtime(
        settings=settings,
        config=config,
        monitor=monitor,
        master_key=master_key,
        authenticator=Authenticator(settings, master_key, verifier),
        preprocessing=preprocessing,
        journal=journal,
        metrics=metrics,
        recorder=recorder,
        pool=pool,
        lane=Lane(monitor, pool, settings, metrics.note_in_flight),
        tabby=TabbyService(monitor, preprocessing),
        limiter=limiter,
        board=board,
    )
    metrics.watch(UpstreamsUp(lambda: {u.url: monitor.states[u.url].healthy for u in config.upstreams}))
    return runtime


_current: Runtime | None = None


def bind(runtime: Runtime) -> None:
    """Make `runtime` the one LiteLLM's hooks see (set once, at serve)."""
    global _current
    _current = runtime


def current() -> Runtime:
    """The bound runtime; LiteLLM loads our hooks only inside `kodify-proxy serve`, which binds it first."""
    if _current is None:
        raise RuntimeError("kodify_proxy is not initialised: start it with `kodify-proxy serve`")
    return _current
