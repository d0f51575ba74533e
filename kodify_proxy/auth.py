"""Auth: the guide's three modes (dummy, one shared token, per-user DB tokens) and the token cache.

The gateway authenticates every client request first (`Authenticator.client`) and leaves the identity in the ASGI
scope; LiteLLM's custom_auth (`hooks.user_api_key_auth`) only hands it on. Anything else LiteLLM sees (the master
key on its admin routes) goes to LiteLLM's own auth (`custom_auth_settings: {mode: auto}`,
litellm_enterprise/proxy/auth/user_api_key_auth.py). Nothing here imports LiteLLM or FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from sqlalchemy.exc import SQLAlchemyError

from kodify_proxy.errors import StartupError, Unauthorized, UpstreamUnavailable
from kodify_proxy.settings import Settings
from kodify_proxy.users import (
    LimitOverride,
    UserDatabaseError,
    UserRecord,
    UserStore,
    hash_token,
    is_token_shaped,
)

log = logging.getLogger("kodify_proxy.auth")

AuthMode = Literal["dummy", "shared", "db"]
DB_RETRY_AFTER = 1.0  # seconds a failed DB check answers misses with 503 before the DB is tried again
_MAX_CACHED = 10_000
_DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


def select_mode(settings: Settings) -> AuthMode:
    """The guide's table 9 (settings._cross_check has already refused contradictory combinations)."""
    if settings.mtsai_auth and settings.auth_type == "DB":
        return "db"
    return "shared" if settings.vllm_api_key is not None else "dummy"


def metrics_guarded(settings: Settings) -> bool:
    """Whether GET /metrics needs its credential: wherever a client needs a token, and with KODIFY_METRICS_AUTH."""
    return select_mode(settings) != "dummy" or settings.metrics_auth


