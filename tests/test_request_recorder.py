"""The recorder hands each request on exactly once: at once when nothing is awaited, when LiteLLM's event arrives,
or after the settle time; and its ASGI wrappers see what the client sees."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from starlette.types import Message

from kodify_proxy.exchange import Exchange
from kodify_proxy.request_recorder import RequestRecorder, observed_receive, observed_send

SCOPE = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}


@dataclass
class FakeTimers:
    """Scheduled callbacks, fired by the test instead of by time passing."""

    pending: list[tuple[float, Callable[[], None], list[bool]]] = field(default_factory=list)

    def later(self, delay: float, callback: Callable[[], None]) -> FakeTimers.Handle:
        cancelled = [False]
        self.pending.append((delay, callback, cancelled))
        return FakeTimers.Handle(cancelled)

    def fire_all(self) -> None:
        for _, callback, cancelled in self.pending:
            if not cancelled[0]:
                callback()

    @dataclass
    class Handle:
        cancelled: list[bool]

        def cancel(self) -> None:
            self.cancelled[0] = True


def make(timers: FakeTimers, seen: list[str], settle: float = 3.0) -> RequestRecorder:
    sinks = [lambda e: seen.append(e.request_id)]
    return RequestRecorder(sinks, settle_seconds=settle, clock=lambda: 1.0, later=timers.later)


def test_a_request_we_served_is_recorded_when_it_ends() -> None:
    timers, seen = FakeTimers(), list[str]()
    recorder = make(timers, seen)
    exchange = recorder.begin("/v1/completions", SCOPE)
    assert recorder.find(exchange.request_id) is exchange
    recorder.end(exchange)
    assert seen == [exchange.request_id] and recorder.pending() == 0 and timers.pending == []


def test_a_litellm_request_whose_event_came_first_is_recorded_when_it_ends() -> None:
    timers, seen = FakeTimers(), list[str]()
    recorder = make(timers, seen)
    exchange = recorder.begin("/v1/chat/completions", SCOPE)
    exchange.awaiting_litellm, exchange.status, exchange.saw_success = True, 200, True
    recorder.updated(exchange)  # a stream's success event arrives before its last byte is sent
    assert seen == []
    recorder.end(exchange)
    assert seen == [exchange.request_id]


def test_an_event_after_the_end_records_at_once_and_only_once() -> None:
    timers, seen = FakeTimers(), list[str]()
    recorder = make(timers, seen)
    exchange = recorder.begin("/v1/chat/completions", SCOPE)
    exchange.awaiting_litellm, exchange.status = True, 200
    recorder.end(exchange)
    assert seen == [] and [delay for delay, _, _ in timers.pending] == [3.0]
    exchange.saw_success = True
    recorder.updated(exchange)
    assert seen == [exchange.request_id]
    timers.fire_all()  # the settle timer was called off: no second record
    recorder.updated(exchange)
    assert seen == [exchange.request_id]


def test_a_request_without_its_event_is_recorded_after_the_settle_time() -> None:
    timers, seen = FakeTimers(), list[str]()
    recorder = make(timers, seen, settle=0.5)
    exchange = recorder.begin("/v1/chat/completions", SCOPE)
    exchange.awaiting_litellm, exchange.status = True, 200
    recorder.end(exchange)
    assert seen == []
    timers.fire_all()
    assert seen == [exchange.request_id] and recorder.find(exchange.request_id) is None


def test_drain_records_everything_open_at_shutdown() -> None:
    timers, seen = FakeTimers(), list[str]()
    recorder = make(timers, seen)
    waiting, running = recorder.begin("/a", SCOPE), recorder.begin("/b", SCOPE)
    waiting.awaiting_litellm = True
    recorder.end(waiting)
    assert recorder.drain() == 2
    assert sorted(seen) == sorted([waiting.request_id, running.request_id])
    assert running.ended_at == 1.0


def test_an_untracked_exchange_is_never_recorded() -> None:
    timers, seen = FakeTimers(), list[str]()
    recorder = make(timers, seen)
    exchange = recorder.begin("/health", SCOPE, tracked=False)
    recorder.end(exchange)
    assert seen == [] and recorder.drain() == 0


def test_a_failing_sink_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def broken(exchange: Exchange) -> None:
        raise ValueError("bug")

    recorder = RequestRecorder([broken, lambda e: seen.append(e.request_id)])
    exchange = recorder.begin("/v1/models", SCOPE)
    recorder.end(exchange)
    assert seen == [exchange.request_id] and "Could not record request" in caplog.text


def test_the_wrappers_see_status_bytes_first_byte_end_and_a_client_leaving() -> None:
    times = iter([2.0, 3.0])
    exchange = RequestRecorder([]).begin("/v1/completions", SCOPE)
    exchange.capture_bytes = 4
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def scenario() -> None:
        observed = observed_send(exchange, send, clock=lambda: next(times))
        await observed({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"a/b")]})
        await observed({"type": "http.response.body", "body": b"abc", "more_body": True})
        assert (await observed_receive(exchange, receive)())["type"] == "http.disconnect"
        await observed({"type": "http.response.body", "body": b"def", "more_body": False})

    asyncio.run(scenario())
    assert (exchange.status, exchange.content_type, exchange.response_bytes) == (201, "a/b", 6)
    assert (bytes(exchange.response_body), exchange.first_byte_at, exchange.ended_at) == (b"abcd", 2.0, 3.0)
    assert exchange.disconnected and not exchange.completed and exchange.final_status() == 499
    assert len(sent) == 3
