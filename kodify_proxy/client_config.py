"""`kodify-proxy client-config continue|kodify|tabby`: a ready config for each IDE client, built from what the running
kodify-proxy serves (`GET /v1/models`: names and vLLM's `max_model_len`) and whether its chat model takes tools; with
Continue's `data:` block, so the plugin reports the suggestions it showed and the developer accepted. Pure: the
command that asks the proxy is client_config_cli.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import yaml

EXIT_FAILED = 1
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TOKEN_ENV = "KODIFY_TOKEN"
PLACEHOLDER_TOKEN = "<token>"
CLIENTS = ("continue", "kodify", "tabby")
DevDataLevel = Literal["noCode", "all"]
DEV_DATA_LEVELS: tuple[DevDataLevel, ...] = ("noCode", "all")
# The dev-data events the usage report counts (acceptance.py), in the schema that has them all.
DEV_DATA_EVENTS = ("autocomplete", "nextEditOutcome")
DEV_DATA_SCHEMA = "0.2.0"
# Budgets, each cut to fit the model's context: the autocomplete prompt and answer, the chat answer (Continue's
# DEFAULT_MAX_TOKENS). 250 ms of debounce is tabby-agent's default interval, used for both clients.
AUTOCOMPLETE_PROMPT_TOKENS = 1024
AUTOCOMPLETE_DEBOUNCE_MS = 250
CHAT_MAX_TOKENS = 4096
AUTOCOMPLETE_MAX_TOKENS = 256
TABBY_MAX_LINES = 20  # tabby-agent's default maxPrefixLines / maxSuffixLines
# Continue turns next edit on for an autocomplete model whose name holds one of these (core/llm/autodetect.ts
# modelSupportsNextEdit, NEXT_EDIT_MODELS in core/llm/constants.ts). Its answer rewrites an editable region of up to
# 512 tokens (BaseNextEditProvider.calculateOptimalEditableRegion): twice that leaves room for what it adds.
NEXT_EDIT_NAMES = ("instinct", "mercury-coder")
NEXT_EDIT_MAX_TOKENS = 1024


class ClientConfigError(Exception):
    """The proxy could not be asked (unreachable, token refused, nothing served); the message says what to do."""


@dataclass(frozen=True)
class ServedModel:
    """One entry of the proxy's `GET /v1/models`: its name and context length (vLLM's `max_model_len`)."""

    name: str
    context_length: int | None = None

    @property
    def is_embedding(self) -> bool:
        """vLLM's model card does not say what a model does: a name with `embed` in it is an embedding model."""
        return "embed" in self.name.lower()

    @property
    def is_next_edit(self) -> bool:
        """A model Continue uses for next edit rather than fill-in-the-middle: its name says so (NEXT_EDIT_NAMES)."""
        return any(name in self.name.lower() for name in NEXT_EDIT_NAMES)


