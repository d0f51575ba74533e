"""The only reader of the environment: the guide's variables (and ours), typed, validated, with named errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from kodify_proxy import tls
from kodify_proxy.env_types import (
    AllocConf,
    Flag,
    GpuList,
    MultiprocMethod,
    OptFloat,
    OptInt,
    OptSecret,
    OptStr,
    VllmArgs,
    VllmDtype,
    WorkerCount,
    ZeroOne,
    empty_to_default,
    gpus_needed,
    visible_device_count,
    vllm_extra_args,
)


def _env(name: str, accepts: str, default: Any = None, **kw: Any) -> Any:
    """A field read from environment variable `name`; `accepts` is said back when a value is wrong."""
    return Field(default, validation_alias=name, description=accepts, **kw)


# What each KODIFY_LIMIT_<KIND>_<LIMIT> counts, per user (docs/limits.md)
_LIMIT_COUNTS = {
    "RPM": "{kind} requests per minute per user",
    "CONCURRENCY": "{kind} requests in flight per user",
    "TOKENS_PER_DAY": "{kind} tokens (prompt + completion) per user per UTC day",
}


def _limit(kind: str, limit: str) -> Any:
    """The field of KODIFY_LIMIT_<kind>_<limit>: a whole number >= 1, empty for unlimited."""
    counts = _LIMIT_COUNTS[limit].format(kind=kind.lower())
    return _env(f"KODIFY_LIMIT_{kind}_{limit}", f"a whole number >= 1 of {counts}; empty: unlimited", ge=1)


class Settings(BaseSettings):
    """Everything kodify-proxy reads from its environment; the guide's names and defaults, plus KODIFY_*."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=False)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *args: Any, **kwargs: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what `load_settings` passes in: it reads the environment (or the mapping a caller gives) itself."""
        return (init_settings,)

    # Authorization (guide table 9)
    mtsai_auth: Flag = _env("MTSAI_AUTH", "a boolean: true/false, 1/0, yes/no", False)
    auth_type: Annotated[Literal["NO", "DB"], BeforeValidator(empty_to_default("NO"))] = _env(
        "AUTH_TYPE", "NO or DB", "NO"
    )
    vllm_api_key: OptSecret = _env("VLLM_API_KEY", "any non-empty token")
    # Database (guide table 10)
    users_table: str = _env("USERS_TABLE", "a table name, optionally schema-qualified", "kodify_users")
    db_url: OptSecret = _env("DB_URL", "a database URL such as postgresql://user:pass@host:5432/db")
    run_migrations: Flag = _env("RUN_MIGRATIONS", "1 to run migrations at startup, 0 or empty not to", False)
    # Generation (guide table 11)
    max_n: int = _env("MAX_N", "a whole number >= 1", 10, ge=1)
    completions_preprocessing_config: OptStr = _env(
        "COMPLETIONS_PREPROCESSING_CONFIG", "a path to a preprocessing JSON file"
    )
    # Journal (guide table 12)
    logs: Flag = _env("LOGS", "a boolean: True/False", False)
    logs_db_host: OptStr = _env("LOGS_DB_HOST", "a host name")
    logs_db_port: int = _env("LOGS_DB_PORT", "a port number 1-65535", 5432, ge=1, le=65535)
    logs_db_name: OptStr = _env("LOGS_DB_NAME", "a database name")
    logs_db_username: OptStr = _env("LOGS_DB_USERNAME", "a user name")
    logs_db_password: OptSecret = _env("LOGS_DB_PASSWORD", "a password")
    # Waiting for vLLM (guide table 13)
    wait_vllm: Flag = _env("WAIT_VLLM", "a boolean: true/false, 1/0", False)
    wait_vllm_attempts: int = _env("WAIT_VLLM_ATTEMPTS", "a whole number >= 1", 5, ge=1)
    wait_vllm_timeout: float = _env("WAIT_VLLM_TIMEOUT", "a number of seconds >= 0", 10.0, ge=0)
    # Ours
    config_path: OptStr = _env("KODIFY_CONFIG", "a path to config.yml")
    master_key: OptSecret = _env("LITELLM_MASTER_KEY", "a key starting with sk-", pattern=None)
    # LiteLLM's own database (its admin UI logins, keys, spend): read by LiteLLM; we only say when it is missing.
    litellm_database_url: OptSecret = _env("DATABASE_URL", "LiteLLM's PostgreSQL URL, e.g. postgresql://u:p@db/litellm")
    state_dir: OptStr = _env("KODIFY_STATE_DIR", "a writable directory")
    request_timeout: float = _env("KODIFY_REQUEST_TIMEOUT", "seconds > 0 an upstream may take", 600.0, gt=0)
    connect_timeout: float = _env("KODIFY_CONNECT_TIMEOUT", "seconds > 0 to connect to an upstream", 5.0, gt=0)
    num_retries: int = _env("KODIFY_NUM_RETRIES", "a whole number >= 0", 1, ge=0)
    discovery_interval: float = _env("KODIFY_DISCOVERY_INTERVAL", "seconds >= 1 between upstream checks", 10.0, ge=1)
    down_recheck_interval: float = _env(
        "KODIFY_DOWN_RECHECK_INTERVAL", "seconds 0.1-60 between checks of an upstream that is down", 0.25, ge=0.1, le=60
    )
    # The client surface and the autocompletion lane (docs/autocompletion.md, README "HTTP")
    completions_lane: Annotated[Literal["direct", "litellm"], BeforeValidator(empty_to_default("direct"))] = _env(
        "KODIFY_COMPLETIONS_LANE",
        "direct (our lane straight to vLLM) or litellm (through LiteLLM's pipeline)",
        "direct",
    )
    chat_lane: Annotated[Literal["direct", "litellm"], BeforeValidator(empty_to_default("direct"))] = _env(
        "KODIFY_CHAT_LANE",
        "direct (chat and embeddings in our lane straight to vLLM) or litellm (through LiteLLM's pipeline)",
        "direct",
    )
    cache_affinity: Flag = _env(
        "KODIFY_CACHE_AFFINITY",
        "a boolean: true sends one file's completions to one upstream, false spreads them",
        True,
    )
    stream_idle_timeout: float = _env(
        "KODIFY_STREAM_IDLE_TIMEOUT", "seconds > 0 a stream may go without a chunk from the upstream", 60.0, gt=0
    )
    max_body_bytes: int = _env(
        "KODIFY_MAX_BODY_BYTES", "a whole number >= 1024 of bytes a request body may have", 32 << 20, ge=1024
    )
    event_max_bytes: int = _env(
        "KODIFY_EVENT_MAX_BYTES", "a whole number >= 1024 of bytes a client's event may have", 1 << 20, ge=1024
    )
    body_timeout: float = _env(
        "KODIFY_BODY_TIMEOUT", "seconds > 0 a client may take to send a request's headers, then its body", 30.0, gt=0
    )
    shutdown_grace: int = _env(
        "KODIFY_SHUTDOWN_GRACE", "whole seconds >= 0 requests in flight may take to finish after SIGTERM", 30, ge=0
    )
    workers: WorkerCount = _env(
        "KODIFY_WORKERS", "auto (the CPUs this process may use) or a whole number 1-512 of server processes", "auto"
    )
    metrics_auth: Flag = _env(
        "KODIFY_METRICS_AUTH", "a boolean: true makes GET /metrics need its credential with dummy auth too", False
    )
    metrics_token: OptSecret = _env(
        "KODIFY_METRICS_TOKEN", "a token for Prometheus only: GET /metrics with 'Authorization: Bearer <it>'"
    )
    # HTTPS served by kodify-proxy itself (docs/deployment.md, "TLS"); empty behind an ingress that terminates TLS
    tls_cert_file: OptStr = _env(
        "KODIFY_TLS_CERT_FILE", "a path to the server's PEM certificate (its chain after it), with KODIFY_TLS_KEY_FILE"
    )
    tls_key_file: OptStr = _env("KODIFY_TLS_KEY_FILE", "a path to the certificate's PEM private key, unencrypted")
    tls_ca_file: OptStr = _env(
        "KODIFY_TLS_CA_FILE", "a path to PEM CA certificates: clients must present a certificate one of them signed"
    )
    # Fair share (docs/limits.md): per-user limits for each kind of work, and where they are counted
    limit_completions_rpm: OptInt = _limit("COMPLETIONS", "RPM")
    limit_completions_concurrency: OptInt = _limit("COMPLETIONS", "CONCURRENCY")
    limit_completions_tokens_per_day: OptInt = _limit("COMPLETIONS", "TOKENS_PER_DAY")
    limit_chat_rpm: OptInt = _limit("CHAT", "RPM")
    limit_chat_concurrency: OptInt = _limit("CHAT", "CONCURRENCY")
    limit_chat_tokens_per_day: OptInt = _limit("CHAT", "TOKENS_PER_DAY")
    limit_embeddings_rpm: OptInt = _limit("EMBEDDINGS", "RPM")
    limit_embeddings_concurrency: OptInt = _limit("EMBEDDINGS", "CONCURRENCY")
    limit_embeddings_tokens_per_day: OptInt = _limit("EMBEDDINGS", "TOKENS_PER_DAY")
    redis_url: OptSecret = _env("REDIS_URL", "a Redis URL, e.g. redis://redis:6379/0 (limits shared by every process)")
    # Per-user token auth (auth issue, docs/auth.md): the token cache and the user database
    auth_cache_ttl: float = _env(
        "KODIFY_AUTH_CACHE_TTL",
        "seconds 0-300 a validated user token is trusted without asking the database (a revoke takes effect within it)",
        5.0,
        ge=0,
        le=300,
    )
    auth_negative_ttl: float = _env(
        "KODIFY_AUTH_NEGATIVE_TTL", "seconds 0-60 an unknown user token is remembered as unknown", 2.0, ge=0, le=60
    )
    auth_db_timeout: float = _env(
        "KODIFY_AUTH_DB_TIMEOUT", "seconds 0-60 to wait for the user database before answering 503", 3.0, gt=0, le=60
    )
    # Request journal (journal issue, docs/journal.md); LOGS and LOGS_DB_* are above
    journal_url: OptSecret = _env(
        "KODIFY_JOURNAL_URL",
        "a SQLAlchemy URL, e.g. postgresql+psycopg://USER:PASS@HOST:5432/DB or sqlite:////var/lib/kodify/journal.db",
    )
    journal_bodies: Flag = _env(
        "KODIFY_JOURNAL_BODIES", "a boolean: true keeps request and response bodies, false metadata only", True
    )
    journal_body_max_bytes: int = _env(
        "KODIFY_JOURNAL_BODY_MAX_BYTES", "a whole number >= 0 of bytes kept of each body", 65536, ge=0
    )
    journal_spool_dir: OptStr = _env("KODIFY_JOURNAL_SPOOL_DIR", "a writable directory on a local disk")
    journal_batch_size: int = _env("KODIFY_JOURNAL_BATCH_SIZE", "a whole number 1-10000", 200, ge=1, le=10000)
    journal_flush_interval: float = _env(
        "KODIFY_JOURNAL_FLUSH_INTERVAL", "seconds 0.01-60 between batch writes", 0.5, ge=0.01, le=60
    )
    journal_retry_interval: float = _env(
        "KODIFY_JOURNAL_RETRY_INTERVAL",
        "seconds 0.1-300 between attempts to reach a down database",
        2.0,
        ge=0.1,
        le=300,
    )
    journal_db_timeout: float = _env(
        "KODIFY_JOURNAL_DB_TIMEOUT", "seconds 1-300 a journal connect or insert may take", 5.0, ge=1, le=300
    )
    # Model server (deployment issue, docs/deployment.md; guide tables 6, 7, 8, 13). kodify-proxy does not use them:
    # compose.yaml and deploy/k8s hand them to vLLM. Validated here so `check` and startup name a bad ENV file.
    gpuutil: OptFloat = _env("GPUUTIL", "a fraction in (0, 1], e.g. 0.9 (vLLM --gpu-memory-utilization)", gt=0, le=1)
    dtype: VllmDtype = _env("DTYPE", "auto, half, float16, bfloat16, float or float32 (vLLM --dtype)")
    eager: Flag = _env("EAGER", "1 to pass --enforce-eager to vLLM; empty (or 0) not to", False)
    additional_args: VllmArgs = _env(
        "ADDITIONAL_ARGS", "extra vLLM flags such as --tensor-parallel-size=2 or --pipeline-parallel-size=2"
    )
    vllm_use_v1: ZeroOne = _env("VLLM_USE_V1", "0 or 1 (ignored by vLLM >= 0.11, which has only the V1 engine)")
    pytorch_cuda_alloc_conf: AllocConf = _env(
        "PYTORCH_CUDA_ALLOC_CONF", "KEY:VALUE pairs separated by commas, e.g. expandable_segments:True"
    )
    nvidia_visible_devices: GpuList = _env(
        "NVIDIA_VISIBLE_DEVICES", "all, or GPU indices or UUIDs separated by commas, e.g. 0,1"
    )
    vllm_worker_multiproc_method: MultiprocMethod = _env("VLLM_WORKER_MULTIPROC_METHOD", "spawn or fork")
    vllm_tool_call_parser: OptStr = _env(
        "VLLM_TOOL_CALL_PARSER",
        "a vLLM tool call parser name (letters, digits, _ and -), e.g. hermes for Qwen2.5; empty for no tool calling",
        "hermes",
        pattern=r"^[A-Za-z0-9_-]+$",
    )

    def resolved_state_dir(self) -> Path:
        """Where generated files live: the master key and the SQLite journal, shared by every server of this user;
        each server's own state in `instances/<host>-<port>@<hostname>` inside it (kodify_proxy.instance)."""
        if self.state_dir:
            return Path(self.state_dir)
        return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "kodify-proxy"


