"""Fair share: the limiter's counts at their boundaries, in this process (a clock injected) and in the real Redis
(127.0.0.1:6379, keys of their own); the 429 a client gets. Whole servers: tests/test_limits_proxy.py."""

from __future__ import annotations

import asyncio
import os
import uuid

import orjson
import pytest

from kodify_proxy.limits import DAY_MS, Kind, Limiter, Limits, LocalCounts, RateLimited, RedisCounts
from kodify_proxy.users import UNLIMITED, LimitOverride

REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # seconds

    def __call__(self) -> float:
        return self.now


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_requests_per_minute_n_allowed_then_refused_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    counts = LocalCounts(clock)
    limits = Limits(rpm=3)

    async def scenario() -> list[tuple[str | None, int]]:
        seen = []
        for step in range(3):
            seen.append(await counts.admit("k", limits, f"r{step}", 60_000))
            clock.now += 10
        seen.append(await counts.admit("k", limits, "r3", 60_000))  # 30 s after the first
        clock.now += 29.9
        seen.append(await counts.admit("k", limits, "r4", 60_000))  # 59.9 s after the first: still in the window
        clock.now += 0.2
        seen.append(await counts.admit("k", limits, "r5", 60_000))  # the first left it
        return [(v.limit, v.retry_ms) for v in seen]

    assert run(scenario()) == [
        (None, 0),
        (None, 0),
        (None, 0),
        ("requests_per_minute", 30_000),
        ("requests_per_minute", 100),
        (None, 0),
    ]


def test_concurrency_counts_requests_in_flight_and_frees_on_release_or_lease_end() -> None:
    clock = Clock()
    counts = LocalCounts(clock)
    limits = Limits(concurrency=2)

    async def scenario() -> list[str | None]:
        seen = [(await counts.admit("k", limits, rid, 5_000)).limit for rid in ("a", "b", "c")]
        await counts.release("k", "a", 0)
        seen.append((await counts.admit("k", limits, "d", 5_000)).limit)  # a's slot
        seen.append((await counts.admit("k", limits, "e", 5_000)).limit)
        clock.now += 5.001  # b and d were never released (their process died): their leases end
        seen.append((await counts.admit("k", limits, "f", 5_000)).limit)
        return seen

    assert run(scenario()) == [None, None, "concurrency", None, "concurrency", None]


def test_tokens_per_day_refuse_once_reached_and_start_again_at_midnight_utc() -> None:
    clock = Clock()
    clock.now = (DAY_MS * 20_000 + DAY_MS - 3_600_000) / 1000  # 23:00 UTC
    counts = LocalCounts(clock)
    limits = Limits(tokens_per_day=100)

    async def scenario() -> list[tuple[str | None, int]]:
        seen = [await counts.admit("k", limits, "a", 1000)]
        await counts.release("k", "a", 99)
        seen.append(await counts.admit("k", limits, "b", 1000))  # 99 < 100: admitted (and may go over)
        await counts.release("k", "b", 30)
        seen.append(await counts.admit("k", limits, "c", 1000))
        clock.now += 3600  # 00:00 UTC
        seen.append(await counts.admit("k", limits, "d", 1000))
        return [(v.limit, v.retry_ms) for v in seen]

    assert run(scenario()) == [(None, 0), (None, 0), ("tokens_per_day", 3_600_000), (None, 0)]


def test_each_identity_and_kind_counts_alone() -> None:
    counts = LocalCounts(Clock())
    limits = Limits(rpm=1)

    async def scenario() -> list[str | None]:
        keys = ["chat:alice", "chat:bob", "completions:alice", "chat:alice"]
        return [(await counts.admit(key, limits, uuid.uuid4().hex, 1000)).limit for key in keys]

    assert run(scenario()) == [None, None, None, "requests_per_minute"]


# --- Redis: the same semantics in one atomic script each -------------------------------------------------------------


