"""The tracker hands each request on exactly once: at once when LiteLLM's event is in, else after the settle time."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from kodify_proxy.journal.record import BodyPolicy, Exchange, JournalRow
from kodify_proxy.journal.tracker import Tracker


def make_exchange(request_id: str, status: int = 200) -> Exchange:
    return Exchange(
        request_id=request_id,
        method="POST",
        route="/v1/completions",
        started_at=datetime.now(UTC),
        t0=time.perf_counter(),
        status=status,
        completed=True,
    )


def test_a_request_whose_event_came_first_is_journaled_when_it_ends() -> None:
    rows: list[JournalRow] = []

    async def scenario() -> None:
        tracker = Tracker(rows.append, BodyPolicy(), settle_seconds=60)
        exchange = make_exchange("a")
        tracker.begin(exchange)
        exchange.info.saw_success = True  # a stream's success event arrives before its last byte is sent
        tracker.updated(exchange)
        assert rows == []
        tracker.end(exchange)
        assert [r.request_id for r in rows] == ["a"]
        assert tracker.pending() == 0

    asyncio.run(scenario())


def test_an_event_after_the_end_journals_at_once_and_only_once() -> None:
    rows: list[JournalRow] = []

    async def scenario() -> None:
        tracker = Tracker(rows.append, BodyPolicy(), settle_seconds=0.2)
        exchange = make_exchange("b")
        tracker.begin(exchange)
        tracker.end(exchange)
        assert rows == []
        exchange.info.saw_success = True
        exchange.info.prompt_tokens = 5
        tracker.updated(exchange)
        assert [(r.request_id, r.prompt_tokens) for r in rows] == [("b", 5)]
        await asyncio.sleep(0.4)  # the cancelled settle timer must not journal it again
        tracker.updated(exchange)
        assert len(rows) == 1

    asyncio.run(scenario())


def test_a_request_without_an_event_is_journaled_after_the_settle_time() -> None:
    rows: list[JournalRow] = []

    async def scenario() -> None:
        tracker = Tracker(rows.append, BodyPolicy(), settle_seconds=0.2)
        exchange = make_exchange("c")
        tracker.begin(exchange)
        tracker.end(exchange)
        await asyncio.sleep(0.1)
        assert rows == []
        await asyncio.sleep(0.3)
        assert [r.request_id for r in rows] == ["c"]
        assert tracker.find("c") is None

    asyncio.run(scenario())


def test_drain_journals_everything_open_at_shutdown() -> None:
    rows: list[JournalRow] = []
    tracker = Tracker(rows.append, BodyPolicy(), settle_seconds=60)
    waiting, running = make_exchange("d"), make_exchange("e")
    running.completed = False
    tracker.begin(waiting)
    tracker.begin(running)
    tracker.end(waiting)  # no running loop here: journaled at once rather than never
    assert tracker.drain() == 1
    assert sorted(r.request_id for r in rows) == ["d", "e"]
    assert rows[-1].error_type == "incomplete_response"
