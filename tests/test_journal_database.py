"""Journal settings: LOGS_DB_* only when LOGS is on, KODIFY_JOURNAL_URL, the SQLite default, the spool directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from kodify_proxy.database import DatabaseUrlError, parse_url, render_url
from kodify_proxy.instance import instance_name, locate
from kodify_proxy.journal.database import journal_url, legacy_spool_dir, spool_dir
from kodify_proxy.settings import SettingsError, load_settings

LOGS_DB = {
    "LOGS_DB_HOST": "db.internal",
    "LOGS_DB_PORT": "6432",
    "LOGS_DB_NAME": "journal",
    "LOGS_DB_USERNAME": "kodify",
    "LOGS_DB_PASSWORD": "p@ss:w/rd",
}


def test_logs_on_names_every_missing_variable() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({"LOGS": "True", "LOGS_DB_HOST": "db"})
    assert error.value.problems == [
        "LOGS=True needs LOGS_DB_NAME, LOGS_DB_USERNAME, LOGS_DB_PASSWORD; set them, or set KODIFY_JOURNAL_URL "
        "(e.g. sqlite:////var/lib/kodify/journal.db for a one-machine journal), or set LOGS=False"
    ]


@pytest.mark.parametrize(
    "environ",
    [
        {},  # LOGS off: the LOGS_DB_* variables are not needed
        {"LOGS": "False"},
        {"LOGS": "True", "KODIFY_JOURNAL_URL": "sqlite:////tmp/journal.db"},
        {"LOGS": "True", **LOGS_DB},
    ],
)
def test_settings_that_are_enough(environ: dict[str, str]) -> None:
    settings = load_settings(environ)
    assert settings.logs is (environ.get("LOGS") == "True")
    if settings.logs:  # the journal's database is the one the variables name
        url = journal_url(settings)
        expected = "sqlite" if "KODIFY_JOURNAL_URL" in environ else "postgresql+psycopg"
        assert url.drivername == expected and url.database in ("/tmp/journal.db", LOGS_DB["LOGS_DB_NAME"])


def test_logs_db_variables_make_a_postgresql_url_with_the_password_escaped() -> None:
    url = journal_url(load_settings({"LOGS": "True", **LOGS_DB}))
    assert (
        url.render_as_string(hide_password=False)
        == "postgresql+psycopg://kodify:p%40ss%3Aw%2Frd@db.internal:6432/journal"
    )
    assert render_url(url) == "postgresql+psycopg://kodify:***@db.internal:6432/journal"


def test_kodify_journal_url_wins_over_logs_db_variables() -> None:
    url = journal_url(load_settings({"LOGS": "True", **LOGS_DB, "KODIFY_JOURNAL_URL": "postgresql://u@h/other"}))
    assert str(url) == "postgresql+psycopg://u@h/other"


def test_the_journal_is_an_sqlite_file_in_the_state_dir_by_default_and_the_spool_per_server(
    tmp_path: Path,
) -> None:
    settings = load_settings({"KODIFY_STATE_DIR": str(tmp_path)})
    assert str(journal_url(settings)) == f"sqlite:///{tmp_path}/journal.sqlite3"
    instance = locate(settings, "::1", 8000)
    own = tmp_path / "instances" / instance_name("::1", 8000)
    assert spool_dir(settings, instance=instance) == own / "journal-spool"
    assert spool_dir(settings, 2, instance=instance) == own / "journal-spool/worker-2"
    assert legacy_spool_dir(settings) == tmp_path / "journal-spool"  # where older releases spooled
    explicit = load_settings({"KODIFY_JOURNAL_SPOOL_DIR": "/var/spool/kodify"})
    assert spool_dir(explicit, instance=instance) == Path("/var/spool/kodify") and legacy_spool_dir(explicit) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:p@h:5432/d", "postgresql+psycopg://u:***@h:5432/d"),
        ("postgres://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+asyncpg://u@h/d", "postgresql+psycopg://u@h/d"),  # the same rules as DB_URL
        (
            "postgresql+psycopg://u@h/d?options=-csearch_path%3Dkodify",
            "postgresql+psycopg://u@h/d?options=-csearch_path%3Dkodify",
        ),
        ("sqlite:////var/lib/kodify/journal.db", "sqlite:////var/lib/kodify/journal.db"),
    ],
)
def test_parse_url(text: str, expected: str) -> None:
    assert render_url(parse_url(text)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mysql://u@h/d", "KODIFY_JOURNAL_URL: database 'mysql' is not supported; use postgresql://"),
        ("journal.db", "KODIFY_JOURNAL_URL: not a database URL"),
        ("postgresql://u@h", "KODIFY_JOURNAL_URL: the PostgreSQL URL names no database"),
    ],
)
def test_parse_url_rejects(text: str, message: str) -> None:
    with pytest.raises(DatabaseUrlError, match=message):
        parse_url(text, "KODIFY_JOURNAL_URL")


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("KODIFY_JOURNAL_BATCH_SIZE", "0", "a whole number 1-10000"),
        ("KODIFY_JOURNAL_BODY_MAX_BYTES", "-1", "a whole number >= 0 of bytes kept of each body"),
        ("KODIFY_JOURNAL_FLUSH_INTERVAL", "soon", "seconds 0.01-60 between batch writes"),
        ("KODIFY_JOURNAL_BODIES", "maybe", "a boolean: true keeps request and response bodies, false metadata only"),
    ],
)
def test_bad_journal_settings_are_named(name: str, value: str, accepted: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({name: value})
    assert len(error.value.problems) == 1
    assert error.value.problems[0].startswith(f"{name}={value!r} is invalid (")
    assert error.value.problems[0].endswith(f"; accepted: {accepted}")


def test_defaults() -> None:
    settings = load_settings({})
    assert (
        settings.journal_bodies,
        settings.journal_body_max_bytes,
        settings.journal_batch_size,
        settings.journal_flush_interval,
        settings.journal_retry_interval,
        settings.journal_db_timeout,
    ) == (True, 65536, 200, 0.5, 2.0, 5.0)


def test_every_journal_setting_and_command_is_documented() -> None:
    from kodify_proxy.settings import Settings

    docs = (Path(__file__).resolve().parent.parent / "docs" / "journal.md").read_text(encoding="utf-8")
    names = [
        str(field.validation_alias)
        for name, field in Settings.model_fields.items()
        if name.startswith(("journal_", "logs")) or name == "run_migrations"
    ]
    assert len(names) == 15
    assert [name for name in names if f"| `{name}` |" not in docs] == []
    for command in ("kodify-proxy migrate", "kodify-proxy usage", "alembic -c /path/to/alembic.ini upgrade head"):
        assert command in docs
