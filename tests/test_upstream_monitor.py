"""The upstream monitor on its own: what requests saw (clock injected), which models route where while an upstream
is down, the router kept in step, and the background checks woken by a failed connection. Upstreams are answered
by an httpx transport (the network boundary); the router is a recorder of LiteLLM's two public Router methods."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kodify_proxy.errors import ModelNotFound, UpstreamUnavailable
from kodify_proxy.settings import load_settings
from kodify_proxy.upstream_board import Observation
from kodify_proxy.upstream_monitor import FAILING_WINDOW, UpstreamMonitor
from kodify_proxy.upstreams import UpstreamState, parse_config

A, B = "http://a:8000", "http://b:8000"
CONFIG = parse_config(f"upstreams:\n  {A}:\n  {B}:\n", Path("config.yml"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Upstreams:
    """What each upstream's GET /v1/models answers: its models, or None for a refused connection."""

    def __init__(self, **served: tuple[str, ...] | None) -> None:
        self.served = {A: served.get("a", ()), B: served.get("b", ())}
        self.calls = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        models = self.served[f"{request.url.scheme}://{request.url.host}:{request.url.port}"]
        if models is None:
            raise httpx.ConnectError("Connection refused", request=request)
        return httpx.Response(200, json={"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))


class Router:
    """Records what the monitor asks of LiteLLM's Router."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def upsert_deployment(self, deployment: Any) -> None:
        self.calls.append(("upsert", deployment.model_info.id))

    def delete_deployment(self, id: str) -> None:
        self.calls.append(("delete", id))


def monitor(
    clock: Callable[[], float] | None = None, upstreams: Upstreams | None = None, env: dict[str, str] | None = None
) -> UpstreamMonitor:
    states = [UpstreamState(upstream=u) for u in CONFIG.upstreams]
    transport = httpx.MockTransport(upstreams.handler) if upstreams is not None else None
    return UpstreamMonitor(CONFIG, load_settings(env or {}), states, clock=clock or Clock(), transport=transport)


def refresh(mon: UpstreamMonitor, upstreams: Upstreams, router: Router | None = None) -> None:
    async def run() -> None:
        async with upstreams.client() as client:
            await mon.refresh(client, router)

    asyncio.run(run())


def test_a_failed_request_makes_an_upstream_failing_until_a_success_or_the_window_ends() -> None:
    clock = Clock()
    mon = monitor(clock)
    assert not mon.failing(A)
    mon.report_failure(A)
    assert mon.failing(A) and not mon.failing(B)
    clock.now += 1
    mon.report_success(A)
    assert not mon.failing(A)
    clock.now += 1
    mon.report_failure(A)
    clock.now += FAILING_WINDOW + 0.1
    assert not mon.failing(A)
    mon.report_failure("http://not-configured")  # ignored, not a crash
    assert not mon.failing("http://not-configured")


def test_models_are_discovered_and_checked() -> None:
    mon = monitor()
    with pytest.raises(ModelNotFound, match="none \\(no upstream has answered yet\\)"):
        mon.check_model("m")
    refresh(mon, Upstreams(a=("m", "n"), b=("m",)))
    assert mon.served_models() == ["m", "n"] and mon.default_model() == "m"
    assert [s.upstream.url for s in mon.upstreams_for("m")] == [A, B]
    mon.check_model("n")
    with pytest.raises(ModelNotFound, match=r"'gpt-4o' does not exist\. Served models: m, n") as caught:
        mon.check_model("gpt-4o")
    assert caught.value.param == "model"


def test_a_down_upstream_keeps_only_the_models_nobody_else_serves() -> None:
    mon, router = monitor(), Router()
    refresh(mon, Upstreams(a=("m",), b=("m", "only-b")), router)
    assert mon.routable() == {A: ("m",), B: ("m", "only-b")}
    assert sorted(router.calls) == [("upsert", f"{A}#m"), ("upsert", f"{B}#m"), ("upsert", f"{B}#only-b")]

    router.calls.clear()
    refresh(mon, Upstreams(a=("m",), b=None), router)
    assert not mon.states[B].healthy and "ConnectError" in str(mon.states[B].error)
    assert mon.states[B].models == ("m", "only-b")  # kept, so requests for them fail fast and clearly
    assert mon.routable() == {A: ("m",), B: ("only-b",)}
    # B's `m` leaves; A's is updated, as `m` is no longer a group of two (retries, its settings)
    assert router.calls == [("upsert", f"{A}#m"), ("delete", f"{B}#m")]
    with pytest.raises(UpstreamUnavailable, match=f"{B} \\(ConnectError"):
        mon.check_model("only-b")
    mon.check_model("m")  # A serves it

    router.calls.clear()
    refresh(mon, Upstreams(a=("m",), b=None), router)
    assert router.calls == []  # nothing changed: the router is left alone


def test_a_down_upstream_is_checked_at_the_shorter_interval_and_a_suspected_one_at_once() -> None:
    env = {"KODIFY_DISCOVERY_INTERVAL": "30", "KODIFY_DOWN_RECHECK_INTERVAL": "0.5"}
    clock = Clock()
    mon = monitor(clock, env=env)
    assert [u.url for u in mon.due(clock.now, periodic=True)] == [A, B]  # never checked
    assert mon.due(clock.now, periodic=False) == []  # another process makes the periodic checks
    refresh(mon, Upstreams(a=("m",), b=None))
    assert mon.states[A].checked_at == mon.states[B].checked_at == clock.now
    clock.now += 0.5
    assert [u.url for u in mon.due(clock.now, periodic=True)] == [B] and mon.next_check_in(clock.now) == 0
    refresh(mon, Upstreams(a=("m",), b=("m",)))
    assert mon.due(clock.now, periodic=True) == [] and mon.next_check_in(clock.now) == 30
    clock.now += 1
    mon.report_failure(A, connection=True)  # a request could not connect: checked at once, wherever it failed
    assert [u.url for u in mon.due(clock.now, periodic=False)] == [A]
    refresh(mon, Upstreams(a=("m",), b=("m",)))
    assert mon.due(clock.now, periodic=False) == []  # the check began after the failure: done


def test_what_another_process_saw_later_is_adopted_and_older_news_is_not() -> None:
    clock = Clock()
    mon = monitor(clock)
    refresh(mon, Upstreams(a=("m",), b=("m",)))
    down = Observation(healthy=False, models=("m",), error="ConnectError: refused", checked_at=clock.now + 1)
    stale = Observation(healthy=False, models=(), checked_at=clock.now - 1)
    assert mon.adopt({A: down, B: stale, "http://not-configured:1": down})
    assert not mon.states[A].healthy and mon.states[A].error == "ConnectError: refused"
    assert mon.states[B].healthy and mon.states[B].checked_at == clock.now
    assert not mon.adopt({A: down})  # nothing newer: nothing changes
    assert mon.routable() == {A: (), B: ("m",)}
    refresh(mon, Upstreams(a=("m",), b=("m",)))  # began before the adopted check: its answer is older news
    assert not mon.states[A].healthy and mon.states[A].checked_at == clock.now + 1


def test_a_connection_failure_wakes_the_background_checks() -> None:
    """With a 30 s interval, the monitor checks the upstream a request could not reach at once; stop ends it."""
    upstreams = Upstreams(a=("m",), b=("m",))
    mon = monitor(upstreams=upstreams, env={"KODIFY_DISCOVERY_INTERVAL": "30"}, clock=time.monotonic)

    async def until(calls: int) -> None:
        for _ in range(500):
            if upstreams.calls >= calls:
                return
            await asyncio.sleep(0.01)

    async def run() -> list[int]:
        router = Router()
        mon.start(lambda: router)
        await until(2)  # the first round: each upstream once
        seen = [upstreams.calls]
        for _ in range(2):
            before = upstreams.calls
            mon.report_failure(A, connection=True)
            await until(before + 1)
            await asyncio.sleep(0.1)
            seen.append(upstreams.calls - before)
        await mon.stop()
        assert mon._task is None
        return seen

    assert asyncio.run(run()) == [2, 1, 1]  # each wake-up: one check of the upstream that failed, none more
    assert mon.routable() == {A: ("m",), B: ("m",)}
