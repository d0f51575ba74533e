"""`kodify-proxy check` as a real subprocess: a good setup (fake upstream process, real PostgreSQL, real migrations)
passes, and each broken setup is reported line by line, all problems at once, with a non-zero exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from kodify_proxy.env_types import available_cpus
from kodify_proxy.settings import Settings
from tests.servers import REPO, Server, free_port, upstreams_yaml

SETTINGS_NAMES = {str(field.validation_alias) for field in Settings.model_fields.values()}
PASSWORD = "check-s3cret-password"  # trust auth ignores it; it must never be printed


def admin_url(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="module")
def databases(database_url: str) -> Iterator[dict[str, str]]:
    """Private databases (dropped afterwards): `fresh` never migrated, `migrated` at head, `behind` at an old one."""
    names = {kind: f"kodify_check_{kind}_{os.getpid()}" for kind in ("fresh", "migrated", "behind")}
    with psycopg.connect(admin_url(database_url), autocommit=True) as conn:
        for name in names.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    yield names
    with psycopg.connect(admin_url(database_url), autocommit=True) as conn:
        for name in names.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def base_env(tmp: Path) -> dict[str, str]:
    """The test process's environment without any kodify-proxy setting, plus a private state dir."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_NAMES}
    return {**env, "KODIFY_STATE_DIR": str(tmp / "state"), "PYTHONUNBUFFERED": "1"}


def good_env(database: str) -> dict[str, str]:
    """Per-user auth and the journal on the real PostgreSQL, model-server variables for two GPUs."""
    return {
        "MTSAI_AUTH": "true",
        "AUTH_TYPE": "DB",
        "USERS_TABLE": "kodify_check_users",
        "DB_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
        "LOGS": "True",
        "LOGS_DB_HOST": "127.0.0.1",
        "LOGS_DB_PORT": "5432",
        "LOGS_DB_NAME": database,
        "LOGS_DB_USERNAME": "postgres",
        "LOGS_DB_PASSWORD": PASSWORD,
        "COMPLETIONS_PREPROCESSING_CONFIG": "preprocess_configs/qwen.json",
        "GPUUTIL": "0.9",
        "DTYPE": "bfloat16",
        "EAGER": "1",
        "ADDITIONAL_ARGS": "--tensor-parallel-size = 2",
        "NVIDIA_VISIBLE_DEVICES": "0,1",
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    }