class TokenRejected(Exception):
    """The token is unknown, revoked or expired."""

    def __init__(self, reason: Literal["unknown", "revoked", "expired"], user: UserRecord | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user = user


class UserDatabaseUnavailable(Exception):
    """The token is not cached and the user database can't be asked right now."""


@dataclass(frozen=True)
class _Entry:
    user: UserRecord | None  # None: no user has this token (negative entry)
    until: float  # monotonic deadline


class TokenVerifier:
    """Token -> user on the hot path: a TTL cache (negative entries too) over single-flight DB lookups in threads.

    A revoke or rotate reaches this process at most `ttl` seconds after it commits: no entry outlives its TTL,
    and each worker process asks the database itself once its entry is stale.
    """

    def __init__(
        self,
        store: UserStore,
        ttl: float,
        negative_ttl: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl, self.negative_ttl, self.timeout = ttl, negative_ttl, timeout
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[UserRecord | None]] = {}
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kodify-users-db")
        self._down_until = 0.0
        self._down_reason: str | None = None

    async def verify(self, token: str) -> UserRecord:
        """The active user holding `token`; TokenRejected or UserDatabaseUnavailable otherwise."""
        digest = hash_token(token)
        user = await self._lookup(digest)
        if user is None or not hmac.compare_digest(user.token_sha256, digest):
            raise TokenRejected("unknown")
        status = user.status(datetime.now(UTC))
        if status != "active":
            raise TokenRejected(status, user)
        return user

    async def _lookup(self, digest: str) -> UserRecord | None:
        entry = self._cache.get(digest)
        if entry is not None and entry.until > self._clock():
            return entry.user
        if self._down_until > self._clock():
            raise UserDatabaseUnavailable(self._down_reason or "the user database is unavailable")
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(digest))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved even if all waiters left
            self._inflight[digest] = task
        return await asyncio.shield(task)

    async def _fetch(self, digest: str) -> UserRecord | None:
        loop = asyncio.get_running_loop()
        try:
            call = loop.run_in_executor(self._executor, self.store.find_by_hash, digest)
            user = await asyncio.wait_for(call, self.timeout)
        except _DB_ERRORS as exc:
            raise UserDatabaseUnavailable(self._mark_down(exc)) from None
        finally:
            self._inflight.pop(digest, None)
        self._mark_up()
        self._remember(digest, user)
        return user

    def _remember(self, digest: str, user: UserRecord | None) -> None:
        ttl = self.ttl if user is not None else self.negative_ttl
        if ttl <= 0:
            self._cache.pop(digest, None)
            return
        if len(self._cache) >= _MAX_CACHED:
            self._evict()
        self._cache.pop(digest, None)  # re-insert at the end: the dict's order is the age order
        self._cache[digest] = _Entry(user, self._clock() + ttl)

    def _evict(self) -> None:
        now = self._clock()
        self._cache = {k: e for k, e in self._cache.items() if e.until > now}
        if len(self._cache) >= _MAX_CACHED:
            self._cache = dict(list(self._cache.items())[_MAX_CACHED // 2 :])

    def _mark_down(self, exc: BaseException) -> str:
        reason = (
            str(self.store.unavailable(exc))
            if not isinstance(exc, TimeoutError)
            else (f"the user database ({self.store.where()}) did not answer within {self.timeout:g} s")
        )
        if self._down_reason is None:
            log.error("%s; cached tokens keep working until their TTL (%g s), others get 503", reason, self.ttl)
        self._down_until, self._down_reason = self._clock() + DB_RETRY_AFTER, reason
        return reason

    def _mark_up(self) -> None:
        if self._down_reason is not None:
            log.warning("The user database answers again (%s)", self.store.where())
        self._down_until, self._down_reason = 0.0, None

    @property
    def down_reason(self) -> str | None:
        """Why the user database did not answer the last time it was asked; None while it answers."""
        return self._down_reason

    async def probe(self) -> None:
        """Ask the database for a hash no user has: keeps `down_reason` current while no token needs a lookup."""
        if self._down_until > self._clock():
            return
        with contextlib.suppress(UserDatabaseUnavailable):
            await self._fetch("0" * 64)

    def close(self) -> None:
        """Stop the DB threads and close pooled connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()


def start(settings: Settings, announce: bool = True) -> TokenVerifier | None:
    """At `serve`: log the auth mode (loudly when there is none; `announce` False in workers, as `serve` did); in
    DB mode open USERS_TABLE, creating it."""
    mode = select_mode(settings)
    if mode == "db":
        return _open_verifier(settings, announce)
    if not announce:
        return None
    if mode == "dummy":
        log.warning(
            "*** AUTH IS OFF (dummy mode): MTSAI_AUTH=false and no VLLM_API_KEY, so EVERY request is accepted "
            "without a token. Set VLLM_API_KEY for one shared token, or MTSAI_AUTH=true, AUTH_TYPE=DB and DB_URL "
            "for per-user tokens ***"
        )
        return None
    if mode == "shared":
        log.info("Auth: one shared token (VLLM_API_KEY) for every client")
    return None


def _open_verifier(settings: Settings, announce: bool) -> TokenVerifier:
    assert settings.db_url is not None  # settings._cross_check guarantees it in DB mode
    store = UserStore.from_settings_values(
        settings.db_url.get_secret_value(), settings.users_table, settings.auth_db_timeout
    )
    try:
        store.ensure_table()
    except UserDatabaseError as exc:
        store.close()
        raise StartupError(f"{exc}. Start the database or fix DB_URL, then start kodify-proxy again") from None
    log.log(
        logging.INFO if announce else logging.DEBUG,
        "Auth: per-user tokens in %s; a revoke or rotate takes effect within %g s (KODIFY_AUTH_CACHE_TTL)",
        store.where(),
        settings.auth_cache_ttl,
    )
    return TokenVerifier(store, settings.auth_cache_ttl, settings.auth_negative_ttl, settings.auth_db_timeout)


IDENTITY_SCOPE_KEY: Final = "kodify.identity"  # where the gateway leaves the identity for LiteLLM's custom_auth


@dataclass(frozen=True)
class Identity:
    """Who a request is from, once authenticated: journaled, and handed to LiteLLM as its UserAPIKeyAuth."""

    user_id: str
    key_alias: str
    key_hash: str | None = None  # the token's SHA-256 (never the token) for LiteLLM's logging metadata
    master: bool = False
    limits: tuple[LimitOverride, ...] = ()  # the user's own limits (`users limit`), where they differ


ANONYMOUS: Final = Identity("anonymous", "kodify-dummy")
SHARED_USER: Final = Identity("shared", "kodify-shared-token")
MASTER: Final = Identity("litellm-master-key", "litellm-master-key", master=True)
SCRAPER: Final = Identity("metrics", "kodify-metrics-token")


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The bearer token of `Authorization: Bearer <token>` or `x-api-key: <token>`; None when neither is sent.

    Unauthorized when an Authorization header is there but not in the Bearer form.
    """
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Malformed Authorization header: expected 'Authorization: Bearer <token>'")
        return token.strip()
    api_key = (headers.get("x-api-key") or "").strip()
    return api_key or None


def _check_shared(token: str, shared: str) -> Identity:
    # Hashes first: equal lengths, so the comparison's time says nothing about the token's length either.
    if not hmac.compare_digest(hash_token(token), hash_token(shared)):
        raise Unauthorized("Invalid API key: it does not match the server's token (VLLM_API_KEY)")
    return SHARED_USER


_REJECTIONS = {
    "unknown": "Invalid API key: no user has this token (a rotated token is replaced by the new one); "
    "ask your administrator for a valid token",
    "revoked": "API key revoked: an administrator revoked this user's token; ask them for a new one "
    "(kodify-proxy users rotate)",
}


def _rejection_message(rejected: TokenRejected) -> str:
    if rejected.reason == "expired" and rejected.user is not None and rejected.user.expires_at is not None:
        when = rejected.user.expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"API key expired at {when}; ask your administrator for a new one (kodify-proxy users rotate)"
    return _REJECTIONS[rejected.reason]


async def _check_user(verifier: TokenVerifier, token: str) -> Identity:
    if not is_token_shaped(token):
        raise Unauthorized(
            "Malformed API key: user tokens look like sk-kodify-<43 characters>; check that the whole token was copied"
        )
    try:
        user = await verifier.verify(token)
    except TokenRejected as rejected:
        raise Unauthorized(_rejection_message(rejected)) from None
    except UserDatabaseUnavailable as exc:
        raise UpstreamUnavailable(
            f"Cannot check the API key right now: {exc}. Retry shortly; if it persists, ask the "
            "administrator to check the user database (DB_URL)"
        ) from None
    return Identity(user.name, "kodify-user-token", user.token_sha256, limits=user.limits)


class Authenticator:
    """The guide's three modes behind one call, for every route of the client surface."""

    def __init__(self, settings: Settings, master_key: str, verifier: TokenVerifier | None) -> None:
        self.mode = select_mode(settings)
        self._shared = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key is not None else None
        self._master = master_key.encode()
        self._metrics = settings.metrics_token.get_secret_value() if settings.metrics_token is not None else None
        self.metrics_open = not metrics_guarded(settings)
        self.verifier = verifier
        if self.mode == "db" and verifier is None:
            raise ValueError("per-user auth needs a TokenVerifier")

    def is_master(self, token: str | None) -> bool:
        """Whether `token` is LiteLLM's master key (constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), self._master)

    def scraper(self, headers: Mapping[str, str]) -> Identity:
        """GET /metrics: the metrics token (KODIFY_METRICS_TOKEN) or the master key; a client token is not enough,
        since the metrics name every upstream and count every user's requests. Open with dummy auth, whatever the
        header says (Prometheus sends `Bearer ` and an empty token file when none is set)."""
        try:
            token = presented_token(headers)
        except Unauthorized:
            if self.metrics_open:
                return ANONYMOUS
            raise
        if self.is_master(token):
            return MASTER
        metrics = self._metrics
        if metrics is not None and token is not None and hmac.compare_digest(hash_token(token), hash_token(metrics)):
            return SCRAPER
        if self.metrics_open:
            return ANONYMOUS
        raise Unauthorized(
            "GET /metrics needs Prometheus' credential: 'Authorization: Bearer <KODIFY_METRICS_TOKEN>' "
            "(or the LiteLLM master key); client tokens are not accepted here"
        )

    async def client(self, token: str | None) -> Identity:
        """The identity behind `token` on a client route; Unauthorized, or 503 when the user DB can't answer."""
        if self.is_master(token):
            return MASTER
        if self.mode == "dummy":
            return ANONYMOUS
        if token is None:
            raise Unauthorized("Missing API key: send the header 'Authorization: Bearer <token>'")
        if self.mode == "shared":
            assert self._shared is not None
            return _check_shared(token, self._shared)
        assert self.verifier is not None
        return await _check_user(self.verifier, token)
