"""`kodify-proxy check`: every problem of an installation at once, each with its fix, and a non-zero exit if any.

It reads what `serve` reads (the environment, or an ENV file given with --env-file, and config.yml) and checks the
variables, config.yml, each upstream, the user database (AUTH_TYPE=DB), the journal database and its migrations
(LOGS=True) and the completions preprocessing config. Nothing is created or changed.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

import httpx
from pydantic import ValidationError
from sqlalchemy import URL

from kodify_proxy import tls
from kodify_proxy.auth import metrics_guarded, select_mode
from kodify_proxy.database import DatabaseUrlError, connect_error, parse_url, render_url, sqlite_file
from kodify_proxy.env_file import read_env_file
from kodify_proxy.env_types import TRUE_WORDS, resolve_workers
from kodify_proxy.settings import Settings, SettingsError, load_settings
from kodify_proxy.upstreams import ConfigError, KodifyConfig, UpstreamState, check_all, load_config, resolve_config_path

MIGRATE_FIX = (
    "apply them: `kodify-proxy migrate`, or the guide's `alembic -c <dir>/alembic.ini upgrade head` "
    "(compose: RUN_MIGRATIONS=1 in .env, then `docker compose up migrate`; Kubernetes: RUN_MIGRATIONS=1 runs the "
    "init container), or set RUN_MIGRATIONS=1 so kodify-proxy applies them at startup"
)

Level = Literal["ok", "note", "problem"]


@dataclass(frozen=True)
class Finding:
    """One line of the report: `ok`, `note` (worth knowing, not wrong) or `problem` (with its fix)."""

    level: Level
    text: str
    fix: str | None = None


def ok(message: str) -> Finding:
    """A check that passed."""
    return Finding("ok", message)


def note(message: str) -> Finding:
    """Something worth knowing that does not fail the check."""
    return Finding("note", message)


def problem(message: str, fix: str | None = None) -> Finding:
    """Something that keeps the server from working as configured; `fix` when the message does not say it."""
    return Finding("problem", message, fix)


def run_check(config_arg: str | None, env_file: str | None, out: TextIO = sys.stdout) -> int:
    """Run every check, print the report to `out`, return 1 when there is a problem, else 0."""
    findings = collect(config_arg, env_file)
    out.write(render(findings))
    return 1 if any(f.level == "problem" for f in findings) else 0


def collect(config_arg: str | None, env_file: str | None) -> list[Finding]:
    """Every check in order; later ones still run when earlier ones found problems."""
    environ, findings = read_environment(env_file)
    settings, more = check_environment(environ)
    findings += more + check_compose_database(settings, environ) + check_metrics(settings, environ)
    config, more = check_config(config_arg, settings)
    findings += more
    if config is not None:
        findings += asyncio.run(check_upstreams(settings, config))
    findings += check_users_database(settings)
    findings += check_journal(settings)
    findings += check_preprocessing(settings)
    findings += check_tls(settings)
    return findings


def render(findings: Iterable[Finding]) -> str:
    """The report: one `level: text` line per finding, `  fix: …` under a problem, and a summary line."""
    lines: list[str] = []
    problems = 0
    for finding in findings:
        lines.append(f"{finding.level}: {finding.text}")
        if finding.fix:
            lines.append(f"  fix: {finding.fix}")
        problems += finding.level == "problem"
    lines.append("all checks passed" if not problems else f"{problems} problem{'s' * (problems > 1)} found")
    return "\n".join(lines) + "\n"


# --- environment -----------------------------------------------------------------------------------------------


def read_environment(env_file: str | None) -> tuple[dict[str, str], list[Finding]]:
    """The process environment, overlaid with an ENV file's values read as Compose reads them (`KEY=value` and the
    guide's `KEY: value`), as a container started with it would see; each line Compose can't read is a problem."""
    environ = dict(os.environ)
    if env_file is None:
        return environ, _name_findings(environ, env_file_names=())
    path = Path(env_file)
    if not path.is_file():
        return environ, [problem(f"--env-file {path}: file not found", "give the path of the ENV file (e.g. .env)")]
    read = read_env_file(path, os.environ.get)
    environ.update(read.values)
    findings = [problem(f"ENV file {path}, {error}", ENV_LINE_FIX) for error in read.errors]
    unread = f"; Compose refuses the whole file until {'they are' if len(read.errors) > 1 else 'it is'} fixed"
    findings.insert(0, ok(f"ENV file {path}: {len(read.values)} variables read" + (unread if read.errors else "")))
    return environ, findings + _name_findings(environ, env_file_names=read.values)


ENV_LINE_FIX = (
    "write it as KEY=value or KEY: value (a name of letters, digits, _ . -), quote a value that has `#` after a "
    "space, and close every quote"
)

# Read by compose.yaml (and its images) rather than by kodify-proxy; tests/test_checks.py keeps it complete.
COMPOSE_VARIABLES = frozenset(
    {
        "MODEL", "SERVED_MODEL_NAME", "MODELS_DIR", "SHM_SIZE", "VLLM_TOOL_CALL_PARSER", "VLLM_IMAGE", "KODIFY_IMAGE",
        "POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB", "REDIS_IMAGE", "PROMETHEUS_IMAGE", "GRAFANA_IMAGE",
        "GRAFANA_ADMIN_PASSWORD", "LITELLM_MASTER_KEY", "DATABASE_URL", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME",
        "KODIFY_TLS_DIR", "CADDY_IMAGE", "POSTGRES_IMAGE", "VLLM_CPU_IMAGE", "VLLM_CPU_KVCACHE_SPACE",
    }
)  # fmt: skip
# Read by deploy/compose.next-edit.yaml: the next-edit model's vLLM (docs/deployment.md, "Next edit").
NEXT_EDIT_VARIABLES = frozenset(
    {
        "NEXT_EDIT_MODEL",
        "NEXT_EDIT_SERVED_MODEL_NAME",
        "NEXT_EDIT_GPUUTIL",
        "NEXT_EDIT_DEVICES",
        "NEXT_EDIT_ADDITIONAL_ARGS",
        "NEXT_EDIT_CPU_KVCACHE_SPACE",
    }
)


def known_variables() -> frozenset[str]:
    """Every variable kodify-proxy or compose.yaml (with its overrides in deploy/) reads."""
    compose = COMPOSE_VARIABLES | NEXT_EDIT_VARIABLES
    return compose | {str(field.validation_alias) for field in Settings.model_fields.values()}


def _name_findings(environ: Mapping[str, str], env_file_names: Iterable[str]) -> list[Finding]:
    """A name that is nearly a variable we read (the guide's LOGS_DB_POST) is a problem unless that one is set too;
    other unknown names in the ENV file are notes. Only the ENV file's names are looked at, and the guide's typo."""
    known = known_variables()
    findings = []
    for name in sorted({*env_file_names, *({"LOGS_DB_POST"} & environ.keys())} - known):
        meant = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if meant and meant[0] not in environ:
            findings.append(
                problem(f"{name} is not read by kodify-proxy: did you mean {meant[0]}?", f"rename it {meant[0]}")
            )
        elif meant:
            findings.append(note(f"{name} is not read (did you mean {meant[0]}? it is set too, and that one is read)"))
        else:
            findings.append(note(f"{name} (in the ENV file) is read neither by kodify-proxy nor by compose.yaml"))
    return findings


def check_environment(environ: Mapping[str, str]) -> tuple[Settings, list[Finding]]:
    """Every invalid, missing or contradictory variable; the settings (invalid ones at defaults) for the rest."""
    try:
        settings = load_settings(environ)
    except SettingsError as exc:
        return salvage_settings(environ), [problem(line) for line in exc.problems]
    return settings, [ok("environment: every variable is valid and they agree"), *_environment_notes(settings)]


def salvage_settings(environ: Mapping[str, str]) -> Settings:
    """Settings from the valid variables only, so the checks after the environment still run."""
    defaults = {str(field.validation_alias): field.default for field in Settings.model_fields.values()}
    values: dict[str, object] = {name: value for name, value in environ.items() if name in defaults}
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
    # Defaults are passed explicitly: pydantic-settings would otherwise read the bad value from os.environ again.
    return Settings.model_validate({**values, **{name: defaults[name] for name in bad if name in defaults}})


def _environment_notes(settings: Settings) -> list[Finding]:
    mode = select_mode(settings)
    if mode == "db":
        notes = [ok(f"authorization: a token per user, from {settings.users_table} (MTSAI_AUTH, AUTH_TYPE=DB)")]
    elif mode == "shared":
        notes = [ok("authorization: one shared token (VLLM_API_KEY)")]
    else:
        notes = [note("dummy authorization: every request is accepted (set VLLM_API_KEY for one shared token)")]
    count = resolve_workers(settings.workers)
    how = f"auto: the {count} CPUs this process may use" if settings.workers == "auto" else "KODIFY_WORKERS"
    notes.append(note(f"serve runs {count} worker process{'es' * (count > 1)} ({how}), ~330 MB of memory each"))
    return notes


# compose.yaml's profiles that start PostgreSQL and the migrate service; tests/test_deploy.py holds them equal.
DATABASE_PROFILES = frozenset(
    {"database", "auth-DB"}
    | {f"logs-{case}" for word in TRUE_WORDS for case in (word, word.capitalize(), word.upper())}
)
PROFILES_FIX = (
    "keep .env.example's line COMPOSE_PROFILES=auth-${AUTH_TYPE:-NO},logs-${LOGS:-False} below the AUTH_TYPE and "
    "LOGS lines (Compose expands it with the lines above it), or add ,database to it"
)


def _profiles(environ: Mapping[str, str]) -> set[str]:
    """The profiles COMPOSE_PROFILES names (comma-separated, as Compose reads it)."""
    return {profile.strip() for profile in environ.get("COMPOSE_PROFILES", "").split(",")} - {""}


def check_compose_database(settings: Settings, environ: Mapping[str, str]) -> list[Finding]:
    """Under compose (COMPOSE_PROFILES in the ENV): PostgreSQL starts when AUTH_TYPE=DB or LOGS need it, and then
    has a password."""
    profiles = environ.get("COMPOSE_PROFILES")
    if profiles is None:
        return []
    needs = [name for name, on in (("AUTH_TYPE=DB", settings.auth_type == "DB"), ("LOGS", settings.logs)) if on]
    starts = bool(DATABASE_PROFILES & _profiles(environ))
    if needs and not starts:
        need = " and ".join(needs)
        return [
            problem(f"COMPOSE_PROFILES={profiles} leaves out compose's PostgreSQL, which {need} needs", PROFILES_FIX)
        ]
    if starts and not environ.get("POSTGRES_PASSWORD"):
        return [
            problem(
                f"compose starts PostgreSQL (COMPOSE_PROFILES={profiles}) but POSTGRES_PASSWORD is empty",
                "set POSTGRES_PASSWORD in .env (long and random: `openssl rand -hex 24`)",
            )
        ]
    if starts:
        return [ok(f"compose starts PostgreSQL and the migrate service (COMPOSE_PROFILES={profiles})")]
    return [note(f"compose starts no database (COMPOSE_PROFILES={profiles}): none is needed")]


def check_metrics(settings: Settings, environ: Mapping[str, str]) -> list[Finding]:
    """Whenever a client token is needed, GET /metrics needs Prometheus' own token (or the master key)."""
    guarded = metrics_guarded(settings)
    if not guarded or settings.metrics_token is not None:
        return [ok("GET /metrics: Prometheus sends KODIFY_METRICS_TOKEN")] if guarded else []
    scraping = "compose's Prometheus (profile monitoring) can't scrape it" if "monitoring" in _profiles(environ) else ""
    fix = "set KODIFY_METRICS_TOKEN (`openssl rand -hex 32`) and give Prometheus the same value (docs/deployment.md)"
    if scraping:
        return [problem(f"GET /metrics needs KODIFY_METRICS_TOKEN or the master key, so {scraping}", fix)]
    return [note(f"GET /metrics needs the LiteLLM master key: for Prometheus, {fix}")]


# --- config.yml and upstreams ----------------------------------------------------------------------------------


def check_config(config_arg: str | None, settings: Settings) -> tuple[KodifyConfig | None, list[Finding]]:
    """config.yml parses, and names at least one upstream."""
    path = resolve_config_path(config_arg, settings.config_path)
    try:
        config = load_config(path)
    except ConfigError as exc:
        return None, [problem(str(exc))]
    return config, [ok(f"config.yml {path}: {len(config.upstreams)} upstream(s)")]


async def check_upstreams(settings: Settings, config: KodifyConfig) -> list[Finding]:
    """Each upstream answers GET /v1/models with models, and tabby.model_name is one of them."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(settings.connect_timeout)) as client:
        states = await check_all(client, config.upstreams)
    return [_upstream_finding(state) for state in states] + _tabby_findings(config, states)


def _upstream_finding(state: UpstreamState) -> Finding:
    url = state.upstream.url
    if not state.healthy:
        return problem(
            f"upstream {url} does not answer GET {state.upstream.api_base}/models: {state.error}", _upstream_fix(state)
        )
    if not state.models:
        return problem(f"upstream {url} serves no models", "check the --model the vLLM server was started with")
    return ok(f"upstream {url} serves {', '.join(state.models)}")


def _upstream_fix(state: UpstreamState) -> str:
    if state.error and any(code in state.error for code in ("401", "403")):
        return f"the server wants an API key: set `api_key:` under {state.upstream.url} in config.yml"
    return (
        f"start the vLLM server at {state.upstream.url} (compose: `docker compose logs vllm`) or correct its URL "
        "in config.yml; this check runs where kodify-proxy runs, so kodify-proxy can't reach it either"
    )


def _tabby_findings(config: KodifyConfig, states: list[UpstreamState]) -> list[Finding]:
    served = {model for state in states if state.healthy for model in state.models}
    name = config.tabby_model_name
    if name is None or not served or name in served:
        return []
    listed = ", ".join(sorted(served))
    return [
        problem(
            f"tabby.model_name {name!r} in config.yml is not served by any upstream (served: {listed})",
            "set tabby.model_name to one of the served models, or remove it to use the first upstream's first model",
        )
    ]


# --- databases -----------------------------------------------------------------------------------------------


def check_users_database(settings: Settings) -> list[Finding]:
    """With per-user tokens (MTSAI_AUTH=true, AUTH_TYPE=DB, even if only one is set) the database at DB_URL answers."""
    if not (settings.mtsai_auth or settings.auth_type == "DB") or settings.db_url is None:
        return []
    try:
        url = parse_url(settings.db_url.get_secret_value(), "DB_URL")
    except DatabaseUrlError:
        return []  # reported with the environment
    where = f"user database {render_url(url)} (DB_URL)"
    sqlite = sqlite_file(url)
    if sqlite is not None and not sqlite.exists():
        return [note(f"{where}: the file does not exist yet; kodify-proxy creates it on first start")]
    error = connect_error(url, settings.auth_db_timeout)
    if error is None:
        return [ok(f"{where} answers")]
    if "does not exist" in error:
        return [note(f"{where}: {error}; kodify-proxy creates it on first start")]
    return [
        problem(
            f"{where} is unreachable: {error}",
            "start PostgreSQL, or correct the host, port, user, password and database name in DB_URL",
        )
    ]


def journal_url(settings: Settings) -> URL | None:
    """The journal's database as the server finds it (kodify_proxy.journal.database); None when unusable."""
    from kodify_proxy.journal.database import journal_url as server_journal_url

    try:
        return server_journal_url(settings)
    except ValueError:
        return None  # reported with the environment


def check_journal(settings: Settings) -> list[Finding]:
    """With LOGS=True the journal database answers and its migrations are at head."""
    if not settings.logs or (settings.journal_url is None and settings.logs_db_host is None):
        return []  # off, or not configured (reported with the environment)
    url = journal_url(settings)
    if url is None:
        return []  # the missing variables are reported with the environment
    where = f"journal database {render_url(url)}"
    sqlite = sqlite_file(url)
    if sqlite is not None and not sqlite.exists():
        return [_not_migrated(settings, f"{where}: the file does not exist, so its migrations were never applied")]
    error = connect_error(url, settings.journal_db_timeout)
    if error is not None:
        return [
            problem(
                f"{where} (LOGS=True) is unreachable: {error}",
                "start PostgreSQL, or correct LOGS_DB_HOST, LOGS_DB_PORT, LOGS_DB_NAME, LOGS_DB_USERNAME "
                "and LOGS_DB_PASSWORD (or KODIFY_JOURNAL_URL), or set LOGS=False",
            )
        ]
    return [ok(f"{where} answers"), check_migrations(settings, url, where)]


def _not_migrated(settings: Settings, message: str) -> Finding:
    if settings.run_migrations:
        return note(f"{message}; RUN_MIGRATIONS=1 applies them when kodify-proxy starts")
    return problem(message, MIGRATE_FIX)


def check_migrations(settings: Settings, url: URL, where: str) -> Finding:
    """The journal's version table exists and holds the head revision that `kodify-proxy migrate` applies."""
    from sqlalchemy.exc import SQLAlchemyError

    from kodify_proxy.database import reason
    from kodify_proxy.journal.migrate import applied_revisions, find_alembic_ini, head_revisions
    from kodify_proxy.journal.models import VERSION_TABLE

    try:
        applied = applied_revisions(url, settings.journal_db_timeout)
    except SQLAlchemyError as exc:
        return problem(f"{where}: cannot read {VERSION_TABLE}: {reason(exc)}", MIGRATE_FIX)
    if applied is None:
        return _not_migrated(
            settings, f"{where} has no {VERSION_TABLE} table: the journal's migrations were never applied"
        )
    shown = ", ".join(applied) or "none"
    try:
        ini, heads = find_alembic_ini(), head_revisions()
    except Exception as exc:  # the migrations can't be read: only the comparison is skipped
        return note(f"{where}: migrations at revision {shown}; not compared with head ({exc})")
    if set(applied) == set(heads):
        return ok(f"{where}: migrations at head ({shown}, {ini})")
    return _not_migrated(settings, f"{where}: migrations at revision {shown}, but the head is {', '.join(heads)}")


# --- preprocessing -------------------------------------------------------------------------------------------


def check_preprocessing(settings: Settings) -> list[Finding]:
    """COMPLETIONS_PREPROCESSING_CONFIG names a readable file that the preprocessing loader accepts."""
    raw = settings.completions_preprocessing_config
    if raw is None:
        return []
    from kodify_proxy.preprocess import load_config as load_preprocessing

    try:
        load_preprocessing(raw)
    except ConfigError as exc:
        return [problem(str(exc))]
    return [ok(f"preprocessing config {raw} is valid")]


# --- TLS -------------------------------------------------------------------------------------------------------


EXPIRY_WARNING_DAYS = 30  # a month to renew a certificate before clients refuse it


def check_tls(settings: Settings) -> list[Finding]:
    """Whether `serve` speaks HTTPS (KODIFY_TLS_*); a bad file is already a problem of the environment."""
    cert, ca = settings.tls_cert_file, settings.tls_ca_file
    if cert is None:
        return [
            note(
                "no TLS: serve speaks plain HTTP; off localhost tokens and prompts need HTTPS: set "
                'KODIFY_TLS_CERT_FILE and KODIFY_TLS_KEY_FILE, or terminate TLS in front (docs/deployment.md, "TLS")'
            )
        ]
    if tls.problems(cert, settings.tls_key_file, ca):
        return []
    clients = f"; clients must present a certificate signed by {ca}" if ca else ""
    expires = tls.expires(cert)
    until, left = expires.strftime("%Y-%m-%d %H:%M UTC"), (expires - datetime.now(UTC)).total_seconds() / 86400
    renew = f"renew it and restart serve (KODIFY_TLS_CERT_FILE={cert})"
    if left < 0:
        return [problem(f"TLS: the certificate in {cert} expired on {until}: every client will refuse it", renew)]
    found = ok(f"TLS: serve speaks HTTPS with {cert} (valid until {until}){clients}")
    if left < EXPIRY_WARNING_DAYS:
        days = f"{left:.0f} day{'s' * (round(left) != 1)}"
        return [found, note(f"TLS: the certificate expires in {days} ({until}); {renew}")]
    return [found]