def test_redis_counts_the_same_at_each_boundary() -> None:
    async def scenario() -> list[str | None]:
        counts = RedisCounts(REDIS)
        key = f"test:{uuid.uuid4().hex}"
        seen = []
        try:
            for rid in ("a", "b", "c", "d"):  # rpm 3
                seen.append((await counts.admit(key + ":rpm", Limits(rpm=3), rid, 10_000)).limit)
            for rid in ("a", "b", "c"):  # concurrency 2
                seen.append((await counts.admit(key + ":conc", Limits(concurrency=2), rid, 10_000)).limit)
            await counts.release(key + ":conc", "a", 0)
            seen.append((await counts.admit(key + ":conc", Limits(concurrency=2), "d", 10_000)).limit)
            tokens = Limits(tokens_per_day=50)
            seen.append((await counts.admit(key + ":tok", tokens, "a", 10_000)).limit)
            await counts.release(key + ":tok", "a", 50)
            refused = await counts.admit(key + ":tok", tokens, "b", 10_000)
            seen.append(refused.limit)
            assert 0 < refused.retry_ms <= DAY_MS
        finally:
            await counts.aclose()
        return seen

    assert run(scenario()) == [
        None,
        None,
        None,
        "requests_per_minute",
        None,
        None,
        "concurrency",
        None,
        None,
        "tokens_per_day",
    ]


def test_redis_retry_after_is_when_the_oldest_request_leaves_the_window() -> None:
    async def scenario() -> int:
        counts = RedisCounts(REDIS)
        key = f"test:{uuid.uuid4().hex}"
        try:
            await counts.admit(key, Limits(rpm=1), "a", 1000)
            await asyncio.sleep(0.3)
            return (await counts.admit(key, Limits(rpm=1), "b", 1000)).retry_ms
        finally:
            await counts.aclose()

    retry_ms = run(scenario())
    assert isinstance(retry_ms, int) and 59_000 <= retry_ms <= 59_800


# --- what a client gets, and when the counts are out of reach -------------------------------------------------------


def test_the_429_names_the_limit_and_when_to_retry() -> None:
    refused = RateLimited("chat", "requests_per_minute", 20, 12, "user alice")
    assert refused.status_code == 429 and refused.headers == {"Retry-After": "12"}
    assert orjson.loads(refused.render()) == {
        "error": {
            "message": "Rate limit reached for user alice: 20 chat requests per minute. Retry in 12 s; the "
            "administrator sets these limits (KODIFY_LIMIT_*, `kodify-proxy users limit`)",
            "type": "rate_limit_error",
            "param": None,
            "code": "chat_requests_per_minute",
        }
    }


def test_unreachable_counts_let_requests_through_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[int] = []
    defaults: dict[Kind, Limits] = {"completions": Limits(), "chat": Limits(rpm=1), "embeddings": Limits()}
    limiter = Limiter(defaults, RedisCounts("redis://127.0.0.1:1/0", timeout=0.2), 60, lambda: errors.append(1))

    async def scenario() -> list[bool]:
        try:
            return [await limiter.admit("addr:x", "chat", uuid.uuid4().hex, "client x") for _ in range(3)]
        finally:
            await limiter.aclose()

    assert run(scenario()) == [False, False, False]  # let through, nothing counted to release
    assert len(errors) == 3
    assert sum("Rate limiter: the check failed" in r.message for r in caplog.records) == 1  # at most every 10 s


def test_a_users_own_limits_lie_over_the_defaults() -> None:
    defaults = Limits(rpm=5, concurrency=2, tokens_per_day=1000)
    assert defaults.overridden(None) == defaults
    assert defaults.overridden(LimitOverride("chat", rpm=1)) == Limits(1, 2, 1000)
    assert defaults.overridden(LimitOverride("chat", concurrency=UNLIMITED, tokens_per_day=50)) == Limits(5, None, 50)
    assert Limits().overridden(LimitOverride("chat", rpm=3)) == Limits(rpm=3)


def test_no_limit_set_means_no_check_at_all() -> None:
    defaults: dict[Kind, Limits] = {"completions": Limits(), "chat": Limits(), "embeddings": Limits()}
    limiter = Limiter(defaults, RedisCounts("redis://127.0.0.1:1/0", timeout=0.2), 60)
    assert not limiter.active()
    assert run(limiter.admit("addr:x", "chat", "r", "client x")) is False
    run(limiter.aclose())
