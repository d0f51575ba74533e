"""GET /health, open to load balancers: answered from what the monitor, the token cache and the journal writer
already know (no upstream or database call per request). Addresses, errors and database names only for the
master key."""

from __future__ import annotations

from typing import Any

import orjson

from kodify_proxy.call import Call
from kodify_proxy.database import render_url
from kodify_proxy.runtime import Runtime


def _upstreams(rt: Runtime, detailed: bool) -> list[dict[str, Any]]:
    found = []
    for upstream in rt.monitor.upstreams:
        state = rt.monitor.states[upstream.url]
        entry: dict[str, Any] = {
            "healthy": state.healthy,
            "failing": rt.monitor.failing(upstream.url),
            "models": list(state.models),
        }
        if detailed:
            entry = {"url": upstream.url, **entry, "error": state.error}
        found.append(entry)
    return found


def _databases(rt: Runtime, detailed: bool) -> dict[str, dict[str, Any]]:
    databases: dict[str, dict[str, Any]] = {}
    if rt.verifier is not None:
        error = rt.verifier.down_reason
        databases["users"] = {"healthy": error is None}
        if detailed:
            databases["users"].update(where=rt.verifier.store.where(), error=error)
    if rt.journal is not None:
        status = rt.journal.writer.status()
        databases["journal"] = {"healthy": status["database"] == "up"}
        if detailed:
            databases["journal"].update(where=render_url(rt.journal.url), **status)
    return databases


def build_health(rt: Runtime, detailed: bool) -> tuple[int, dict[str, Any]]:
    """200 and ok / degraded (an upstream down or failing requests, a database down), or 503 unavailable."""
    upstreams = _upstreams(rt, detailed)
    databases = _databases(rt, detailed)
    serving = any(u["healthy"] for u in upstreams)
    trouble = any(not u["healthy"] or u["failing"] for u in upstreams) or any(
        not d["healthy"] for d in databases.values()
    )
    body: dict[str, Any] = {
        "status": "unavailable" if not serving else "degraded" if trouble else "ok",
        "models": rt.monitor.served_models(),
        "upstreams": upstreams,
    }
    if databases:
        body["databases"] = databases
    if not serving:
        body["reason"] = "no upstream answers GET /v1/models"
    return (200 if serving else 503), body


async def serve(rt: Runtime, call: Call) -> None:
    """GET /health (details when called with the master key)."""
    status, body = build_health(rt, detailed=call.identity.master)
    await call.reply(status, orjson.dumps(body))


async def liveness(rt: Runtime, call: Call) -> None:
    """GET /health/liveliness (LiteLLM's spelling) and /health/liveness: the process answers."""
    await call.reply(200, b'"I\'m alive!"')


async def readiness(rt: Runtime, call: Call) -> None:
    """GET /health/readiness: this server can take requests (started; not draining), whatever the upstreams' state,
    so a load balancer keeps sending clients here and they get our 503 naming the upstream rather than a refused
    connection. /health is the probe of the whole service."""
    ready = rt.started
    body = {
        "status": "ready" if ready else "starting",
        "upstreams_up": sum(u.healthy for u in rt.monitor.states.values()),
    }
    await call.reply(200 if ready else 503, orjson.dumps(body))