def kodify(tmp: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`kodify-proxy ARGS` from the repository root (where `check` finds alembic.ini) with exactly `env` set."""
    return subprocess.run(
        [sys.executable, "-m", "kodify_proxy.cli", *args],
        cwd=REPO,
        env={**base_env(tmp), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def check(tmp: Path, config_text: str | None, env: dict[str, str], *extra: str) -> tuple[int, list[str]]:
    """Run `kodify-proxy check` with `config_text` as config.yml (None: a path that does not exist)."""
    config = tmp / "config.yml"
    if config_text is not None:
        config.write_text(config_text)
    result = kodify(tmp, "check", "--config", str(config), *extra, env=env)
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines()


def has(lines: list[str], *parts: str) -> bool:
    """Some line contains every one of `parts`."""
    return any(all(part in line for part in parts) for line in lines)


@pytest.fixture(scope="module")
def migrated(databases: dict[str, str], database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`kodify-proxy migrate` run on `migrated` and `behind`; `behind` then set back to an older revision."""
    tmp = tmp_path_factory.mktemp("migrate")
    for kind in ("migrated", "behind"):
        result = kodify(tmp, "migrate", env=good_env(databases[kind]))
        assert result.returncode == 0, result.stdout + result.stderr
    behind = admin_url(database_url).rsplit("/", 1)[0] + "/" + databases["behind"]
    with psycopg.connect(behind, autocommit=True) as conn:
        conn.execute("UPDATE kodify_alembic_version SET version_num = '0000_older'")
    return databases


def test_good_setup_passes(tmp_path: Path, upstream: Server, migrated: dict[str, str]) -> None:
    env_file = tmp_path / "kodify.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in good_env(migrated["migrated"]).items()))
    config = upstreams_yaml(upstream.url, extra="tabby:\n  model_name: fake-model\n")
    code, lines = check(tmp_path, config, {}, "--env-file", str(env_file))
    assert code == 0, lines
    assert lines[0] == f"ok: ENV file {env_file}: {len(good_env('x'))} variables read"
    assert "ok: environment: every variable is valid and they agree" in lines
    assert has(lines, "ok: config.yml", "1 upstream(s)")
    assert f"ok: upstream {upstream.url} serves fake-model, fake-embed" in lines
    assert has(lines, "ok: user database postgresql+psycopg://postgres@127.0.0.1:5432/", "(DB_URL) answers")
    assert has(lines, "ok: journal database postgresql+psycopg://postgres:***@127.0.0.1:5432/", "answers")
    assert has(lines, "ok: journal database", ": migrations at head (")
    assert "ok: preprocessing config preprocess_configs/qwen.json is valid" in lines
    assert lines[-1] == "all checks passed"
    assert not has(lines, "problem:")
    cpus = available_cpus()
    runs = f"note: serve runs {cpus} worker process{'es' * (cpus > 1)}"
    assert f"{runs} (auto: the {cpus} CPUs this process may use), ~330 MB of memory each" in lines
    _, three = check(tmp_path, config, {"KODIFY_WORKERS": "3"}, "--env-file", str(env_file))
    assert "note: serve runs 3 worker processes (KODIFY_WORKERS), ~330 MB of memory each" in three


def test_bad_variables_missing_files_all_at_once(tmp_path: Path) -> None:
    env = {
        "MAX_N": "0",
        "GPUUTIL": "1.5",
        "DTYPE": "int8",
        "EAGER": "maybe",
        "ADDITIONAL_ARGS": "tensor 2",
        "VLLM_WORKER_MULTIPROC_METHOD": "thread",
        "COMPLETIONS_PREPROCESSING_CONFIG": "preprocess_configs/nope.json",
    }
    code, lines = check(tmp_path, None, env, "--env-file", str(tmp_path / "missing.env"))
    assert code == 1
    expected = [
        ("problem: --env-file", "missing.env: file not found"),
        ("problem: MAX_N='0' is invalid", "accepted: a whole number >= 1"),
        ("problem: GPUUTIL='1.5' is invalid", "accepted: a fraction in (0, 1]"),
        ("problem: DTYPE='int8' is invalid", "accepted: auto, half, float16, bfloat16, float or float32"),
        ("problem: EAGER='maybe' is invalid", "accepted: 1 to pass --enforce-eager"),
        ("problem: ADDITIONAL_ARGS='tensor 2' is invalid", "start with a flag such as --tensor-parallel-size"),
        ("problem: VLLM_WORKER_MULTIPROC_METHOD='thread' is invalid", "accepted: spawn or fork"),
        ("problem:", "config.yml: config file not found; pass --config PATH, set KODIFY_CONFIG"),
        ("problem: COMPLETIONS_PREPROCESSING_CONFIG=preprocess_configs/nope.json: file not found", "shipped configs"),
    ]
    for parts in expected:
        assert has(lines, *parts), (parts, lines)
    assert lines[-1] == f"{len(expected)} problems found"


def test_contradictory_variables(tmp_path: Path, upstream: Server) -> None:
    env = {
        "MTSAI_AUTH": "true",
        "LOGS": "True",
        "ADDITIONAL_ARGS": "--tensor-parallel-size=4",
        "NVIDIA_VISIBLE_DEVICES": "0,1",
    }
    code, lines = check(tmp_path, upstreams_yaml(upstream.url), env)
    assert code == 1
    assert has(lines, "problem: MTSAI_AUTH=true", "AUTH_TYPE=DB")
    assert has(lines, "problem: MTSAI_AUTH=true needs DB_URL")
    assert has(lines, "problem: LOGS=True needs LOGS_DB_HOST, LOGS_DB_NAME, LOGS_DB_USERNAME, LOGS_DB_PASSWORD")
    assert has(lines, "problem: ADDITIONAL_ARGS asks vLLM for 4 GPUs", "NVIDIA_VISIBLE_DEVICES=0,1 gives it 2")
    assert f"ok: upstream {upstream.url} serves fake-model, fake-embed" in lines  # the other checks still ran
    assert lines[-1] == "4 problems found"  # nothing about the journal database it could not name


def test_unreachable_upstream_wrong_tabby_model_and_bad_preprocessing_json(tmp_path: Path, upstream: Server) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"name": "broken",\n  "fim": }\n')
    config = upstreams_yaml(upstream.url, dead, extra="tabby:\n  model_name: no-such-model\n")
    code, lines = check(tmp_path, config, {"COMPLETIONS_PREPROCESSING_CONFIG": str(bad_json)})
    assert code == 1
    assert has(lines, f"problem: upstream {dead} does not answer GET {dead}/v1/models")
    assert has(lines, "  fix: start the vLLM server at", "or correct its URL in config.yml")
    assert f"ok: upstream {upstream.url} serves fake-model, fake-embed" in lines
    assert has(lines, "problem: tabby.model_name 'no-such-model'", "(served: fake-embed, fake-model)")
    assert has(lines, "  fix: set tabby.model_name to one of the served models")
    assert has(lines, f"problem: {bad_json}: not valid JSON", "line 2 column 10")
    assert lines[-1] == "3 problems found"


