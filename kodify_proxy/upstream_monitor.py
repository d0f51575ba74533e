"""Live upstream state: periodic checks, what requests saw, and the LiteLLM router kept in step.

Only the monitor decides that an upstream is down (a GET /v1/models that fails). A request that fails to connect
asks for a check at once; while an upstream is down it is checked every KODIFY_DOWN_RECHECK_INTERVAL, so a vLLM
that comes back serves within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from kodify_proxy.errors import KodifyError, ModelNotFound, UpstreamUnavailable
from kodify_proxy.litellm_config import build_model_list
from kodify_proxy.settings import Settings
from kodify_proxy.upstreams import KodifyConfig, Upstream, UpstreamState, check_all

log = logging.getLogger("kodify_proxy.upstream_monitor")

FAILING_WINDOW = 30.0  # seconds a request failure keeps an upstream "failing" unless a success follows


class RouterLike(Protocol):
    """The part of `litellm.Router` the monitor uses (public Router methods)."""

    def upsert_deployment(self, deployment: Any) -> Any: ...
    def delete_deployment(self, id: str) -> Any: ...


@dataclass
class Outcomes:
    """What requests to one upstream saw lately (monotonic times)."""

    last_success: float | None = None
    last_failure: float | None = None

    def failing(self, now: float) -> bool:
        """The last request failed (5xx, broken connection, timeout) within FAILING_WINDOW, with no success since."""
        if self.last_failure is None or now - self.last_failure > FAILING_WINDOW:
            return False
        return self.last_success is None or self.last_failure > self.last_success


class UpstreamMonitor:
    """Keeps the state of every upstream and the router's deployments up to date."""

    def __init__(
        self,
        config: KodifyConfig,
        settings: Settings,
        states: Sequence[UpstreamState],
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,  # the network by default; tests play upstreams with it
    ) -> None:
        self.config = config
        self.settings = settings
        self.states = {s.upstream.url: s for s in states}
        self.outcomes = {u.url: Outcomes() for u in config.upstreams}
        self._clock = clock
        self._transport = transport
        self._registered: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        """The upstreams in config.yml order."""
        return self.config.upstreams

    def served_models(self) -> list[str]:
        """Model names any upstream serves or served, in config order, without repeats."""
        names: dict[str, None] = {}
        for upstream in self.upstreams:
            for model in self.states[upstream.url].models:
                names.setdefault(model, None)
        return list(names)

    def upstreams_for(self, model: str) -> list[UpstreamState]:
        """The states of the upstreams that serve `model`."""
        return [self.states[u.url] for u in self.upstreams if model in self.states[u.url].models]

    def default_model(self) -> str | None:
        """The first model of the first upstream that has one (the guide's Tabby default)."""
        models = self.served_models()
        return models[0] if models else None

    def check_model(self, model: str) -> None:
        """ModelNotFound for a model nobody serves; UpstreamUnavailable when all its upstreams are down."""
        if model not in self.served_models():
            listed = ", ".join(self.served_models()) or "none (no upstream has answered yet)"
            raise ModelNotFound(f"The model {model!r} does not exist. Served models: {listed}", param="model")
        if not any(state.healthy for state in self.upstreams_for(model)):
            raise self.unavailable(model)

    def unavailable(self, model: str) -> KodifyError:
        """The 503 for a model whose upstreams are all down, naming them and their errors."""
        down = "; ".join(f"{s.upstream.url} ({s.error})" for s in self.upstreams_for(model))
        self.request_refresh()
        return UpstreamUnavailable(
            f"No upstream serving {model!r} is reachable: {down or 'none'}. Check that the vLLM server is running; "
            "requests resume as soon as it answers GET /v1/models"
        )

    def report_success(self, url: str) -> None:
        """A request to `url` succeeded."""
        outcome = self.outcomes.get(url)
        if outcome is not None:
            outcome.last_success = self._clock()

    def report_failure(self, url: str, connection: bool = False) -> None:
        """A request to `url` failed on the server's side; a connection failure asks for a check at once."""
        outcome = self.outcomes.get(url)
        if outcome is not None:
            outcome.last_failure = self._clock()
        if connection:
            self.request_refresh()

    def failing(self, url: str) -> bool:
        """Whether requests to `url` fail lately although its checks pass."""
        outcome = self.outcomes.get(url)
        return outcome is not None and outcome.failing(self._clock())

    async def refresh(self, client: httpx.AsyncClient, router: RouterLike | None) -> None:
        """Check every upstream once and bring the router in step with the result."""
        for state in await check_all(client, self.upstreams):
            self._record(state)
        if router is not None:
            self.sync_router(router)

    def _record(self, state: UpstreamState) -> None:
        previous = self.states.get(state.upstream.url)
        if previous is not None and previous.healthy != state.healthy:
            if state.healthy:
                log.info("Upstream %s is back, serving %s", state.upstream.url, ", ".join(state.models))
            else:
                log.warning("Upstream %s is down: %s", state.upstream.url, state.error)
        if not state.healthy and previous is not None:
            state.models = previous.models  # keep routing its models; requests fail fast with 503 meanwhile
            state.model_cards = previous.model_cards
        self.states[state.upstream.url] = state

    def routable(self) -> dict[str, tuple[str, ...]]:
        """Upstream URL -> models to route there: a down upstream keeps a model only if no healthy one has it."""
        served_healthy = {m for s in self.states.values() if s.healthy for m in s.models}
        return {
            url: tuple(m for m in s.models if s.healthy or m not in served_healthy) for url, s in self.states.items()
        }

    def wanted_deployments(self) -> dict[str, dict[str, Any]]:
        """Deployment id -> LiteLLM model_list entry for everything currently routable."""
        entries = build_model_list(self.upstreams, self.routable(), self.settings)
        return {entry["model_info"]["id"]: entry for entry in entries}

    def sync_router(self, router: RouterLike) -> None:
        """Add new or changed deployments and remove those no upstream serves any more."""
        from litellm.types.router import Deployment

        wanted = self.wanted_deployments()
        for dep_id, entry in wanted.items():
            if self._registered.get(dep_id) != entry:
                router.upsert_deployment(Deployment(**entry))
                log.info("Model %s on %s is routed", entry["model_name"], entry["model_info"]["kodify_upstream"])
        for dep_id in sorted(set(self._registered) - set(wanted)):
            router.delete_deployment(id=dep_id)
            log.info("Deployment %s removed: its upstream no longer serves it", dep_id)
        self._registered = wanted

    def mark_registered(self) -> None:
        """The rendered config already holds the current deployments."""
        self._registered = self.wanted_deployments()

    def request_refresh(self) -> None:
        """Check upstreams now (after a connection failure) instead of at the next interval."""
        self._wake.set()

    def start(self, router_getter: Callable[[], RouterLike | None]) -> None:
        """Start checking upstreams in the background (in the serving event loop)."""
        if self._task is None:
            self._wake = asyncio.Event()  # bound to this loop
            self._task = asyncio.get_running_loop().create_task(self._run(router_getter))

    async def stop(self) -> None:
        """Stop the background checks."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _interval(self) -> float:
        any_down = any(not state.healthy for state in self.states.values())
        return self.settings.down_recheck_interval if any_down else self.settings.discovery_interval

    async def _run(self, router_getter: Callable[[], RouterLike | None]) -> None:
        timeout = httpx.Timeout(self.settings.connect_timeout)
        async with httpx.AsyncClient(timeout=timeout, trust_env=False, transport=self._transport) as client:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._interval())
                self._wake.clear()
                try:
                    await self.refresh(client, router_getter())
                except Exception:  # a failed round must not end the monitor; the next one retries
                    log.exception("Upstream check failed")