SECRET_VARIABLES = frozenset(
    {
        "VLLM_API_KEY",
        "DB_URL",
        "LOGS_DB_PASSWORD",
        "LITELLM_MASTER_KEY",
        "KODIFY_JOURNAL_URL",
        "DATABASE_URL",
        "REDIS_URL",
        "KODIFY_METRICS_TOKEN",
    }
)


class SettingsError(Exception):
    """Invalid environment: one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def describe_problem(name: str, given: Any, accepts: str, reason: str) -> str:
    """One line naming the variable, the value given (masked for secrets) and what is accepted."""
    shown = "<hidden>" if name in SECRET_VARIABLES else repr(given)
    return f"{name}={shown} is invalid ({reason}); accepted: {accepts}"


def _problems_from(error: ValidationError) -> list[str]:
    fields = {f.validation_alias: f for f in Settings.model_fields.values()}
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else "?"
        field = fields.get(name)
        accepts = field.description if field is not None and field.description else "see README"
        problems.append(describe_problem(name, item.get("input"), accepts, item["msg"]))
    return problems


# --- Auth modes (auth issue, docs/auth.md): MTSAI_AUTH, AUTH_TYPE, VLLM_API_KEY, DB_URL, USERS_TABLE must agree ---


def _auth_problems(settings: Settings) -> list[str]:
    """The guide's table 9: false -> one token (VLLM_API_KEY) or dummy; true + AUTH_TYPE=DB + DB_URL -> per-user."""
    if not settings.mtsai_auth:
        return _no_user_auth_problems(settings)
    problems = []
    if settings.auth_type != "DB":
        problems.append(
            "MTSAI_AUTH=true (per-user tokens) needs AUTH_TYPE=DB; set AUTH_TYPE=DB, or set MTSAI_AUTH=false "
            "for one shared token (VLLM_API_KEY) or no auth"
        )
    if settings.db_url is None:
        problems.append(
            "MTSAI_AUTH=true needs DB_URL, the users database: DB_URL=postgresql://USER:PASSWORD@HOST:5432/DB "
            "(or DB_URL=sqlite:///users.db on one machine)"
        )
    if settings.vllm_api_key is not None:
        problems.append(
            "VLLM_API_KEY is set but MTSAI_AUTH=true uses per-user tokens, so it would be ignored; remove "
            "VLLM_API_KEY, or set MTSAI_AUTH=false and AUTH_TYPE=NO for one shared token"
        )
    return problems + _users_db_problems(settings)


