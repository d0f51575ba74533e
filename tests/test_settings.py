"""Settings: the guide's variable names and defaults, and one named message per invalid value."""

from __future__ import annotations

import pytest

from kodify_proxy.settings import SettingsError, load_settings


def test_defaults_are_the_guides() -> None:
    settings = load_settings({})
    assert settings.mtsai_auth is False
    assert settings.auth_type == "NO"
    assert settings.vllm_api_key is None
    assert settings.max_n == 10
    assert settings.logs is False
    assert settings.wait_vllm is False
    assert settings.wait_vllm_attempts == 5
    assert settings.wait_vllm_timeout == 10.0
    assert settings.run_migrations is False


@pytest.mark.parametrize("raw", ["true", "True", "1", "yes", "YES", "on"])
def test_booleans_accept_the_guides_spellings(raw: str) -> None:
    assert load_settings({"WAIT_VLLM": raw, "RUN_MIGRATIONS": raw, "LOGS": "false"}).wait_vllm is True


@pytest.mark.parametrize("raw", ["false", "False", "0", "no", ""])
def test_false_and_empty_are_off(raw: str) -> None:
    assert load_settings({"WAIT_VLLM": raw}).wait_vllm is False


def test_every_invalid_value_is_reported_at_once_by_name() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"MAX_N": "abc", "WAIT_VLLM_ATTEMPTS": "-1", "AUTH_TYPE": "LDAP"})
    problems = caught.value.problems
    assert len(problems) == 3
    by_name = {p.split("=")[0]: p for p in problems}
    assert by_name["MAX_N"].startswith("MAX_N='abc' is invalid")
    assert "accepted: a whole number >= 1" in by_name["MAX_N"]
    assert "WAIT_VLLM_ATTEMPTS='-1'" in by_name["WAIT_VLLM_ATTEMPTS"]
    assert "accepted: NO or DB" in by_name["AUTH_TYPE"]


def test_a_secret_value_is_never_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"LOGS": "yes", "LOGS_DB_HOST": "db", "LOGS_DB_PORT": "x", "LOGS_DB_PASSWORD": "hunter2"})
    assert "hunter2" not in str(caught.value)


def test_logs_db_variables_are_required_only_when_logs_is_on() -> None:
    assert load_settings({"LOGS": "False"}).logs is False
    with pytest.raises(SettingsError) as caught:
        load_settings({"LOGS": "True", "LOGS_DB_HOST": "db"})
    (problem,) = caught.value.problems
    assert "LOGS_DB_NAME" in problem and "LOGS_DB_USERNAME" in problem and "LOGS_DB_PASSWORD" in problem
    assert "LOGS_DB_HOST," not in problem


def test_unrelated_environment_is_ignored() -> None:
    assert load_settings({"PATH": "/bin", "HOME": "/root"}).max_n == 10


def test_a_given_mapping_is_the_only_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_N", "abc")
    monkeypatch.setenv("AUTH_TYPE", "LDAP")
    assert load_settings({}).max_n == 10


def test_empty_auth_type_means_not_set() -> None:
    assert load_settings({"AUTH_TYPE": ""}).auth_type == "NO"


def test_cross_variable_problems_are_reported_with_invalid_values() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"MAX_N": "0", "MTSAI_AUTH": "true", "LOGS": "True"})
    problems = caught.value.problems
    assert problems[0].startswith("MAX_N='0' is invalid")
    assert any(p.startswith("MTSAI_AUTH=true") and "AUTH_TYPE=DB" in p for p in problems)
    assert any(p.startswith("LOGS=True needs LOGS_DB_HOST") for p in problems)
