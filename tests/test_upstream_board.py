"""The upstream board on its own: merged per upstream by check time, written whole, read only when it changed, the
periodic checks held by one process at a time; then two monitors of one server sharing it (upstreams answered by an
httpx transport, the network boundary), as two workers do. Real processes: tests/test_workers.py."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from kodify_proxy.settings import load_settings
from kodify_proxy.upstream_board import BOARD_NAME, Observation, UpstreamBoard, merge, parse_board
from kodify_proxy.upstream_monitor import UpstreamMonitor
from kodify_proxy.upstreams import UpstreamState, parse_config

A, B = "http://a:8000", "http://b:8000"
CONFIG = parse_config(f"upstreams:\n  {A}:\n  {B}:\n", Path("config.yml"))


def seen(healthy: bool, at: float, *models: str) -> Observation:
    return Observation(healthy=healthy, models=models, error=None if healthy else "ConnectError", checked_at=at)


def test_each_upstream_keeps_the_observation_whose_check_began_last() -> None:
    current = {A: seen(True, 10, "m"), B: seen(False, 12, "m")}
    merged = merge(current, {A: seen(False, 11, "m"), B: seen(True, 11, "m")})
    assert merged == {A: seen(False, 11, "m"), B: seen(False, 12, "m")}
    assert merge({}, {A: seen(True, 1)}) == {A: seen(True, 1)}


def test_an_empty_or_foreign_file_is_an_empty_board() -> None:
    assert parse_board(b"") == {} and parse_board(b"{not json") == {} and parse_board(b'{"upstreams": 3}') == {}
    assert parse_board(b'{"upstreams": {"http://a:8000": {"healthy": true, "checked_at": 5}}}') == {A: seen(True, 5)}


def test_what_one_process_publishes_another_reads_once_merged_with_what_was_there(tmp_path: Path) -> None:
    writer, reader = UpstreamBoard(tmp_path), UpstreamBoard(tmp_path)
    assert reader.news() is None  # no board yet: nothing new
    writer.reset({A: seen(True, 10, "m"), B: seen(True, 10, "m")})
    assert reader.news() == {A: seen(True, 10, "m"), B: seen(True, 10, "m")}
    assert reader.news() is None  # unchanged since the last read
    writer.publish({A: seen(False, 11, "m")})
    reader.publish({A: seen(True, 9, "m"), B: seen(False, 12, "m")})  # A's is older than the board's: kept out
    assert writer.news() == {A: seen(False, 11, "m"), B: seen(False, 12, "m")}
    assert sorted(p.name for p in tmp_path.iterdir()) == [BOARD_NAME, "upstreams.lock"]  # no draft left


def test_one_process_leads_the_periodic_checks_and_another_takes_over_when_it_ends(tmp_path: Path) -> None:
    first, second = UpstreamBoard(tmp_path), UpstreamBoard(tmp_path)  # two descriptors: as two processes
    assert first.lead() and first.lead()
    assert not second.lead() and not second.lead()
    first.close()  # the leading worker died: the kernel freed its lock
    assert second.lead() and not first.lead()
    second.close()
    first.close()


class Upstreams:
    """GET /v1/models of each upstream as one worker reaches them: the models, or a refused connection for one that
    is down (`down` shared by every worker's), and how many checks this worker made of each."""

    def __init__(self, down: set[str]) -> None:
        self.down = down
        self.calls: dict[str, int] = {A: 0, B: 0}

    def handler(self, request: httpx.Request) -> httpx.Response:
        url = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.calls[url] += 1
        if url in self.down:
            raise httpx.ConnectError("Connection refused", request=request)
        return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})


class Router:
    """Records what a monitor asks of its worker's LiteLLM Router (its two public methods)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def upsert_deployment(self, deployment: Any) -> None:
        self.calls.append(("upsert", deployment.model_info.id))

    def delete_deployment(self, id: str) -> None:
        self.calls.append(("delete", id))


def worker(upstreams: Upstreams) -> UpstreamMonitor:
    """A worker's monitor, from the state discovery found before the workers started (both upstreams up), its
    router holding the deployments of that state."""
    states = [UpstreamState(u, healthy=True, models=("m",), checked_at=time.monotonic()) for u in CONFIG.upstreams]
    settings = load_settings({"KODIFY_DISCOVERY_INTERVAL": "30", "KODIFY_DOWN_RECHECK_INTERVAL": "0.2"})
    monitor = UpstreamMonitor(CONFIG, settings, states, transport=httpx.MockTransport(upstreams.handler))
    monitor.mark_registered()
    return monitor


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.01)


def test_a_failure_one_worker_sees_is_every_workers_and_so_is_the_return(tmp_path: Path) -> None:
    down: set[str] = set()
    reached = [Upstreams(down), Upstreams(down)]
    workers = [worker(upstreams) for upstreams in reached]

    def agree(healthy: bool, among: list[UpstreamMonitor] = workers) -> Callable[[], bool]:
        return lambda: all(m.states[A].healthy == healthy for m in among)

    routers = [Router(), Router()]

    async def run() -> None:
        boards = [UpstreamBoard(tmp_path), UpstreamBoard(tmp_path)]
        for monitor, board, router in zip(workers, boards, routers, strict=True):
            monitor.start(functools.partial(lambda r: r, router), board)
        await until(lambda: any(board.lead() for board in boards))
        prober = next(i for i, board in enumerate(boards) if board.lead())
        other = 1 - prober
        down.add(A)
        workers[other].report_failure(A, connection=True)  # a request, in the worker not making the periodic checks
        await until(agree(False))
        # LiteLLM's router of each worker follows: A's deployment leaves, B's (now alone for `m`) is updated
        await until(lambda: all(r.calls == [("upsert", f"{B}#m"), ("delete", f"{A}#m")] for r in routers))
        rechecks = reached[prober].calls[A]
        await until(lambda: reached[prober].calls[A] >= rechecks + 2)  # down: rechecked every 0.2 s...
        assert reached[other].calls == {A: 1, B: 0}  # ...by the prober alone; the other checked once, when asked
        assert reached[prober].calls[B] == 0  # B is up: not due for 30 s
        await workers[prober].stop()  # the prober's worker ends: the other one takes the checks over
        down.clear()
        await until(agree(True, [workers[other]]))
        assert reached[other].calls[A] > 1
        await workers[other].stop()

    asyncio.run(run())
