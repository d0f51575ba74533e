"""`kodify-proxy client-config continue|kodify|tabby`: a ready config for each IDE client, built from what the running
kodify-proxy serves (`GET /v1/models`: names and vLLM's `max_model_len`) and whether its chat model takes tools."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
import yaml

from kodify_proxy.errors import read_error_body

EXIT_FAILED = 1
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TOKEN_ENV = "KODIFY_TOKEN"
PLACEHOLDER_TOKEN = "<token>"
CLIENTS = ("continue", "kodify", "tabby")
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
# The smallest request that tells whether vLLM runs with a tool parser: without `--enable-auto-tool-choice
# --tool-call-parser` it answers 400 `"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser`.
_PROBE_TOOL = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}


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
    """Where the client connects (base URL without /v1) and what it puts in its token field."""

    url: str
    token: str

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"


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
    the context, embeddings when one is served."""
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
    return {"name": "Kodify", "version": "1.0.0", "schema": "v1", "models": entries}


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
    `tabAutocompleteOptions`, `embeddingsProvider`; `capabilities.tools` where the server takes tools."""
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
    return config


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


def client_token(client: str, token_env: str, with_token: bool, environ: dict[str, str]) -> str:
    """What goes in the config's token field: the token itself only with --with-token; else Continue's secret
    reference `${{ secrets.NAME }}` (config.yaml) or the `<token>` placeholder (config.json, config.toml)."""
    if with_token:
        token = environ.get(token_env, "")
        if not token:
            raise ClientConfigError(
                f"--with-token: ${token_env} is empty; set it to a client token, or name the "
                "variable holding one with --token-env"
            )
        return token
    return f"${{{{ secrets.{token_env} }}}}" if client == "continue" else PLACEHOLDER_TOKEN


# --- asking the running proxy ------------------------------------------------------------------------------------


def _error_message(response: httpx.Response) -> str:
    """The error's message, read by the project's one error-body parser; else the body's start, else the reason."""
    return read_error_body(response.content).message or response.text[:300] or response.reason_phrase


def _check(response: httpx.Response, what: str, token_env: str) -> None:
    if response.status_code in (401, 403):
        raise ClientConfigError(
            f"kodify-proxy at {response.url.scheme}://{response.url.netloc.decode()} refused the token "
            f"({response.status_code}) for {what}: set ${token_env} to a client token (docs/auth.md)"
        )
    if response.status_code != 200:
        raise ClientConfigError(f"kodify-proxy answered {what} with {response.status_code}: {_error_message(response)}")


def fetch_served_models(client: httpx.Client, token_env: str) -> tuple[ServedModel, ...]:
    """GET /v1/models: each model's name and vLLM's `max_model_len` (the proxy passes vLLM's entries through)."""
    response = client.get("/v1/models")
    _check(response, "GET /v1/models", token_env)
    cards = response.json().get("data") or []
    return tuple(
        ServedModel(str(card["id"]), card.get("max_model_len") if isinstance(card.get("max_model_len"), int) else None)
        for card in cards
        if isinstance(card, dict) and "id" in card
    )


def probe_tool_use(client: httpx.Client, model: str, token_env: str) -> bool:
    """One tiny chat with `tools` and tool_choice auto: 200 when vLLM runs with a tool parser, 400 naming the
    missing `--enable-auto-tool-choice --tool-call-parser` when it does not."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    response = client.post("/v1/chat/completions", json={**body, "tools": [_PROBE_TOOL], "tool_choice": "auto"})
    if response.status_code == 400 and "tool" in _error_message(response):
        return False
    _check(response, "the tool-use probe (POST /v1/chat/completions with tools)", token_env)
    return True


def load_client_models(
    url: str, token: str | None, token_env: str, cacert: str | None = None, timeout: float = 60.0
) -> ClientModels:
    """Ask kodify-proxy at `url` what it serves and whether its chat model takes tools (over HTTPS, verified against
    the system's CAs, or `cacert`'s)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cacert) if cacert else True
    except (OSError, ssl.SSLError) as exc:
        raise ClientConfigError(
            f"--cacert {cacert}: {exc.strerror or exc}; give a PEM file of CA certificates"
        ) from None
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout, verify=verify) as client:
            models = choose_models(fetch_served_models(client, token_env))
            tool_use = probe_tool_use(client, models.chat.name, token_env)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ClientConfigError(f"cannot reach kodify-proxy at {url} ({reason}); is it running? pass --url") from None
    return replace(models, tool_use=tool_use)


# --- the command -------------------------------------------------------------------------------------------------


def _env_name(value: str) -> str:
    if not value.isidentifier() or not value.isascii():
        raise argparse.ArgumentTypeError(f"{value!r} is not an environment variable name (e.g. KODIFY_TOKEN)")
    return value


def cmd_client_config(args: argparse.Namespace) -> int:
    """Print the config of args.client for kodify-proxy at args.url; one line on stderr and exit 1 on failure."""
    url = args.url.rstrip("/")
    try:
        token = client_token(args.client, args.token_env, args.with_token, dict(os.environ))
        models = load_client_models(url, os.environ.get(args.token_env), args.token_env, args.cacert)
    except ClientConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    endpoint = Endpoint((args.client_url or url).rstrip("/"), token)
    sys.stdout.write(render_client_config(args.client, models, endpoint))
    return 0


def add_client_config_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `client-config` on the main parser."""
    parser = sub.add_parser(
        "client-config",
        help="print a ready IDE client config (Continue config.yaml, Kodify plugin config.json, tabby-agent "
        "config.toml) from the running proxy's models",
    )
    parser.add_argument(
        "client", choices=CLIENTS, help="continue: config.yaml; kodify: config.json; tabby: config.toml"
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="the running kodify-proxy (default: %(default)s)")
    parser.add_argument(
        "--client-url", default=None, help="the address the IDEs reach kodify-proxy at, for the config (default: --url)"
    )
    parser.add_argument(
        "--cacert", default=None, help="PEM CA certificates to verify an HTTPS --url with (KODIFY_TLS_*), as curl's"
    )
    parser.add_argument(
        "--token-env",
        type=_env_name,
        default=DEFAULT_TOKEN_ENV,
        help="the environment variable holding a client token, to ask the proxy with (default: %(default)s)",
    )
    parser.add_argument(
        "--with-token",
        action="store_true",
        help="write that token into the config (default: Continue's ${{ secrets.NAME }} reference to it in "
        "config.yaml, a <token> placeholder in config.json and config.toml)",
    )
    parser.set_defaults(func=cmd_client_config)
