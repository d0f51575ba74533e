"""The route handlers of the client surface, one module per API, and the dispatch from the route table to them.

Each handler parses, calls a service or the lane, and answers; `surface.ROUTES` says which kind of route a request
is, `HANDLERS` which function serves that kind (checked complete at import, so the two cannot drift apart).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, get_args

from kodify_proxy.call import Call
from kodify_proxy.routes import dev_data, health, metrics, openai, tabby
from kodify_proxy.runtime import Runtime
from kodify_proxy.surface import Kind

Handler = Callable[[Runtime, Call], Awaitable[None]]
HANDLERS: Final[dict[Kind, Handler]] = {
    "chat": openai.chat,
    "completions": openai.completions,
    "embeddings": openai.embeddings,
    "models": openai.models,
    "model": openai.model,
    "tabby_completions": tabby.completions,
    "tabby_health": tabby.health,
    "tabby_setting": tabby.server_setting,
    "tabby_events": tabby.events,
    "dev_data": dev_data.events,
    "health": health.serve,
    "liveness": health.liveness,
    "readiness": health.readiness,
    "metrics": metrics.serve,
}
if set(HANDLERS) != set(get_args(Kind)):  # pragma: no cover - a route kind without its handler is a bug at import
    raise RuntimeError(f"route kinds without a handler: {sorted(set(get_args(Kind)) - set(HANDLERS))}")