def _no_user_auth_problems(settings: Settings) -> list[str]:
    if settings.auth_type == "DB":
        return [
            "AUTH_TYPE=DB needs MTSAI_AUTH=true (per-user tokens); set MTSAI_AUTH=true, or set AUTH_TYPE=NO "
            "for one shared token (VLLM_API_KEY) or no auth"
        ]
    unused = [
        name
        for name, given in (
            ("DB_URL", settings.db_url is not None),
            ("USERS_TABLE", "users_table" in settings.model_fields_set and settings.users_table.strip() != ""),
        )
        if given
    ]
    if not unused:
        return []
    return [
        f"{' and '.join(unused)} set, but MTSAI_AUTH=false turns per-user tokens off; set MTSAI_AUTH=true and "
        f"AUTH_TYPE=DB to use them, or remove {' and '.join(unused)}"
    ]


def _users_db_problems(settings: Settings) -> list[str]:
    from kodify_proxy.database import DatabaseUrlError, parse_url
    from kodify_proxy.users import parse_table_name

    problems = []
    schema, driver = None, ""
    try:
        schema = parse_table_name(settings.users_table).schema
    except ValueError as exc:
        problems.append(f"USERS_TABLE={settings.users_table!r} is invalid: {exc}")
    if settings.db_url is not None:
        try:
            driver = parse_url(settings.db_url.get_secret_value(), "DB_URL").drivername
        except DatabaseUrlError as exc:
            problems.append(f"DB_URL=<hidden> is invalid: {exc.problem}")
    if driver.startswith("sqlite") and schema not in (None, "main"):
        problems.append(
            f"USERS_TABLE={settings.users_table!r} names schema {schema!r}, but SQLite (DB_URL=sqlite:…) has "
            "no schemas; use a plain table name"
        )
    return problems


