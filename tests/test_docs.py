"""Docs-first: every setting and every CLI command is documented where an administrator looks."""

from __future__ import annotations

import re

from kodify_proxy.cli import build_parser
from kodify_proxy.settings import Settings
from tests.servers import REPO


def _documentation() -> str:
    return "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


def test_every_environment_variable_is_documented() -> None:
    docs = _documentation()
    missing = [f.validation_alias for f in Settings.model_fields.values() if f"`{f.validation_alias}`" not in docs]
    assert missing == []


def test_every_cli_command_is_documented() -> None:
    docs = _documentation()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = sorted(sub.choices)  # type: ignore[arg-type]
    assert commands and [c for c in commands if not re.search(rf"kodify-proxy {c}\b", docs)] == []


def test_readme_opens_with_the_two_setup_commands_and_ci_runs_the_test_one() -> None:
    first_block = (REPO / "README.md").read_text().split("```")[1]
    assert "scripts/run.sh" in first_block and "scripts/test.sh" in first_block
    assert "bash scripts/test.sh" in (REPO / ".ci/run").read_text()


def test_readme_layout_names_every_module() -> None:
    layout = (REPO / "README.md").read_text().split("- Layout of `kodify_proxy/`", 1)[1].split("\n- ", 1)[0]
    package = REPO / "kodify_proxy"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in package.iterdir() if (p / "__init__.py").exists()
    }
    assert sorted(m for m in modules if f"`{m}`" not in layout and f"`{m}/`" not in layout) == []
