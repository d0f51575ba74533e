"""Fair share: per-identity limits on each kind of work (autocompletion, chat, embeddings), so one user's script
cannot take the GPU from everyone else.

Each kind has three limits (KODIFY_LIMIT_<KIND>_RPM, _CONCURRENCY, _TOKENS_PER_DAY; unset = unlimited): requests in
the last 60 s (a sliding window), requests in flight, and prompt + completion tokens since 00:00 UTC (as the upstream
reported them; a request is refused once the day's total has reached the limit). The identity is the user of a
per-user token, else the client's address (uvicorn's, after X-Forwarded-For from FORWARDED_ALLOW_IPS only).

With REDIS_URL every process and replica shares one count: each check is one Lua script (atomic, on Redis's clock),
so there is no read-modify-write race. Without it each server process counts alone: exact with one worker, and with
N workers a user gets up to N times each limit. If Redis cannot be reached the request is let through (fail open:
limits are about fairness, not security), logged at most every 10 s and counted in
kodify_rate_limiter_errors_total; requests in flight then expire on their own (their lease).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from kodify_proxy.errors import KodifyError
from kodify_proxy.exchange import Exchange
from kodify_proxy.settings import Settings
from kodify_proxy.users import LIMIT_KINDS, UNLIMITED, LimitKind, LimitOverride

log = logging.getLogger("kodify_proxy.limits")

Kind = LimitKind
KINDS: Final = LIMIT_KINDS
# The limit a refusal names (in its `code`) -> the Limits field it comes from.
LIMIT_FIELD: Final = {"requests_per_minute": "rpm", "concurrency": "concurrency", "tokens_per_day": "tokens_per_day"}
WINDOW_MS: Final = 60_000
DAY_MS: Final = 86_400_000
CONCURRENCY_RETRY: Final = 1  # seconds: a slot frees when one of the identity's requests ends
ERROR_LOG_EVERY: Final = 10.0


@dataclass(frozen=True)
class Limits:
    """One kind's limits for one identity; None is unlimited."""

    rpm: int | None = None
    concurrency: int | None = None
    tokens_per_day: int | None = None

    def any(self) -> bool:
        """Whether anything is limited."""
        return self.rpm is not None or self.concurrency is not None or self.tokens_per_day is not None

    def overridden(self, own: LimitOverride | None) -> Limits:
        """These defaults with a user's own limits laid over them (their None: the default; 0: unlimited)."""
        if own is None:
            return self

        def pick(default: int | None, mine: int | None) -> int | None:
            return default if mine is None else (None if mine == UNLIMITED else mine)

        return Limits(
            pick(self.rpm, own.rpm),
            pick(self.concurrency, own.concurrency),
            pick(self.tokens_per_day, own.tokens_per_day),
        )


@dataclass(frozen=True)
class Verdict:
    """A check's answer: `limit` names the limit that refused (None: admitted); `retry_ms` when to try again."""

    limit: str | None = None
    retry_ms: int = 0


class RateLimited(KodifyError):
    """A limit of the caller's is reached (429, with Retry-After)."""

    status_code = 429

    def __init__(self, kind: Kind, limit: str, value: int, retry_after: int, who: str) -> None:
        what = {
            "requests_per_minute": f"{value} {kind} requests per minute",
            "concurrency": f"{value} {kind} requests at once",
            "tokens_per_day": f"{value} {kind} tokens per day (UTC)",
        }[limit]
        super().__init__(
            f"Rate limit reached for {who}: {what}. Retry in {retry_after} s; the administrator sets these limits "
            "(KODIFY_LIMIT_*, `kodify-proxy users limit`)",
            headers={"Retry-After": str(retry_after)},
        )
        self.limit_code = f"{kind}_{limit}"

    @property
    def code(self) -> str:
        """`<kind>_<limit>`, e.g. `chat_requests_per_minute`."""
        return self.limit_code


class Counts(Protocol):
    """Where the counting happens: this process, or Redis."""

    async def admit(self, key: str, limits: Limits, request_id: str, lease_ms: int) -> Verdict: ...

    async def release(self, key: str, request_id: str, tokens: int) -> None: ...


