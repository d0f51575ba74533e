"""GET /metrics: the Prometheus text format (open by default, as vLLM's and Tabby's; KODIFY_METRICS_AUTH=true
asks for the master key)."""

from __future__ import annotations

from kodify_proxy.call import Call
from kodify_proxy.prometheus_metrics import CONTENT_TYPE
from kodify_proxy.runtime import Runtime


async def serve(rt: Runtime, call: Call) -> None:
    """The current values of every kodify_* family."""
    await call.reply(200, rt.render_metrics(), CONTENT_TYPE)
