"""POST /v1/dev-data: Continue's dev-data events (config.yaml `data:` blocks), one per request; no upstream call."""

from __future__ import annotations

from kodify_proxy import dev_data
from kodify_proxy.call import Call
from kodify_proxy.protocol import validate
from kodify_proxy.runtime import Runtime

_HINT = '; send {"name": "autocomplete", "data": {...}, "schema": "0.2.0", "level": "noCode"} as Continue does'


async def events(rt: Runtime, call: Call) -> None:
    """One event, recorded with the journal (and counted in the metrics); 200 with an empty body."""
    request = validate(dev_data.DevDataRequest, call.data or {}, what="Continue dev-data event ", hint=_HINT)
    dev_data.note_event(request, rt.tabby.config, call.exchange)
    await call.reply(200, b"", content_type=None)