class LocalCounts:
    """Counts kept in this process (no REDIS_URL): exact for one server process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._window: defaultdict[str, deque[float]] = defaultdict(deque)
        self._in_flight: defaultdict[str, dict[str, float]] = defaultdict(dict)
        self._tokens: dict[str, tuple[int, int]] = {}  # key -> (day, tokens)

    def _now_ms(self) -> float:
        return self._clock() * 1000

    async def admit(self, key: str, limits: Limits, request_id: str, lease_ms: int) -> Verdict:
        """Admit and count the request, or say which limit refuses it."""
        now = self._now_ms()
        day, used = self._tokens.get(key, (-1, 0))
        if limits.tokens_per_day is not None and day == int(now // DAY_MS) and used >= limits.tokens_per_day:
            return Verdict("tokens_per_day", int(DAY_MS - now % DAY_MS))
        flights = self._in_flight[key]
        for rid in [rid for rid, until in flights.items() if until <= now]:
            del flights[rid]
        if limits.concurrency is not None and len(flights) >= limits.concurrency:
            return Verdict("concurrency", CONCURRENCY_RETRY * 1000)
        window = self._window[key]
        while window and window[0] <= now - WINDOW_MS:
            window.popleft()
        if limits.rpm is not None:
            if len(window) >= limits.rpm:
                return Verdict("requests_per_minute", int(window[0] + WINDOW_MS - now))
            window.append(now)
        if limits.concurrency is not None:
            flights[request_id] = now + lease_ms
        return Verdict()

    async def release(self, key: str, request_id: str, tokens: int) -> None:
        """The request ended: its slot is free; its tokens count for today."""
        self._in_flight[key].pop(request_id, None)
        if tokens > 0:
            today = int(self._now_ms() // DAY_MS)
            day, used = self._tokens.get(key, (today, 0))
            self._tokens[key] = (today, (used if day == today else 0) + tokens)


# KEYS: the window (zset), requests in flight (zset, score = lease end), tokens today (hash: day, used).
# ARGV: request id, rpm, concurrency, tokens per day (0 = unlimited), lease ms. Time is Redis's own.
_ADMIT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, conc, tpd = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if tpd > 0 and tonumber(redis.call('HGET', KEYS[3], 'day') or '-1') == math.floor(now / 86400000)
   and tonumber(redis.call('HGET', KEYS[3], 'used') or '0') >= tpd then
  return {'tokens_per_day', 86400000 - now % 86400000}
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= conc then return {'concurrency', 1000} end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'requests_per_minute', tonumber(oldest[2]) + 60000 - now}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 60000)
end
if conc > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[1])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
end
return {'', 0}
"""
# KEYS: requests in flight, tokens today. ARGV: request id, tokens.
_RELEASE: Final = """
redis.call('ZREM', KEYS[1], ARGV[1])
local tokens = tonumber(ARGV[2])
if tokens > 0 then
  local t = redis.call('TIME')
  local day = math.floor((tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) / 86400000)
  if tonumber(redis.call('HGET', KEYS[2], 'day') or '-1') ~= day then
    redis.call('HSET', KEYS[2], 'day', day, 'used', 0)
  end
  redis.call('HINCRBY', KEYS[2], 'used', tokens)
  redis.call('PEXPIRE', KEYS[2], 2 * 86400000)
end
return 0
"""


class RedisCounts:
    """Counts in Redis (REDIS_URL), shared by every worker and replica."""

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        import redis.asyncio as redis

        self._client: Any = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._admit = self._client.register_script(_ADMIT)
        self._release = self._client.register_script(_RELEASE)

    @staticmethod
    def _keys(key: str) -> tuple[str, str, str]:
        base = f"kodify:limit:{{{key}}}"  # one hash slot per identity and kind (Redis Cluster)
        return f"{base}:window", f"{base}:flight", f"{base}:tokens"

    async def admit(self, key: str, limits: Limits, request_id: str, lease_ms: int) -> Verdict:
        """One atomic check-and-count."""
        args: list[str | int] = [
            request_id,
            limits.rpm or 0,
            limits.concurrency or 0,
            limits.tokens_per_day or 0,
            lease_ms,
        ]
        limit, retry_ms = await self._admit(keys=self._keys(key), args=args)
        name = limit.decode() if isinstance(limit, bytes) else str(limit)
        return Verdict(name or None, int(retry_ms))

    async def release(self, key: str, request_id: str, tokens: int) -> None:
        """The slot freed and the tokens counted, atomically."""
        _, flight, today = self._keys(key)
        await self._release(keys=(flight, today), args=[request_id, tokens])

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


