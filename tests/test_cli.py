"""The command line as an administrator meets it: `--version`, and `--help` naming every command."""

from __future__ import annotations

import subprocess
from importlib import metadata

from tests.servers import run_cli


def kodify(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, timeout=60)


def test_version_names_the_package_and_litellm() -> None:
    done = kodify("--version")
    assert done.returncode == 0
    assert done.stdout == f"kodify-proxy {metadata.version('kodify-proxy')} (litellm {metadata.version('litellm')})\n"


def test_help_names_every_command_with_what_it_does() -> None:
    done = kodify("--help")
    assert done.returncode == 0
    commands = ("serve", "render-config", "check", "migrate", "usage", "users")
    lines = done.stdout.splitlines()
    for command in commands:
        described = [line for line in lines if line.strip().startswith(command + " ")]
        assert described and len(described[0].split()) > 2, (command, done.stdout)
    assert "--version" in done.stdout and "--workers" in kodify("serve", "--help").stdout
