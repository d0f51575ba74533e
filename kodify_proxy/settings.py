"""The only reader of the environment: the guide's variables (and ours), typed, validated, with named errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

_TRUE = {"true", "1", "yes", "on", "y"}
_FALSE = {"false", "0", "no", "off", "n", ""}


def _parse_bool(value: Any) -> Any:
    """Booleans the way the guide's ENV files write them: true/True/1/yes, and an empty value is off."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return value


def _empty_to_none(value: Any) -> Any:
    """An ENV-file line `NAME=` means "not set", as docker compose passes it."""
    return None if isinstance(value, str) and not value.strip() else value


Flag = Annotated[bool, BeforeValidator(_parse_bool)]
OptStr = Annotated[str | None, BeforeValidator(_empty_to_none)]
OptSecret = Annotated[SecretStr | None, BeforeValidator(_empty_to_none)]


def _env(name: str, accepts: str, default: Any = None, **kw: Any) -> Any:
    """A field read from environment variable `name`; `accepts` is said back when a value is wrong."""
    return Field(default, validation_alias=name, description=accepts, **kw)


class Settings(BaseSettings):
    """Everything kodify-proxy reads from its environment; the guide's names and defaults, plus KODIFY_*."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=False)

    # Authorization (guide table 9)
    mtsai_auth: Flag = _env("MTSAI_AUTH", "a boolean: true/false, 1/0, yes/no", False)
    auth_type: Literal["NO", "DB"] = _env("AUTH_TYPE", "NO or DB", "NO")
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
    state_dir: OptStr = _env("KODIFY_STATE_DIR", "a writable directory")
    request_timeout: float = _env("KODIFY_REQUEST_TIMEOUT", "seconds > 0 an upstream may take", 600.0, gt=0)
    connect_timeout: float = _env("KODIFY_CONNECT_TIMEOUT", "seconds > 0 to connect to an upstream", 5.0, gt=0)
    num_retries: int = _env("KODIFY_NUM_RETRIES", "a whole number >= 0", 1, ge=0)
    discovery_interval: float = _env("KODIFY_DISCOVERY_INTERVAL", "seconds >= 1 between upstream checks", 10.0, ge=1)

    def resolved_state_dir(self) -> Path:
        """Where generated files (master key, rendered LiteLLM config) live."""
        if self.state_dir:
            return Path(self.state_dir)
        return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "kodify-proxy"


SECRET_VARIABLES = frozenset({"VLLM_API_KEY", "DB_URL", "LOGS_DB_PASSWORD", "LITELLM_MASTER_KEY"})


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


def _cross_check(settings: Settings) -> list[str]:
    """Problems that involve several variables at once."""
    problems = []
    if settings.logs:
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
        if missing:
            problems.append(f"LOGS=True needs {', '.join(missing)}; set them, or set LOGS=False")
    return problems


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the environment; raise SettingsError listing every problem at once."""
    source = dict(os.environ if environ is None else environ)
    names = {f.validation_alias for f in Settings.model_fields.values()}
    values = {k: v for k, v in source.items() if k in names}
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_problems_from(exc)) from None
    problems = _cross_check(settings)
    if problems:
        raise SettingsError(problems)
    return settings
