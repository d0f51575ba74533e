"""Shared fixtures: real processes (fake upstream, kodify-proxy) reused across tests."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.journal_support import slow_upstream
from tests.measured import MEASURED
from tests.servers import Server, fake_upstream, kodify_proxy, upstreams_yaml


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the tests measured (tests/measured.py), a section each."""
    for section, lines in MEASURED.sections.items():
        terminalreporter.write_sep("-", section)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Warnings are errors (pyproject.toml): an unclosed connection, socket or file is reported when the garbage
    collector finds it. Collecting after every test reports it in the test that left it, not in a later one."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def upstream(session_tmp: Path) -> Iterator[Server]:
    """A fake upstream serving `fake-model` and `fake-embed`."""
    server = fake_upstream(session_tmp, ("fake-model", "fake-embed")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slow(session_tmp: Path) -> Iterator[Server]:
    """An upstream serving `slow-model`, whose streamed chat sends a chunk every 0.2 s (tests.journal_support)."""
    server = slow_upstream(session_tmp).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxy(session_tmp: Path, upstream: Server) -> Iterator[Server]:
    """kodify-proxy in dummy-auth mode in front of `upstream`, MAX_N=4."""
    server = kodify_proxy(session_tmp, upstreams_yaml(upstream.url), env={"MAX_N": "4"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url() -> str:
    """The real PostgreSQL the tests use (TEST_DATABASE_URL, else the CI server)."""
    return os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
