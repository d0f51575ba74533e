"""LiteLLM custom_auth: the guide's three modes (dummy, one shared token, per-user DB tokens) and the token cache.

Rejections raise `ProxyException` (a hard reject). Any other exception makes LiteLLM fall back to its own auth
(`custom_auth_settings: {mode: auto}`, litellm_enterprise/proxy/auth/user_api_key_auth.py), which we use for the
master key only, so LiteLLM's admin routes and UI keep working with it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from fastapi import HTTPException, Request
from litellm.proxy._types import LitellmUserRoles, ProxyException, UserAPIKeyAuth
from litellm.proxy.auth.auth_utils import get_request_route
from litellm.proxy.auth.route_checks import RouteChecks
from sqlalchemy.exc import SQLAlchemyError

from kodify_proxy import runtime
from kodify_proxy.settings import Settings
from kodify_proxy.users import UserDatabaseError, UserRecord, UserStore, hash_token, is_token_shaped

log = logging.getLogger("kodify_proxy.auth")

AuthMode = Literal["dummy", "shared", "db"]
DB_RETRY_AFTER = 1.0  # seconds a failed DB check answers misses with 503 before the DB is tried again
_MAX_CACHED = 10_000
_DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError)
# Routes besides LiteLLM's model routes (RouteChecks.is_llm_api_route) that clients may use: model listing and the
# Tabby API. Every other LiteLLM route is administration and needs the master key.
CLIENT_ROUTES = frozenset({"/v1/models", "/models", "/v1/health", "/v1/events", "/v1beta/server_setting"})
_ALLOWED_ROUTES = ["llm_api_routes", *sorted(CLIENT_ROUTES)]  # "llm_api_routes": a LiteLLMRoutes group name


def select_mode(settings: Settings) -> AuthMode:
    """The guide's table 9 (settings._cross_check has already refused contradictory combinations)."""
    if settings.mtsai_auth and settings.auth_type == "DB":
        return "db"
    return "shared" if settings.vllm_api_key is not None else "dummy"


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

    def close(self) -> None:
        """Stop the DB threads and close pooled connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()


def start(settings: Settings) -> TokenVerifier | None:
    """At `serve`: log the auth mode (loudly when there is none); in DB mode open USERS_TABLE, creating it."""
    mode = select_mode(settings)
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
    return _open_verifier(settings)


def _open_verifier(settings: Settings) -> TokenVerifier:
    from kodify_proxy.serving import StartupError

    assert settings.db_url is not None  # settings._cross_check guarantees it in DB mode
    store = UserStore.from_settings_values(
        settings.db_url.get_secret_value(), settings.users_table, settings.auth_db_timeout
    )
    try:
        store.ensure_table()
    except UserDatabaseError as exc:
        store.close()
        raise StartupError(f"{exc}. Start the database or fix DB_URL, then start kodify-proxy again") from None
    log.info(
        "Auth: per-user tokens in %s; a revoke or rotate takes effect within %g s (KODIFY_AUTH_CACHE_TTL)",
        store.where(),
        settings.auth_cache_ttl,
    )
    return TokenVerifier(store, settings.auth_cache_ttl, settings.auth_negative_ttl, settings.auth_db_timeout)


def _unauthorized(message: str) -> ProxyException:
    return ProxyException(message=message, type="auth_error", param=None, code=401, openai_code="invalid_api_key")


def presented_token(request: Request, api_key: str | None) -> str:
    """The token LiteLLM extracted; 401 telling a missing header from a malformed one."""
    token = (api_key or "").strip()
    if token:
        return token
    if request.headers.get("authorization") is None and request.headers.get("x-api-key") is None:
        raise _unauthorized("Missing API key: send the header 'Authorization: Bearer <token>'")
    raise _unauthorized("Malformed Authorization header: expected 'Authorization: Bearer <token>'")


def client_may_use(route: str) -> bool:
    """Whether a client (not the master key) may call `route`: model routes and CLIENT_ROUTES."""
    return route in CLIENT_ROUTES or RouteChecks.is_llm_api_route(route=route)


def check_route(request: Request) -> None:
    """403 for a client on LiteLLM's administration routes."""
    # LiteLLM's own check (custom_auth_run_common_checks) raises a bare Exception there, which becomes a plain-text
    # 500 unless the `prisma` package is installed (litellm/proxy/auth/auth_exception_handler.py::_as_proxy_exception).
    route = get_request_route(request)
    if not client_may_use(route):
        raise ProxyException(
            f"{route} is a LiteLLM administration route: call it with the LiteLLM master key (LITELLM_MASTER_KEY, "
            "or the master_key file in the state directory); client tokens reach the model routes and /v1/models",
            type="auth_error",
            param=None,
            code=403,
        )