ROUTE_KINDS: Final[dict[str, Kind]] = {
    "completions": "completions",
    "tabby_completions": "completions",
    "chat": "chat",
    "embeddings": "embeddings",
}


def limits_from(settings: Settings) -> dict[Kind, Limits]:
    """KODIFY_LIMIT_<KIND>_* for each kind."""
    return {
        kind: Limits(
            getattr(settings, f"limit_{kind}_rpm"),
            getattr(settings, f"limit_{kind}_concurrency"),
            getattr(settings, f"limit_{kind}_tokens_per_day"),
        )
        for kind in KINDS
    }


def build_limiter(settings: Settings, on_error: Callable[[], None]) -> Limiter:
    """The limiter `serve` runs with: Redis' counts when REDIS_URL is set, else this process's."""
    counts: Counts = (
        RedisCounts(settings.redis_url.get_secret_value()) if settings.redis_url is not None else LocalCounts()
    )
    lease = settings.request_timeout + 60  # a request in flight whose process died frees its slot after this
    return Limiter(limits_from(settings), counts, lease, on_error)


class Limiter:
    """The limits of every kind, and the counts they are checked against."""

    def __init__(
        self,
        defaults: dict[Kind, Limits],
        counts: Counts,
        lease_seconds: float,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.defaults = defaults
        self.counts = counts
        self._lease_ms = int(lease_seconds * 1000)
        self._on_error = on_error
        self._last_error_log = 0.0
        self._releasing: set[asyncio.Task[None]] = set()
        self._active = any(limits.any() for limits in defaults.values())  # the defaults never change

    def active(self) -> bool:
        """Whether any default limit is set at all (else only users with limits of their own are checked)."""
        return self._active

    async def admit(self, key: str, kind: Kind, request_id: str, who: str, own: tuple[LimitOverride, ...] = ()) -> bool:
        """Count the request in, or raise RateLimited; False when nothing was counted (no limit, or the counts
        could not be reached), so there is nothing to release. `own`: the user's own limits (`users limit`)."""
        limits = self.defaults[kind].overridden(next((o for o in own if o.kind == kind), None))
        if not limits.any():
            return False
        try:
            verdict = await self.counts.admit(f"{kind}:{key}", limits, request_id, self._lease_ms)
        except Exception as exc:  # Redis down or slow: fail open
            self._failed("check", exc)
            return False
        if verdict.limit is None:
            return True
        value = getattr(limits, LIMIT_FIELD[verdict.limit])
        raise RateLimited(kind, verdict.limit, value, max(1, math.ceil(verdict.retry_ms / 1000)), who)

    async def release(self, key: str, kind: str, request_id: str, tokens: int) -> None:
        """The request ended (answered, failed, or its client left)."""
        try:
            await self.counts.release(f"{kind}:{key}", request_id, tokens)
        except Exception as exc:
            self._failed("release", exc)

    def settle(self, exchange: Exchange) -> None:
        """The request recorder's sink (its record is final: the response ended and its tokens are known): free the
        request's slot and count its tokens."""
        if exchange.limited is None:
            return
        key, kind = exchange.limited
        tokens = (exchange.prompt_tokens or 0) + (exchange.completion_tokens or 0)
        task = asyncio.get_running_loop().create_task(self.release(key, kind, exchange.request_id, tokens))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def _failed(self, what: str, exc: Exception) -> None:
        self._on_error()
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_EVERY:
            self._last_error_log = now
            log.error(
                "Rate limiter: the %s failed (%s: %s); requests are let through unlimited until the counts are "
                "reachable again (check REDIS_URL)",
                what,
                type(exc).__name__,
                exc,
            )

    async def aclose(self) -> None:
        """Finish the releases under way, then close Redis' connections, if any."""
        await asyncio.gather(*self._releasing, return_exceptions=True)
        if isinstance(self.counts, RedisCounts):
            await self.counts.aclose()
