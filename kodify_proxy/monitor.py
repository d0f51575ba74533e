"""Live upstream state: periodic checks, and the LiteLLM router kept in step with what upstreams serve."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import httpx

from kodify_proxy.litellm_config import build_model_list
from kodify_proxy.settings import Settings
from kodify_proxy.upstreams import KodifyConfig, Upstream, UpstreamState, check_all

log = logging.getLogger("kodify_proxy.monitor")


class RouterLike(Protocol):
    """The part of `litellm.Router` the monitor uses (public Router methods)."""

    def upsert_deployment(self, deployment: Any) -> Any: ...
    def delete_deployment(self, id: str) -> Any: ...


class UpstreamMonitor:
    """Keeps the state of every upstream and the router's deployments up to date."""

    def __init__(self, config: KodifyConfig, settings: Settings, states: Sequence[UpstreamState]) -> None:
        self.config = config
        self.settings = settings
        self.states = {s.upstream.url: s for s in states}
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
        """Start checking upstreams every KODIFY_DISCOVERY_INTERVAL seconds in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(router_getter))

    async def _run(self, router_getter: Callable[[], RouterLike | None]) -> None:
        timeout = httpx.Timeout(self.settings.connect_timeout)
        async with httpx.AsyncClient(timeout=timeout) as client:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.discovery_interval)
                self._wake.clear()
                try:
                    await self.refresh(client, router_getter())
                except Exception:  # a failed round must not end the monitor; the next one retries
                    log.exception("Upstream check failed")