@dataclass(frozen=True)
class ClientModels:
    """The models a client config names: chat (also edit/apply), autocomplete, embeddings and next edit (if served)."""

    chat: ServedModel
    autocomplete: ServedModel
    embed: ServedModel | None
    tool_use: bool
    next_edit: ServedModel | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where the client connects (base URL without /v1), what it puts in its token field, and how much of its
    dev data it sends (Continue's `level`: noCode, or all with the code)."""

    url: str
    token: str
    dev_data_level: DevDataLevel = "noCode"

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"


def base_url(url: str) -> str:
    """The proxy's base URL, given with or without `/v1` (a client's apiBase) and trailing slashes."""
    return url.rstrip("/").removesuffix("/v1").rstrip("/")


def choose_models(served: tuple[ServedModel, ...], tool_use: bool = False) -> ClientModels:
    """Chat and autocomplete: the first model that is neither an embedding nor a next-edit model (a next-edit model
    if it is all there is); embeddings: the first embedding one; next edit: the first next-edit one."""
    generators = [m for m in served if not m.is_embedding]
    if not generators:
        listed = ", ".join(m.name for m in served) or "none"
        raise ClientConfigError(f"kodify-proxy serves no chat model (served: {listed}); check its upstreams")
    embed = next((m for m in served if m.is_embedding), None)
    first = next((m for m in generators if not m.is_next_edit), generators[0])
    next_edit = next((m for m in generators if m.is_next_edit), None)
    return ClientModels(chat=first, autocomplete=first, embed=embed, tool_use=tool_use, next_edit=next_edit)


def chat_max_tokens(context_length: int) -> int:
    """The answer's budget: a quarter of the context (Continue keeps the prompt within context - maxTokens)."""
    return min(CHAT_MAX_TOKENS, context_length // 4)


def autocomplete_max_tokens(context_length: int) -> int:
    return min(AUTOCOMPLETE_MAX_TOKENS, context_length // 4)


def next_edit_max_tokens(context_length: int) -> int:
    return min(NEXT_EDIT_MAX_TOKENS, context_length // 4)


def autocomplete_prompt_tokens(context_length: int) -> int:
    """Continue's maxPromptTokens: what is left after the completion, less 1/8 for Continue counting tokens with
    another tokenizer than the model's."""
    left = context_length - autocomplete_max_tokens(context_length) - context_length // 8
    return min(AUTOCOMPLETE_PROMPT_TOKENS, left)


def _budget(model: ServedModel, max_tokens: Callable[[int], int]) -> dict[str, int]:
    """contextLength and maxTokens for `model`; nothing when its server did not say its context length."""
    if model.context_length is None:
        return {}
    return {"contextLength": model.context_length, "maxTokens": max_tokens(model.context_length)}


def _autocomplete_options(model: ServedModel) -> dict[str, Any]:
    """Continue's autocomplete options (config.yaml `autocompleteOptions`, config.json `tabAutocompleteOptions`)."""
    options: dict[str, Any] = {"debounceDelay": AUTOCOMPLETE_DEBOUNCE_MS}
    if model.context_length is not None:
        options["maxPromptTokens"] = autocomplete_prompt_tokens(model.context_length)
    return {**options, "useCache": True, "onlyMyCode": True}


def _continue_entry(name: str, model: ServedModel, endpoint: Endpoint, roles: list[str]) -> dict[str, Any]:
    entry = {"name": name, "provider": "openai", "model": model.name, "apiBase": endpoint.api_base}
    return {**entry, "apiKey": endpoint.token, "roles": roles}


def build_data_destination(endpoint: Endpoint) -> dict[str, Any]:
    """Continue's `data:` entry: the events the acceptance report counts, posted to POST /v1/dev-data with the same
    secret the models use (core/data/log.ts sends it as the Bearer token)."""
    return {
        "name": "kodify-proxy",
        "destination": f"{endpoint.api_base}/dev-data",
        "schema": DEV_DATA_SCHEMA,
        "level": endpoint.dev_data_level,
        "events": list(DEV_DATA_EVENTS),
        "apiKey": endpoint.token,
    }


def build_next_edit_entries(models: ClientModels, endpoint: Endpoint) -> list[dict[str, Any]]:
    """Continue's next-edit model, when one is served: an autocomplete entry with `capabilities: [next_edit]`, listed
    before the fill-in-the-middle one so that Continue selects it (the first of a role is the default). Continue then
    sends it a non-streamed chat of one user message (core/nextEdit/NextEditProvider.ts)."""
    if models.next_edit is None:
        return []
    entry = _continue_entry("Kodify next edit", models.next_edit, endpoint, ["autocomplete"])
    entry["capabilities"] = ["next_edit"]
    if budget := _budget(models.next_edit, next_edit_max_tokens):
        entry["defaultCompletionOptions"] = budget
    return [{**entry, "autocompleteOptions": _autocomplete_options(models.next_edit)}]


def build_continue_config(models: ClientModels, endpoint: Endpoint) -> dict[str, Any]:
    """Continue's config.yaml (schema v1): chat with tool use when the server takes tools, autocomplete fitted to
    the context, embeddings when one is served, and the `data:` block reporting suggestions shown and accepted."""
    chat = _continue_entry("Kodify", models.chat, endpoint, ["chat", "edit", "apply"])
    if models.tool_use:
        chat["capabilities"] = ["tool_use"]
    if budget := _budget(models.chat, chat_max_tokens):
        chat["defaultCompletionOptions"] = budget
    auto = _continue_entry("Kodify autocomplete", models.autocomplete, endpoint, ["autocomplete"])
    if budget := _budget(models.autocomplete, autocomplete_max_tokens):
        auto["defaultCompletionOptions"] = budget
    auto["autocompleteOptions"] = _autocomplete_options(models.autocomplete)
    entries = [chat, *build_next_edit_entries(models, endpoint), auto]
    if models.embed is not None:
        entries.append(_continue_entry("Kodify embeddings", models.embed, endpoint, ["embed"]))
    config = {"name": "Kodify", "version": "1.0.0", "schema": "v1", "models": entries}
    return {**config, "data": [build_data_destination(endpoint)]}


def _kodify_entry(
    title: str, model: ServedModel, endpoint: Endpoint, max_tokens: Callable[[int], int]
) -> dict[str, Any]:
    entry: dict[str, Any] = {"title": title, "provider": "openai", "model": model.name}
    entry |= {"apiBase": endpoint.api_base, "apiKey": endpoint.token}
    if budget := _budget(model, max_tokens):
        entry |= {"contextLength": budget["contextLength"], "completionOptions": {"maxTokens": budget["maxTokens"]}}
    return entry


def build_kodify_config(models: ClientModels, endpoint: Endpoint) -> dict[str, Any]:
    """The classic config.json the Kodify plugin's guide describes: `models`, `tabAutocompleteModel` with
    `tabAutocompleteOptions`, `embeddingsProvider`; `capabilities.tools` where the server takes tools; `data`, as in
    config.yaml (core/config/load.ts keeps config.json's `data` as it is)."""
    chat = _kodify_entry("Kodify", models.chat, endpoint, chat_max_tokens)
    if models.tool_use:
        chat["capabilities"] = {"tools": True}
    config: dict[str, Any] = {
        "models": [chat],
        "tabAutocompleteModel": _kodify_entry(
            "Kodify autocomplete", models.autocomplete, endpoint, autocomplete_max_tokens
        ),
        "tabAutocompleteOptions": _autocomplete_options(models.autocomplete),
    }
    if models.embed is not None:
        embed = {"provider": "openai", "model": models.embed.name, "apiBase": endpoint.api_base}
        config["embeddingsProvider"] = {**embed, "apiKey": endpoint.token}
    return {**config, "data": [build_data_destination(endpoint)]}


def tabby_prompt_lines(context_length: int | None) -> int:
    """tabby-agent's maxPrefixLines and maxSuffixLines: its default 20, fewer for a context under 800 tokens
    (about 40 tokens of context per line of prefix and suffix, the rest for declarations and the completion)."""
    if context_length is None:
        return TABBY_MAX_LINES
    return max(4, min(TABBY_MAX_LINES, context_length // 40))


def build_tabby_config(models: ClientModels, endpoint: Endpoint) -> dict[str, Any]:
    """tabby-agent's ~/.tabby-client/agent/config.toml. Tabby completions are answered with config.yml's
    `tabby.model_name` (default: the first model): its context sizes the prompt."""
    lines = tabby_prompt_lines(models.autocomplete.context_length)
    return {
        "server": {"endpoint": endpoint.url, "token": endpoint.token},
        "completion": {
            "prompt": {"maxPrefixLines": lines, "maxSuffixLines": lines},
            "debounce": {"mode": "adaptive", "interval": AUTOCOMPLETE_DEBOUNCE_MS},
        },
        "anonymousUsageTracking": {"disable": True},
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def _toml_table(name: str, table: dict[str, Any]) -> list[str]:
    scalars = [f"{key} = {_toml_value(v)}" for key, v in table.items() if not isinstance(v, dict)]
    lines = [f"[{name}]", *scalars, ""] if scalars else []
    for key, value in table.items():
        if isinstance(value, dict):
            lines += _toml_table(f"{name}.{key}", value)
    return lines


def render_toml(config: dict[str, Any]) -> str:
    """TOML for a config of tables holding strings, integers and booleans (all tabby-agent's config needs)."""
    lines = [line for name, table in config.items() for line in _toml_table(name, table)]
    return "\n".join(lines).rstrip("\n") + "\n"


def render_client_config(client: str, models: ClientModels, endpoint: Endpoint) -> str:
    """The config file of `client` (one of CLIENTS) as text."""
    if client == "continue":
        return yaml.safe_dump(build_continue_config(models, endpoint), sort_keys=False, allow_unicode=True)
    if client == "kodify":
        return json.dumps(build_kodify_config(models, endpoint), indent=2, ensure_ascii=False) + "\n"
    return render_toml(build_tabby_config(models, endpoint))


@dataclass(frozen=True)
class Credential:
    """What `client-config` asks the proxy with, where it was found, and whether a client config may hold it."""

    token: str | None
    source: str  # for the note on stderr; never the token
    for_clients: bool  # a client's token (or the one shared token); not the master key, which administers the server


def client_token(client: str, token_env: str, with_token: bool, credential: Credential) -> str:
    """What goes in the config's token field: the token itself only with --with-token (and never the master key);
    else Continue's secret reference `${{ secrets.NAME }}` (config.yaml) or the `<token>` placeholder (config.json,
    config.toml)."""
    if not with_token:
        return f"${{{{ secrets.{token_env} }}}}" if client == "continue" else PLACEHOLDER_TOKEN
    if credential.token is None:
        raise ClientConfigError(
            f"--with-token: ${token_env} is empty; set it to a client token, or name the variable holding one "
            "with --token-env"
        )
    if not credential.for_clients:
        raise ClientConfigError(
            f"--with-token: ${token_env} is empty and {credential.source} is not written into a client config (it "
            f"administers the server); set ${token_env} to a user's token (kodify-proxy users add NAME)"
        )
    return credential.token