# --- Request journal (journal issue, docs/journal.md): LOGS, LOGS_DB_*, KODIFY_JOURNAL_URL ---


def _journal_problems(settings: Settings) -> list[str]:
    """LOGS=True needs every LOGS_DB_* variable, unless KODIFY_JOURNAL_URL names the database itself."""
    if not settings.logs or settings.journal_url is not None:
        return []
    missing = [
        name
        for name, value in (
            ("LOGS_DB_HOST", settings.logs_db_host),
            ("LOGS_DB_NAME", settings.logs_db_name),
            ("LOGS_DB_USERNAME", settings.logs_db_username),
            ("LOGS_DB_PASSWORD", settings.logs_db_password),
        )
        if value is None
    ]
    if not missing:
        return []
    return [
        f"LOGS=True needs {', '.join(missing)}; set them, or set KODIFY_JOURNAL_URL (e.g. "
        "sqlite:////var/lib/kodify/journal.db for a one-machine journal), or set LOGS=False"
    ]


def _model_server_problems(settings: Settings) -> list[str]:
    """The GPUs ADDITIONAL_ARGS asks for (tensor x pipeline parallel size) must be among NVIDIA_VISIBLE_DEVICES."""
    if settings.additional_args is None or settings.nvidia_visible_devices is None:
        return []
    needed = gpus_needed(vllm_extra_args(settings.additional_args))
    visible = visible_device_count(settings.nvidia_visible_devices)
    if visible is None or needed <= visible:
        return []
    gpus = f"{needed} GPU{'s' * (needed > 1)}"
    return [
        f"ADDITIONAL_ARGS asks vLLM for {gpus} (tensor x pipeline parallel size) but NVIDIA_VISIBLE_DEVICES="
        f"{settings.nvidia_visible_devices} gives it {visible}; list {gpus} there (or all), or lower the sizes"
    ]


