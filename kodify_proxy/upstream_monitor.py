"""Live upstream state: periodic checks, what requests saw, and the LiteLLM router kept in step.

Only the monitor decides that an upstream is down (a GET /v1/models that fails). A request that fails to connect
asks for a check of its upstream at once; a healthy upstream is checked every KODIFY_DISCOVERY_INTERVAL, one that is
down every KODIFY_DOWN_RECHECK_INTERVAL, so a vLLM that comes back serves within a second. With the server's upstream
board (kodify_proxy.upstream_board) every process of the server shares one view: one of them makes the periodic
checks, whoever checks publishes, and each adopts what the board holds newer than its own view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from kodify_proxy.errors import KodifyError, ModelNotFound, UpstreamUnavailable
from kodify_proxy.litellm_config import build_model_list
from kodify_proxy.settings import Settings
from kodify_proxy.upstream_board import POLL_INTERVAL, Observation, UpstreamBoard, adopt, observe
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
        self._suspected: dict[str, float] = {}  # upstream URL -> when a request last failed to reach it
        self._board: UpstreamBoard | None = None
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
            self.request_refresh(url)

    def failing(self, url: str) -> bool:
        """Whether requests to `url` fail lately although its checks pass."""
        outcome = self.outcomes.get(url)
        return outcome is not None and outcome.failing(self._clock())

    async def refresh(self, client: httpx.AsyncClient, router: RouterLike | None) -> None:
        """Check every upstream once and bring the router in step with the result."""
        await self.check(client, self.upstreams)
        if router is not None:
            self.sync_router(router)

    async def check(self, client: httpx.AsyncClient, upstreams: Sequence[Upstream]) -> dict[str, Observation]:
        """Check `upstreams` now and record what was found; returns it, to publish."""
        began = self._clock()
        found: dict[str, Observation] = {}
        for state in await check_all(client, upstreams):
            known = self.states[state.upstream.url].checked_at
            if known is not None and known > began:
                continue  # the board brought a later check's news while this one ran
            state.checked_at = began  # when the check began: what is known as of then, on the monitor's clock
            self._record(state)
            observation = observe(self.states[state.upstream.url])
            if observation is not None:
                found[state.upstream.url] = observation
        return found

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

    def adopt(self, observations: dict[str, Observation]) -> bool:
        """Take what the board holds newer than this process's own view; whether anything changed."""
        changed = False
        for upstream in self.upstreams:
            observation = observations.get(upstream.url)
            known = self.states[upstream.url].checked_at
            if observation is not None and (known is None or observation.checked_at > known):
                self.states[upstream.url] = adopt(upstream, observation)
                changed = True
        return changed

    def due(self, now: float, periodic: bool) -> list[Upstream]:
        """The upstreams to check now: those a request failed to reach since their last check began, and, in the
        process making the periodic checks, those whose last check is older than their interval."""
        found = []
        for upstream in self.upstreams:
            state = self.states[upstream.url]
            last = state.checked_at if state.checked_at is not None else -math.inf
            suspected = self._suspected.get(upstream.url, -math.inf) > last
            if suspected or (periodic and now - last >= self._interval(state)):
                found.append(upstream)
        return found

    def next_check_in(self, now: float) -> float:
        """Seconds until the next periodic check is due (this process making them)."""
        ends = [
            (state.checked_at if state.checked_at is not None else -math.inf) + self._interval(state)
            for state in self.states.values()
        ]
        return max(0.0, min(ends, default=self.settings.discovery_interval) - now)

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

    def request_refresh(self, url: str | None = None) -> None:
        """Check upstream `url` (or every one) now, instead of at its next interval: a request failed to reach it."""
        now = self._clock()
        for upstream in self.upstreams:
            if url is None or upstream.url == url:
                self._suspected[upstream.url] = now
        self._wake.set()

    def start(self, router_getter: Callable[[], RouterLike | None], board: UpstreamBoard | None = None) -> None:
        """Start checking upstreams in the background (in the serving event loop), sharing what is seen through
        `board` with the server's other processes when given."""
        if self._task is None:
            self._board = board
            self._wake = asyncio.Event()  # bound to this loop
            self._task = asyncio.get_running_loop().create_task(self._run(router_getter))

    async def stop(self) -> None:
        """Stop the background checks."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._board is not None:
            self._board.close()

    def _interval(self, state: UpstreamState) -> float:
        return self.settings.discovery_interval if state.healthy else self.settings.down_recheck_interval

    async def _run(self, router_getter: Callable[[], RouterLike | None]) -> None:
        """Every turn: the board's news adopted, and a check started when one is due and none is running. Checks
        run beside this loop, so one upstream slow to answer never holds back what the board says of the others."""
        timeout = httpx.Timeout(self.settings.connect_timeout)
        checking: asyncio.Task[None] | None = None
        async with httpx.AsyncClient(timeout=timeout, trust_env=False, transport=self._transport) as client:
            try:
                while True:
                    await self._sleep(self._pause(checking is not None))
                    if checking is not None and checking.done():
                        checking = None
                    try:
                        checking = self._turn(client, router_getter, checking)
                    except Exception:  # a failed turn must not end the monitor; the next one retries
                        log.exception("Upstream check failed")
            finally:
                if checking is not None:
                    checking.cancel()

    async def _sleep(self, seconds: float | None) -> None:
        """Until woken (a request's failure, a check's end) or `seconds` passed. Not asyncio.wait_for: on Python 3.11
        it can swallow the cancellation that stops the monitor when its timeout fires in the same turn (gh-86296),
        which a 0.1 s poll makes likely."""
        timer = None if seconds is None else asyncio.get_running_loop().call_later(seconds, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            if timer is not None:
                timer.cancel()
            self._wake.clear()

    def _pause(self, checking: bool) -> float | None:
        """How long to wait for a wake-up: the board's poll interval; alone, until the next check is due (or, while
        one runs, until it ends)."""
        if self._board is not None:
            return POLL_INTERVAL
        return None if checking else self.next_check_in(self._clock())

    def _turn(
        self,
        client: httpx.AsyncClient,
        router_getter: Callable[[], RouterLike | None],
        checking: asyncio.Task[None] | None,
    ) -> asyncio.Task[None] | None:
        board = self._board
        news = board.news() if board is not None else None
        if news is not None and self.adopt(news):
            self._sync(router_getter())
        if checking is not None:
            return checking
        due = self.due(self._clock(), periodic=board is None or board.lead())
        if not due:
            return None
        return asyncio.get_running_loop().create_task(self._check_and_share(client, due, router_getter))

    async def _check_and_share(
        self, client: httpx.AsyncClient, due: list[Upstream], router_getter: Callable[[], RouterLike | None]
    ) -> None:
        try:
            found = await self.check(client, due)
            if self._board is not None:
                await asyncio.to_thread(self._board.publish, found)
            self._sync(router_getter())
        except Exception:  # the next check retries
            log.exception("Upstream check failed")
        finally:
            self._wake.set()  # what is due next follows from this check

    def _sync(self, router: RouterLike | None) -> None:
        if router is not None:
            self.sync_router(router)
