"""config.yml (the guide's format, unchanged), upstream model discovery and waiting for vLLM."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from kodify_proxy.errors import describe_validation

log = logging.getLogger("kodify_proxy.upstreams")


class ConfigError(Exception):
    """config.yml is missing or wrong; the message names the file (and line) and the fix."""


class UpstreamExtras(BaseModel):
    """Optional per-upstream settings: the value of an `upstreams:` key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: SecretStr | None = None
    models: tuple[str, ...] | None = None
    timeout: float | None = Field(default=None, gt=0)


class TabbySection(BaseModel):
    """The `tabby:` section: which model answers Tabby-format requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str | None = None


@dataclass(frozen=True)
class Upstream:
    """One vLLM server from config.yml."""

    url: str
    api_key: SecretStr | None = None
    models: tuple[str, ...] | None = None
    timeout: float | None = None

    @property
    def api_base(self) -> str:
        """The OpenAI base URL (`…/v1`) of this upstream."""
        return self.url if self.url.endswith("/v1") else f"{self.url}/v1"


@dataclass(frozen=True)
class KodifyConfig:
    """The parsed config.yml."""

    path: Path
    upstreams: tuple[Upstream, ...]
    tabby_model_name: str | None = None


def resolve_config_path(cli_path: str | None, env_path: str | None) -> Path:
    """`--config`, else KODIFY_CONFIG, else ./config.yml."""
    return Path(cli_path or env_path or "config.yml")


def _key_lines(text: str) -> dict[str, int]:
    """Line numbers (1-based) of the keys under `upstreams:`, for error messages."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "upstreams" and isinstance(value, yaml.MappingNode):
                for up_key, _ in value.value:
                    lines[str(up_key.value)] = up_key.start_mark.line + 1
    return lines


def check_upstream_url(url: str) -> str | None:
    """Why `url` is not an http(s) upstream URL, or None when it is one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "it must start with http:// or https://"
    if not parts.hostname:
        return "it has no host"
    try:
        parts.port  # noqa: B018 - raises on a non-numeric port
    except ValueError:
        return "its port is not a number"
    if parts.query or parts.fragment:
        return "it must not carry a query or fragment"
    return None


def _parse_upstream(path: Path, line: int | None, url: str, raw: Any) -> Upstream:
    where = f"{path}:{line}" if line else str(path)
    problem = check_upstream_url(url)
    if problem:
        raise ConfigError(f"{where}: upstream {url!r} is not an http(s) URL: {problem} (e.g. http://vllm:8000)")
    try:
        extras = UpstreamExtras.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(f"{where}: upstream {url!r} has invalid settings: {describe_validation(exc)}") from None
    return Upstream(url=url.rstrip("/"), api_key=extras.api_key, models=extras.models, timeout=extras.timeout)


def parse_config(text: str, path: Path) -> KodifyConfig:
    """Parse config.yml text; raise ConfigError naming the file, the line and the fix."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("upstreams"), dict) or not data["upstreams"]:
        raise ConfigError(
            f"{path}: no upstreams; list at least one vLLM server as a key under `upstreams:`, "
            "e.g.\nupstreams:\n  http://vllm:8000:"
        )
    unknown = sorted(set(data) - {"upstreams", "tabby"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; accepted: upstreams, tabby")
    lines = _key_lines(text)
    upstreams = tuple(_parse_upstream(path, lines.get(str(u)), str(u), v) for u, v in data["upstreams"].items())
    try:
        tabby = TabbySection.model_validate(data.get("tabby") or {})
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid `tabby:` section: {describe_validation(exc, first_only=True)}") from None
    return KodifyConfig(path=path, upstreams=upstreams, tabby_model_name=tabby.model_name)


def load_config(path: Path) -> KodifyConfig:
    """Read and parse config.yml at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; pass --config PATH, set KODIFY_CONFIG, or create ./config.yml"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    return parse_config(text, path)


@dataclass
class UpstreamState:
    """What the last check of one upstream found; `models` are the ones to route there (configured or discovered)."""

    upstream: Upstream
    healthy: bool = False
    models: tuple[str, ...] = ()
    error: str | None = None
    checked_at: float | None = None
    model_cards: tuple[Mapping[str, Any], ...] = field(default=())


def _auth_headers(upstream: Upstream) -> dict[str, str]:
    if upstream.api_key is None:
        return {}
    return {"Authorization": f"Bearer {upstream.api_key.get_secret_value()}"}


async def check_upstream(client: httpx.AsyncClient, upstream: Upstream) -> UpstreamState:
    """GET {upstream}/v1/models: is it up, and which models does it serve."""
    loop = asyncio.get_running_loop()
    # Configured `models:` are served even while the upstream is down; discovery only fills the rest.
    state = UpstreamState(upstream=upstream, checked_at=loop.time(), models=upstream.models or ())
    try:
        response = await client.get(f"{upstream.api_base}/models", headers=_auth_headers(upstream))
        response.raise_for_status()
        cards = tuple(response.json().get("data") or ())
    except httpx.HTTPStatusError as exc:
        state.error = f"GET /v1/models answered {exc.response.status_code}"
        return state
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        state.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return state
    state.healthy = True
    state.model_cards = cards
    state.models = upstream.models or tuple(str(card["id"]) for card in cards if "id" in card)
    return state


async def check_all(client: httpx.AsyncClient, upstreams: Iterable[Upstream]) -> list[UpstreamState]:
    """Check every upstream concurrently."""
    return list(await asyncio.gather(*(check_upstream(client, u) for u in upstreams)))


async def wait_for_upstream(client: httpx.AsyncClient, upstream: Upstream, attempts: int, pause: float) -> bool:
    """WAIT_VLLM: try `upstream` up to `attempts` times, `pause` seconds apart, logging each attempt."""
    for attempt in range(1, attempts + 1):
        state = await check_upstream(client, upstream)
        if state.healthy:
            log.info("Upstream %s is up (attempt %d/%d), models: %s", upstream.url, attempt, attempts, state.models)
            return True
        log.warning("Waiting for upstream %s: attempt %d/%d failed: %s", upstream.url, attempt, attempts, state.error)
        if attempt < attempts:
            await asyncio.sleep(pause)
    return False
