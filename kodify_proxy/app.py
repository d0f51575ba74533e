"""Wiring only: LiteLLM's proxy app plus our routes, and the worker startup hook."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, FastAPI

from kodify_proxy import runtime
from kodify_proxy.journal.middleware import with_journal
from kodify_proxy.middleware import ErrorShapingMiddleware

log = logging.getLogger("kodify_proxy.app")


def prepend_routes(app: FastAPI, router: APIRouter) -> None:
    """Add `router`'s routes ahead of LiteLLM's, so ours win where paths overlap (Starlette matches in order)."""
    before = len(app.router.routes)
    app.include_router(router)
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added


def build_app() -> Any:
    """LiteLLM's FastAPI app with kodify routes installed; CONFIG_FILE_PATH must already be set."""
    from litellm.proxy.proxy_server import app

    from kodify_proxy.health import router as health_router
    from kodify_proxy.tabby.routes import TabbyDispatch
    from kodify_proxy.tabby.routes import router as tabby_router

    prepend_routes(app, health_router)
    prepend_routes(app, tabby_router)
    # TabbyDispatch inside ErrorShapingMiddleware: a Tabby completion's upstream failure gets the same clear error.
    return with_journal(ErrorShapingMiddleware(TabbyDispatch(app)))  # LOGS: journal outermost, to see what clients see


async def on_worker_startup() -> None:
    """LITELLM_WORKER_STARTUP_HOOKS entry: start the upstream monitor in this worker's event loop."""
    from litellm.proxy import proxy_server

    runtime.current().monitor.start(lambda: proxy_server.llm_router)
