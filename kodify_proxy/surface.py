"""The client surface: the one table of routes a client may reach. Everything else is LiteLLM's administration
(master key only) or a 404. README's "HTTP" table lists the same routes; tests/test_surface.py keeps them equal."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal

Kind = Literal[
    "chat",
    "completions",
    "tabby_completions",
    "embeddings",
    "models",
    "model",
    "tabby_health",
    "tabby_setting",
    "tabby_events",
    "dev_data",
    "health",
    "liveness",
    "readiness",
    "metrics",
]
Auth = Literal["client", "open", "metrics"]


@dataclass(frozen=True)
class Route:
    """One documented route: its path, methods, what serves it and who may call it."""

    path: str
    methods: frozenset[str]
    kind: Kind
    auth: Auth = "client"  # client: a client token (or the master key); open: nobody; metrics: KODIFY_METRICS_AUTH
    journaled: bool = True
    json_body: bool = False  # the body is parsed (and must be JSON) before the route runs
    alias_of: str | None = None  # the same route under another path (the OpenAI ones without /v1)
    event: bool = False  # a client's event (Tabby's, Continue's): its body is bounded by KODIFY_EVENT_MAX_BYTES

    @property
    def label(self) -> str:
        """The `route` of metrics and the journal: the /v1 path for both spellings, bounded (no ids in our paths)."""
        return self.alias_of or self.path


def _post(path: str, kind: Kind) -> Route:
    return Route(path, frozenset({"POST"}), kind, json_body=True)


def _tabby(path: str, kind: Kind, methods: frozenset[str]) -> tuple[Route, Route]:
    body, event = kind in ("tabby_completions", "tabby_events"), kind == "tabby_events"
    route = Route(path, methods, kind, json_body=body, event=event)
    return route, replace(route, path="/tabby" + path)


def _openai(route: Route) -> tuple[Route, Route]:
    """A route, and the same without its /v1 prefix, as LiteLLM serves the OpenAI ones (a Continue `apiBase`, an SDK
    `base_url` or a `data:` destination given without /v1 reaches them so)."""
    return route, replace(route, path=route.path.removeprefix("/v1"), alias_of=route.path)


MODEL_PREFIX: Final = "/v1/models/"
MODEL_PATH: Final = MODEL_PREFIX + "{model}"  # the one route with a parameter: a model's name, slashes and all
_MODEL_PREFIXES: Final = (MODEL_PREFIX, MODEL_PREFIX.removeprefix("/v1"))
_GET = frozenset({"GET"})
_POST = frozenset({"POST"})

ROUTES: Final[tuple[Route, ...]] = (
    *_openai(_post("/v1/chat/completions", "chat")),
    *_openai(_post("/v1/completions", "completions")),
    *_openai(_post("/v1/embeddings", "embeddings")),
    *_openai(Route("/v1/models", _GET, "models")),
    *_openai(Route(MODEL_PATH, _GET, "model")),
    Route("/tabby/v1/completions", _POST, "tabby_completions", json_body=True),
    *_tabby("/v1/health", "tabby_health", frozenset({"GET", "POST"})),
    *_tabby("/v1beta/server_setting", "tabby_setting", _GET),
    *_tabby("/v1/events", "tabby_events", _POST),
    *_openai(Route("/v1/dev-data", _POST, "dev_data", json_body=True, event=True)),
    Route("/health", _GET, "health", auth="open", journaled=False),
    Route("/health/liveliness", _GET, "liveness", auth="open", journaled=False),
    Route("/health/liveness", _GET, "liveness", auth="open", journaled=False),
    Route("/health/readiness", _GET, "readiness", auth="open", journaled=False),
    Route("/metrics", _GET, "metrics", auth="metrics", journaled=False),
)
_BY_PATH: Final = {route.path: route for route in ROUTES}

# LiteLLM's admin UI: static pages and its login, which checks credentials itself (litellm/proxy/proxy_server.py).
UI_PATHS: Final = frozenset(
    {
        "/ui",
        "/login",
        "/v2/login",
        "/fallback/login",
        "/get_image",
        "/get/ui_settings",
        "/.well-known/litellm-ui-config",
        "/litellm/.well-known/litellm-ui-config",
    }
)
UI_PREFIXES: Final = ("/ui/", "/_next/", "/litellm-asset-prefix/", "/sso/")
# The UI's sign-in posts here; LiteLLM then needs its own database (DATABASE_URL) to issue the session's key.
UI_LOGINS: Final = frozenset({"/login", "/v2/login"})


@dataclass(frozen=True)
class Match:
    """What a request's method and path reach: a documented route, the UI, or neither."""

    route: Route | None = None
    wrong_method: frozenset[str] = frozenset()  # the path is ours, but for these methods only
    ui: bool = False


def match(method: str, path: str) -> Match:
    """Look a request up in the table."""
    route = _BY_PATH.get(path)
    if route is None and model_name(path):
        route = _BY_PATH[path[: len(path) - len(model_name(path))] + "{model}"]
    if route is not None:
        return Match(route) if method in route.methods else Match(wrong_method=route.methods)
    return Match(ui=path in UI_PATHS or path.startswith(UI_PREFIXES))


def model_name(path: str) -> str:
    """The `{model}` of /v1/models/{model} (or /models/{model}): a model's name, slashes and all; "" for other paths."""
    prefix = next((prefix for prefix in _MODEL_PREFIXES if path.startswith(prefix)), "")
    return path[len(prefix) :] if prefix else ""
