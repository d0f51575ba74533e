"""GET /health: no auth, no model call; the state of each upstream from a quick GET /v1/models."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from kodify_proxy import runtime
from kodify_proxy.upstreams import UpstreamState

router = APIRouter()


def build_health(states: list[UpstreamState], served: list[str]) -> tuple[int, dict[str, Any]]:
    """200 when an upstream answers, else 503 with the reason for each."""
    healthy = any(s.healthy for s in states)
    body = {
        "status": "ok" if healthy else "unavailable",
        "models": served,
        "upstreams": [
            {"url": s.upstream.url, "healthy": s.healthy, "models": list(s.models), "error": s.error} for s in states
        ],
    }
    if not healthy:
        body["reason"] = "no upstream answers GET /v1/models"
    return (200 if healthy else 503), body


@router.get("/health", include_in_schema=True)
async def health() -> JSONResponse:
    """Report upstreams (and, once there is one, the DB) without authentication."""
    from litellm.proxy import proxy_server

    monitor = runtime.current().monitor
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as client:
        await monitor.refresh(client, proxy_server.llm_router)
    status, body = build_health([monitor.states[u.url] for u in monitor.upstreams], monitor.served_models())
    return JSONResponse(body, status_code=status)