def _user(user_id: str, alias: str, key_hash: str | None = None) -> UserAPIKeyAuth:
    # A new object per request: LiteLLM mutates the one we return. api_key is a hash, never the token
    # (it reaches logging metadata as user_api_key_hash; LiteLLM keeps values that don't start with sk- as is).
    # allowed_routes lets LiteLLM's common checks pass our non-model CLIENT_ROUTES too (route_checks.py).
    return UserAPIKeyAuth(
        api_key=key_hash,
        user_id=user_id,
        key_alias=alias,
        user_role=LitellmUserRoles.INTERNAL_USER,
        allowed_routes=_ALLOWED_ROUTES,
    )


def _check_shared(token: str, shared: str) -> UserAPIKeyAuth:
    # Hashes first: equal lengths, so the comparison's time says nothing about the token's length either.
    if not hmac.compare_digest(hash_token(token), hash_token(shared)):
        raise _unauthorized("Invalid API key: it does not match the server's token (VLLM_API_KEY)")
    return _user("shared", "kodify-shared-token")


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


async def _check_user(verifier: TokenVerifier | None, token: str) -> UserAPIKeyAuth:
    if verifier is None:
        raise ProxyException(
            "per-user auth is not initialised: start the server with `kodify-proxy serve`",
            type="internal_server_error",
            param=None,
            code=500,
        )
    if not is_token_shaped(token):
        raise _unauthorized(
            "Malformed API key: user tokens look like sk-kodify-<43 characters>; check that the whole token was copied"
        )
    try:
        user = await verifier.verify(token)
    except TokenRejected as rejected:
        raise _unauthorized(_rejection_message(rejected)) from None
    except UserDatabaseUnavailable as exc:
        raise ProxyException(
            f"Cannot check the API key right now: {exc}. Retry shortly; if it persists, ask the "
            "administrator to check the user database (DB_URL)",
            type="service_unavailable",
            param=None,
            code=503,
        ) from None
    return _user(user.name, "kodify-user-token", user.token_sha256)


async def user_api_key_auth(request: Request, api_key: str | None) -> UserAPIKeyAuth:
    """Authenticate one request; parameter names are fixed by LiteLLM (`request`, `api_key`: None without a header)."""
    rt = runtime.current()
    if api_key and hmac.compare_digest(api_key.encode(), rt.master_key.encode()):
        # Not ours to accept: raising a non-ProxyException hands the master key to LiteLLM's own auth
        # (custom_auth_settings mode auto), so the admin routes and UI keep working.
        raise HTTPException(status_code=401, detail="master key: handled by LiteLLM")
    identity = await _identify(request, api_key, rt)
    check_route(request)
    return identity


async def _identify(request: Request, api_key: str | None, rt: runtime.Runtime) -> UserAPIKeyAuth:
    mode = select_mode(rt.settings)
    if mode == "dummy":
        return _user("anonymous", "kodify-dummy")
    token = presented_token(request, api_key)
    if mode == "shared":
        assert rt.settings.vllm_api_key is not None
        return _check_shared(token, rt.settings.vllm_api_key.get_secret_value())
    return await _check_user(rt.users, token)
