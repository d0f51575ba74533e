"""The one object the LiteLLM-loaded parts (auth, hooks, routes) share: settings, config and upstream state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kodify_proxy.monitor import UpstreamMonitor
from kodify_proxy.settings import Settings


@dataclass(frozen=True)
class Runtime:
    """What `kodify-proxy serve` prepared before LiteLLM started."""

    settings: Settings
    monitor: UpstreamMonitor
    master_key: str
    users: Any = None  # per-user token store (auth issue), when AUTH_TYPE=DB
    journal: Any = None  # request journal writer (journal issue), when LOGS is on
    preprocessing: Any = None  # completions preprocessing config (autocompletion issue)


_current: Runtime | None = None


def bind(runtime: Runtime) -> None:
    """Make `runtime` the one LiteLLM's hooks and our routes see (set once, at serve)."""
    global _current
    _current = runtime


def current() -> Runtime:
    """The bound runtime; LiteLLM loads our hooks only inside `kodify-proxy serve`, which binds it first."""
    if _current is None:
        raise RuntimeError("kodify_proxy is not initialised: start it with `kodify-proxy serve`")
    return _current
