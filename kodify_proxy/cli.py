"""The `kodify-proxy` command line: serve, render-config, check, migrate, usage, users."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Literal

from kodify_proxy import logs
from kodify_proxy.client_config_cli import add_client_config_parser
from kodify_proxy.env_types import parse_workers, resolve_workers
from kodify_proxy.errors import InstanceConflict, StartupError
from kodify_proxy.journal.commands import add_journal_parsers
from kodify_proxy.settings import Settings, SettingsError, load_settings
from kodify_proxy.upstreams import ConfigError, KodifyConfig, load_config, resolve_config_path
from kodify_proxy.users_cli import add_users_parser

log = logging.getLogger("kodify_proxy")

EXIT_CONFIG = 2
EXIT_STARTUP = 1


def _load(args: argparse.Namespace) -> tuple[Settings, KodifyConfig]:
    settings = load_settings()
    return settings, load_config(resolve_config_path(args.config, settings.config_path))


def cmd_serve(args: argparse.Namespace) -> int:
    """Wait for upstreams, discover models, render the LiteLLM config and serve (with N worker processes)."""
    from kodify_proxy import launcher, workers
    from kodify_proxy.instance import claim_instance

    settings, config = _load(args)
    count = resolve_workers(args.workers if args.workers is not None else settings.workers)
    instance = claim_instance(settings, args.host, args.port)  # before anything else: a second server stops here
    if count == 1:
        launch, verifier = launcher.prepare_launch(settings, config, count, instance)
        launcher.run(launcher.build_app(launch, 0, verifier), settings, args.host, args.port)
    else:
        workers.serve(settings, config, count, instance)
    return 0


def cmd_render_config(args: argparse.Namespace) -> int:
    """Print the LiteLLM config `serve` would load, secrets masked."""
    from kodify_proxy import launcher
    from kodify_proxy.litellm_config import render_config

    settings, config = _load(args)
    prepared = launcher.prepare(settings, config, wait=False)
    sys.stdout.write(render_config(prepared.litellm_config))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate env, config.yml, upstreams, databases, migrations, preprocessing; print every problem with its fix."""
    from kodify_proxy.checks import run_check

    return run_check(args.config, args.env_file)


def workers_arg(value: str) -> Literal["auto"] | int:
    """`--workers`: read as KODIFY_WORKERS is."""
    try:
        return parse_workers(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def version() -> str:
    """The installed package's version, and the LiteLLM release it serves with."""
    from importlib import metadata

    try:
        ours = metadata.version("kodify-proxy")
    except metadata.PackageNotFoundError:
        ours = "0+unknown"
    try:
        litellm = metadata.version("litellm")
    except metadata.PackageNotFoundError:
        litellm = "not installed"
    return f"{ours} (litellm {litellm})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="kodify-proxy",
        description="kodify-proxy, the API server of the Kodify AI coding assistant (LiteLLM proxy + vLLM). Commands: "
        "serve, render-config, check, migrate, usage, users, client-config; `kodify-proxy COMMAND --help` for each.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=workers_arg,
        default=None,
        help="server processes: auto (the CPUs this process may use) or a number (default: $KODIFY_WORKERS, else auto)",
    )
    serve.set_defaults(func=cmd_serve)
    render = sub.add_parser("render-config", help="print the generated LiteLLM config (secrets masked)")
    render.set_defaults(func=cmd_render_config)
    check = sub.add_parser("check", help="validate env, config.yml, upstreams, databases and preprocessing")
    check.add_argument("--env-file", default=None, help="read variables from this ENV file too (e.g. .env)")
    check.set_defaults(func=cmd_check)
    add_journal_parsers(sub)
    add_users_parser(sub)
    add_client_config_parser(sub)
    for command in (serve, render, check):
        command.add_argument("--config", default=None, help="config.yml (default: $KODIFY_CONFIG or ./config.yml)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kodify-proxy` console script."""
    logs.configure()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except (ConfigError, InstanceConflict) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STARTUP


if __name__ == "__main__":
    sys.exit(main())
