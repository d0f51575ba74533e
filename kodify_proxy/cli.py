"""The `kodify-proxy` command line: serve, render-config, check."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kodify_proxy import logs
from kodify_proxy.errors import StartupError
from kodify_proxy.journal.commands import add_journal_parsers
from kodify_proxy.preprocess import load_configured
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
    """Wait for upstreams, discover models, render the LiteLLM config and serve."""
    from kodify_proxy import launcher, runtime
    from kodify_proxy.journal.service import open_journal

    settings, config = _load(args)
    preprocessing = load_configured(settings.completions_preprocessing_config)  # a bad file stops startup here
    journal = open_journal(settings)  # LOGS=True: the request journal (RUN_MIGRATIONS=1: upgrade head first)
    from kodify_proxy import auth  # imports LiteLLM, so only once the settings are known to be valid

    verifier = auth.start(settings)  # logs the auth mode; AUTH_TYPE=DB: opens USERS_TABLE (created on first start)
    prepared = launcher.prepare(settings, config, wait=settings.wait_vllm)
    master_key = launcher.ensure_master_key(settings)
    path = launcher.write_litellm_config(settings, prepared.litellm_config)
    launcher.export_environment(config, master_key, path)
    rt = runtime.build_runtime(settings, config, prepared.monitor, master_key, verifier, preprocessing, journal)
    runtime.bind(rt)
    prepared.monitor.mark_registered()
    log.info("Serving models: %s", ", ".join(prepared.monitor.served_models()) or "none yet")
    launcher.run(rt, args.host, args.port)
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="kodify-proxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=cmd_serve)
    render = sub.add_parser("render-config", help="print the generated LiteLLM config (secrets masked)")
    render.set_defaults(func=cmd_render_config)
    check = sub.add_parser("check", help="validate env, config.yml, upstreams, databases and preprocessing")
    check.add_argument("--env-file", default=None, help="read variables from this ENV file too (e.g. .env)")
    check.set_defaults(func=cmd_check)
    add_journal_parsers(sub)
    add_users_parser(sub)
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
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STARTUP


if __name__ == "__main__":
    sys.exit(main())
