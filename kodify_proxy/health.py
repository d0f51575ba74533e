"""GET /health: no auth, no model call; each upstream from a quick GET /v1/models, the user and journal databases."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from kodify_proxy import runtime
from kodify_proxy.upstreams import UpstreamState

router = APIRouter()
_DB_PROBE_TIMEOUT = 2.0


def build_health(
    states: list[UpstreamState], served: list[str], databases: dict[str, dict[str, Any]]
) -> tuple[int, dict[str, Any]]:
    """200 when an upstream answers ("degraded" if a database does not), else 503 with the reason."""
    healthy = any(s.healthy for s in states)
    databases_ok = all(d["healthy"] for d in databases.values())
    body: dict[str, Any] = {
        "status": "ok" if healthy and databases_ok else "degraded" if healthy else "unavailable",
        "models": served,
        "upstreams": [
            {"url": s.upstream.url, "healthy": s.healthy, "models": list(s.models), "error": s.error} for s in states
        ],
    }
    if databases:
        body["databases"] = databases
    if not healthy:
        body["reason"] = "no upstream answers GET /v1/models"
    return (200 if healthy else 503), body


async def probe_users_database(users: Any) -> dict[str, Any]:
    """A lookup of a token hash no user has: proves the users table answers (blocking call, in a thread)."""
    try:
        await asyncio.wait_for(asyncio.to_thread(users.store.find_by_hash, "0" * 64), _DB_PROBE_TIMEOUT)
    except Exception as exc:  # any driver error means "not answering"; the reason is shown, never the URL
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {"healthy": False, "where": users.store.where(), "error": reason[:200]}
    return {"healthy": True, "where": users.store.where(), "error": None}


def journal_health(journal: Any) -> dict[str, Any]:
    """The journal writer's last known state: no query, the writer already knows whether its database answers."""
    from kodify_proxy.journal.database import render_url

    status = journal.writer.status()
    return {"healthy": status["database"] == "up", "where": render_url(journal.url), **status}


@router.get("/health", include_in_schema=True)
async def health() -> JSONResponse:
    """Report upstreams and the user database without authentication."""
    from litellm.proxy import proxy_server

    rt = runtime.current()
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as client:
        await rt.monitor.refresh(client, proxy_server.llm_router)
    databases = {"users": await probe_users_database(rt.users)} if rt.users is not None else {}
    if rt.journal is not None:
        databases["journal"] = journal_health(rt.journal)
    states = [rt.monitor.states[u.url] for u in rt.monitor.upstreams]
    status, body = build_health(states, rt.monitor.served_models(), databases)
    return JSONResponse(body, status_code=status)
