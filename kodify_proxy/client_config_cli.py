"""`kodify-proxy client-config`, the command: the credential to ask with, the running proxy asked what it serves
(`GET /v1/models`) and whether its chat model takes tools, the config printed (client_config.py builds it).

Run inside the server's environment (`docker compose exec kodify-proxy kodify-proxy client-config ...`) it asks with
what that environment holds when $KODIFY_TOKEN is unset: the one shared token (VLLM_API_KEY), else the master key
(LITELLM_MASTER_KEY, or the one `serve` generated into the state dir), which reads /v1/models in every auth mode.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from collections.abc import Mapping
from dataclasses import replace

import httpx

from kodify_proxy.auth import select_mode
from kodify_proxy.client_config import (
    CLIENTS,
    DEFAULT_TOKEN_ENV,
    DEFAULT_URL,
    DEV_DATA_LEVELS,
    EXIT_FAILED,
    ClientConfigError,
    ClientModels,
    Credential,
    Endpoint,
    ServedModel,
    base_url,
    choose_models,
    client_token,
    render_client_config,
)
from kodify_proxy.errors import read_error_body
from kodify_proxy.settings import Settings, SettingsError, load_settings

# The smallest request that tells whether vLLM runs with a tool parser: without `--enable-auto-tool-choice
# --tool-call-parser` it answers 400 `"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser`.
_PROBE_TOOL = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}
MASTER_KEY_FILE = "master_key"  # in the state dir, where `serve` generates one (launcher.ensure_master_key)


def find_credential(token_env: str, environ: Mapping[str, str]) -> Credential:
    """$token_env; else, in the server's own environment, its shared token or its master key; else none."""
    if token := environ.get(token_env):
        return Credential(token, f"${token_env}", for_clients=True)
    try:
        found = load_settings(environ)
    except SettingsError:
        return Credential(None, "no credential", for_clients=False)
    mode = select_mode(found)
    if mode == "shared" and found.vllm_api_key is not None:
        return Credential(found.vllm_api_key.get_secret_value(), "VLLM_API_KEY (the shared token)", True)
    if mode == "dummy":
        return Credential(None, "no credential (dummy auth)", for_clients=False)
    if found.master_key is not None:
        return Credential(found.master_key.get_secret_value(), "the master key (LITELLM_MASTER_KEY)", False)
    return _stored_master_key(found)


def _stored_master_key(settings: Settings) -> Credential:
    path = settings.resolved_state_dir() / MASTER_KEY_FILE
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError:
        key = ""
    if not key:
        return Credential(None, "no credential", for_clients=False)
    return Credential(key, f"the master key in {path}", for_clients=False)


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
    url = base_url(args.url)
    credential = find_credential(args.token_env, os.environ)
    if credential.token is not None and not credential.source.startswith("$"):
        print(f"client-config: ${args.token_env} is unset; asking with {credential.source}", file=sys.stderr)
    try:
        token = client_token(args.client, args.token_env, args.with_token, credential)
        models = load_client_models(url, credential.token, args.token_env, args.cacert)
    except ClientConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    endpoint = Endpoint(base_url(args.client_url or url), token, args.dev_data_level)
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
    parser.add_argument(
        "--url", default=DEFAULT_URL, help="the running kodify-proxy, with or without /v1 (default: %(default)s)"
    )
    parser.add_argument(
        "--client-url", default=None, help="the address the IDEs reach kodify-proxy at, for the config (default: --url)"
    )
    parser.add_argument(
        "--dev-data-level",
        choices=DEV_DATA_LEVELS,
        default="noCode",
        help="Continue's dev data sent to /v1/dev-data: noCode (default) leaves the code out, all sends it",
    )
    parser.add_argument(
        "--cacert", default=None, help="PEM CA certificates to verify an HTTPS --url with (KODIFY_TLS_*), as curl's"
    )
    parser.add_argument(
        "--token-env",
        type=_env_name,
        default=DEFAULT_TOKEN_ENV,
        help="the environment variable holding a client token, to ask the proxy with (default: %(default)s; unset: "
        "the server environment's shared token or master key, when run there)",
    )
    parser.add_argument(
        "--with-token",
        action="store_true",
        help="write that token into the config (default: Continue's ${{ secrets.NAME }} reference to it in "
        "config.yaml, a <token> placeholder in config.json and config.toml)",
    )
    parser.set_defaults(func=cmd_client_config)
