"""What `serve` and `render-config` share, on its own: discovery against a real upstream process (the session's fake
vLLM) and a closed port, the master key's life, the LiteLLM config on disk holding no secret, and the environment
LiteLLM starts with."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from kodify_proxy.errors import StartupError
from kodify_proxy.launcher import (
    ensure_master_key,
    export_environment,
    migrate_litellm_database,
    prepare,
    write_litellm_config,
)
from kodify_proxy.settings import load_settings
from kodify_proxy.upstreams import parse_config
from tests.servers import Server, free_port, kodify_proxy, upstreams_yaml

UPSTREAM_KEY = "sk-upstream-secret-for-serving-test"


@pytest.fixture
def restored_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_prepare_discovers_the_models_and_builds_litellms_config(upstream: Server, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = parse_config(
        f"upstreams:\n  {upstream.url}:\n    api_key: {UPSTREAM_KEY}\n  {dead}:\n    models: [fake-model, only-dead]\n",
        tmp_path / "config.yml",
    )
    prepared = prepare(load_settings({"KODIFY_STATE_DIR": str(tmp_path)}), config, wait=False)
    states = prepared.monitor.states
    assert states[upstream.url].healthy and states[upstream.url].models == ("fake-model", "fake-embed")
    assert not states[dead].healthy and states[dead].models == ("fake-model", "only-dead")  # configured
    listed = [(m["model_name"], m["model_info"]["kodify_upstream"]) for m in prepared.litellm_config["model_list"]]
    # the dead upstream is routed only the model nobody else serves (its requests then fail fast and clearly)
    assert sorted(listed) == [("fake-embed", upstream.url), ("fake-model", upstream.url), ("only-dead", dead)]

    path = write_litellm_config(tmp_path / "instance" / "litellm_config.yaml", prepared.litellm_config)
    text = path.read_text()
    assert yaml.safe_load(text) == prepared.litellm_config
    assert UPSTREAM_KEY not in text and "os.environ/KODIFY_UPSTREAM_0_API_KEY" in text


def test_wait_vllm_gives_up_naming_the_upstream_and_the_fix(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = parse_config(f"upstreams:\n  {dead}:\n", tmp_path / "config.yml")
    settings = load_settings({"WAIT_VLLM_ATTEMPTS": "2", "WAIT_VLLM_TIMEOUT": "0"})
    with pytest.raises(StartupError) as caught:
        prepare(settings, config, wait=True)
    assert str(caught.value) == (
        f"Upstream {dead} did not answer GET /v1/models after 2 attempts 0 s apart; "
        "start the vLLM server or raise WAIT_VLLM_ATTEMPTS"
    )
    assert not prepare(settings, config, wait=False).monitor.states[dead].healthy  # without waiting: starts


def test_the_master_key_is_the_given_one_else_generated_once_and_private(tmp_path: Path) -> None:
    given = load_settings({"LITELLM_MASTER_KEY": "sk-given-key", "KODIFY_STATE_DIR": str(tmp_path)})
    assert ensure_master_key(given) == "sk-given-key" and not (tmp_path / "master_key").exists()
    settings = load_settings({"KODIFY_STATE_DIR": str(tmp_path / "state")})
    key = ensure_master_key(settings)
    path = tmp_path / "state" / "master_key"
    assert key.startswith("sk-") and len(key) > 40 and path.read_text() == key + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_master_key(settings) == key  # reused: a restart keeps the admin's key
    assert [p.name for p in path.parent.iterdir()] == ["master_key"]  # no draft left beside it


def test_servers_starting_at_once_agree_on_one_generated_master_key(tmp_path: Path) -> None:
    settings = load_settings({"KODIFY_STATE_DIR": str(tmp_path)})
    with ThreadPoolExecutor(8) as threads:
        keys = set(threads.map(lambda _: ensure_master_key(settings), range(8)))
    assert keys == {(tmp_path / "master_key").read_text().strip()}
    assert [p.name for p in tmp_path.iterdir()] == ["master_key"]


def test_litellm_starts_with_its_config_path_the_master_key_and_upstream_keys(
    tmp_path: Path, restored_environ: None
) -> None:
    config = parse_config(
        f"upstreams:\n  http://a:8000:\n  http://b:8000:\n    api_key: {UPSTREAM_KEY}\n", tmp_path / "config.yml"
    )
    os.environ.pop("KODIFY_UPSTREAM_0_API_KEY", None)
    export_environment(config, "sk-master", tmp_path / "litellm.yaml")
    assert os.environ["CONFIG_FILE_PATH"] == str(tmp_path / "litellm.yaml")
    assert os.environ["LITELLM_MASTER_KEY"] == "sk-master"
    assert os.environ["KODIFY_UPSTREAM_1_API_KEY"] == UPSTREAM_KEY and "KODIFY_UPSTREAM_0_API_KEY" not in os.environ


# --- LiteLLM's own database (its admin UI): migrated once at start, as its `litellm` command does ------------------


def fake_prisma(bin_dir: Path, exit_code: int) -> Path:
    """A `prisma` CLI at the process boundary (the real one needs engines downloaded from the internet): it records
    each call (arguments, directory, DATABASE_URL) in `bin_dir/calls.jsonl` and exits with `exit_code`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "prisma"
    calls = bin_dir / "calls.jsonl"
    script.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"with open({str(calls)!r}, 'a') as f:\n"
        "    f.write(json.dumps([sys.argv[1:], os.getcwd(), os.environ.get('DATABASE_URL')]) + '\\n')\n"
        f"sys.exit({exit_code})\n"
    )
    script.chmod(0o755)
    return calls


def test_without_a_generated_prisma_client_serve_stops_at_once_saying_so(upstream: Server, tmp_path: Path) -> None:
    # These machines can't download Prisma's engines, so LiteLLM's client is never generated here (the image does).
    calls = fake_prisma(tmp_path / "bin", 0)
    env = {"DATABASE_URL": "postgresql://u:p@db:5432/litellm", "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    server = kodify_proxy(tmp_path, upstreams_yaml(upstream.url), env=env).start(expect_ready=False)
    try:
        assert server.process is not None and server.process.wait(120) == 1
        log = server.log_text()
        assert "error: DATABASE_URL is set for LiteLLM's admin UI, but LiteLLM's Prisma client and engines" in log
        assert "build the image" in log and "u:p@db" not in log and "Traceback" not in log
        assert not calls.exists()  # nothing migrated
    finally:
        server.stop()


@pytest.mark.parametrize("exit_code", [0, 1], ids=["migrated", "migration fails"])
def test_litellms_database_is_migrated_as_its_own_command_does(
    tmp_path: Path, exit_code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_prisma(tmp_path / "bin", exit_code)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/litellm_ui")
    if exit_code == 0:
        migrate_litellm_database()
    else:
        with pytest.raises(StartupError, match=r"LiteLLM could not migrate its database at DATABASE_URL \(.+\)"):
            migrate_litellm_database()
    migrations = [json.loads(line) for line in calls.read_text().splitlines() if "migrate" in line]
    assert [argv for argv, _, _ in migrations] == [["migrate", "deploy"]]  # once: a failed one is not retried blindly
    directory, database = migrations[0][1:]
    assert directory.endswith("litellm_proxy_extras") and database == "postgresql://postgres@127.0.0.1:5432/litellm_ui"