def test_unreachable_databases(tmp_path: Path, upstream: Server) -> None:
    port = str(free_port())
    env = {
        **good_env("kodify"),
        "DB_URL": f"postgresql://kodify:{PASSWORD}@127.0.0.1:{port}/kodify",
        "LOGS_DB_PORT": port,
    }
    code, lines = check(tmp_path, upstreams_yaml(upstream.url), env)
    assert code == 1
    assert has(
        lines,
        f"problem: user database postgresql+psycopg://kodify:***@127.0.0.1:{port}/kodify (DB_URL) is unreachable",
        "Connection refused",
    )
    assert has(lines, "  fix: start PostgreSQL, or correct the host, port, user, password and database name in DB_URL")
    assert has(
        lines,
        f"problem: journal database postgresql+psycopg://postgres:***@127.0.0.1:{port}/kodify "
        "(LOGS=True) is unreachable",
    )
    assert has(lines, "  fix: start PostgreSQL, or correct LOGS_DB_HOST, LOGS_DB_PORT")
    assert lines[-1] == "2 problems found"


def test_migrations_not_applied(tmp_path: Path, upstream: Server, databases: dict[str, str]) -> None:
    env = good_env(databases["fresh"])
    code, lines = check(tmp_path, upstreams_yaml(upstream.url), env)
    assert code == 1
    assert has(lines, "problem: journal database", f"/{databases['fresh']} has no kodify_alembic_version table")
    assert has(lines, "  fix: apply them: `kodify-proxy migrate`, or the guide's `alembic -c <dir>/alembic.ini upgrade")
    assert lines[-1] == "1 problem found"
    code, lines = check(tmp_path, upstreams_yaml(upstream.url), {**env, "RUN_MIGRATIONS": "1"})
    assert code == 0 and has(lines, "note: journal database", "RUN_MIGRATIONS=1 applies them when kodify-proxy starts")


def test_migrations_behind_head(tmp_path: Path, upstream: Server, migrated: dict[str, str]) -> None:
    code, lines = check(tmp_path, upstreams_yaml(upstream.url), good_env(migrated["behind"]))
    assert code == 1
    assert has(lines, "problem: journal database", ": migrations at revision 0000_older, but the head is ")
    assert lines[-1] == "1 problem found"


GUIDE_STYLE_ENV = """\
# as the guide writes its examples
GPUUTIL: 0.9
DTYPE: float16
VLLM_API_KEY: abc
MTSAI_AUTH: False
LOGS: True
LOGS_DB_HOST: 127.0.0.1
LOGS_DB_POST: 5432
LOGS_DB_NAME: kodify
LOGS_DB_USERNAME: postgres
LOGS_DB_PASSWORD: x
"""