def _metrics_problems(settings: Settings) -> list[str]:
    """The metrics token must not be a client token too, or every client could read every user's counts."""
    token, shared = settings.metrics_token, settings.vllm_api_key
    if token is None or shared is None or token.get_secret_value() != shared.get_secret_value():
        return []
    return [
        "KODIFY_METRICS_TOKEN=<hidden> equals VLLM_API_KEY: give Prometheus a token of its own (openssl rand -hex 32)"
    ]


def _cross_check(settings: Settings) -> list[str]:
    """Problems that involve several variables at once."""
    problems = _journal_problems(settings) + _metrics_problems(settings)
    problems += _auth_problems(settings)
    problems += _model_server_problems(settings)
    problems += tls.problems(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    return problems


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the environment; raise SettingsError listing every problem at once."""
    source = dict(os.environ if environ is None else environ)
    names = {f.validation_alias for f in Settings.model_fields.values()}
    values = {k: v for k, v in source.items() if k in names}
    try:
        return _checked(Settings.model_validate(values), [])
    except ValidationError as exc:
        field_problems = _problems_from(exc)
        invalid = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
    # The cross-variable checks still run on the valid variables, so one run names every problem.
    try:
        rest = Settings.model_validate({k: v for k, v in values.items() if k not in invalid})
    except ValidationError:
        raise SettingsError(field_problems) from None
    return _checked(rest, field_problems)


def _checked(settings: Settings, problems: list[str]) -> Settings:
    problems = problems + _cross_check(settings)
    if problems:
        raise SettingsError(problems)
    return settings