def test_guide_style_env_file_read_as_compose_reads_it_every_problem_at_once(tmp_path: Path) -> None:
    env_file = tmp_path / "guide.env"
    env_file.write_text(GUIDE_STYLE_ENV + "DTYPE int8\nGPU UTIL=1\nSOMETHING_ELSE=1\n")
    code, lines = check(tmp_path, None, base_env(tmp_path), "--env-file", str(env_file))
    assert code == 1
    assert (
        lines[0] == f"ok: ENV file {env_file}: 11 variables read; Compose refuses the whole file until they are fixed"
    )
    expected = [
        f"problem: ENV file {env_file}, line 12: key cannot contain a space",
        f"problem: ENV file {env_file}, line 13: key cannot contain a space",
        "problem: LOGS_DB_POST is not read by kodify-proxy: did you mean LOGS_DB_PORT?",
        "note: SOMETHING_ELSE (in the ENV file) is read neither by kodify-proxy nor by compose.yaml",
        "problem: /",  # config.yml missing: the checks after the environment still ran
        "problem: journal database",  # no database `kodify` on the test server
    ]
    for part in expected:
        assert has(lines, part), (part, lines)
    assert not has(lines, "dummy authorization"), "VLLM_API_KEY: abc was read: one shared token"
    assert "ok: authorization: one shared token (VLLM_API_KEY)" in lines
    assert lines[-1] == "5 problems found"


def test_guide_typo_reported_even_when_other_variables_are_invalid(tmp_path: Path) -> None:
    env = {**base_env(tmp_path), "LOGS_DB_POST": "5432", "MAX_N": "0"}
    _, lines = check(tmp_path, None, env)
    assert has(lines, "problem: MAX_N='0' is invalid")
    assert has(lines, "problem: LOGS_DB_POST is not read by kodify-proxy: did you mean LOGS_DB_PORT?")
    _, both = check(tmp_path, None, {**env, "LOGS_DB_PORT": "5432"})
    assert has(both, "note: LOGS_DB_POST is not read (did you mean LOGS_DB_PORT? it is set too")


def test_every_variable_compose_yaml_and_env_example_name_is_known() -> None:
    from kodify_proxy.checks import known_variables

    files = [REPO / "compose.yaml", *(REPO / "deploy").glob("compose.*.yaml")]
    compose = {name for path in files for name in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", path.read_text())}
    example = set(re.findall(r"^#? ?([A-Z_][A-Z0-9_]*)=", (REPO / ".env.example").read_text(), re.MULTILINE))
    assert (compose | example) - known_variables() == set()


def test_compose_profiles_must_start_the_database_the_env_needs(tmp_path: Path) -> None:
    asks = {**base_env(tmp_path), "LOGS": "True", "KODIFY_JOURNAL_URL": f"sqlite:///{tmp_path}/journal.db"}
    _, lines = check(tmp_path, None, {**asks, "COMPOSE_PROFILES": "auth-NO,logs-False"})
    assert has(lines, "problem: COMPOSE_PROFILES=auth-NO,logs-False leaves out compose's PostgreSQL, which LOGS needs")
    _, lines = check(tmp_path, None, {**asks, "COMPOSE_PROFILES": "auth-NO,logs-True"})
    assert has(lines, "problem: compose starts PostgreSQL", "but POSTGRES_PASSWORD is empty")
    _, lines = check(tmp_path, None, {**asks, "COMPOSE_PROFILES": "auth-NO,logs-True", "POSTGRES_PASSWORD": "pw"})
    assert has(lines, "ok: compose starts PostgreSQL and the migrate service (COMPOSE_PROFILES=auth-NO,logs-True)")
    _, lines = check(tmp_path, None, {**base_env(tmp_path), "COMPOSE_PROFILES": "auth-NO,logs-False"})
    assert has(lines, "note: compose starts no database (COMPOSE_PROFILES=auth-NO,logs-False): none is needed")
    assert not has(lines, "POSTGRES_PASSWORD")


def test_metrics_need_a_token_for_prometheus_when_auth_is_on(tmp_path: Path) -> None:
    shared = {**base_env(tmp_path), "VLLM_API_KEY": "client-token"}
    _, lines = check(tmp_path, None, {**shared, "COMPOSE_PROFILES": "auth-NO,logs-False,monitoring"})
    assert has(lines, "problem: GET /metrics needs KODIFY_METRICS_TOKEN or the master key, so compose's Prometheus")
    _, lines = check(tmp_path, None, shared)
    assert has(lines, "note: GET /metrics needs the LiteLLM master key: for Prometheus, set KODIFY_METRICS_TOKEN")
    _, lines = check(tmp_path, None, {**shared, "KODIFY_METRICS_TOKEN": "scrape"})
    assert "ok: GET /metrics: Prometheus sends KODIFY_METRICS_TOKEN" in lines
    _, lines = check(tmp_path, None, base_env(tmp_path))  # dummy auth: /metrics is open like every route
    assert not has(lines, "/metrics")
