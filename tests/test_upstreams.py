"""config.yml in the guide's format: parsing, and errors that name the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from kodify_proxy.upstreams import ConfigError, load_config, parse_config, resolve_config_path

GUIDE_EXAMPLE = """\
upstreams:
  http://upstream1:8000:
  http://upstream2:8000:
tabby:
  model_name: tabby_model_name
"""


def test_the_guides_example_parses_unchanged() -> None:
    config = parse_config(GUIDE_EXAMPLE, Path("config.yml"))
    assert [u.url for u in config.upstreams] == ["http://upstream1:8000", "http://upstream2:8000"]
    assert config.upstreams[0].api_base == "http://upstream1:8000/v1"
    assert config.tabby_model_name == "tabby_model_name"


def test_tabby_section_is_optional() -> None:
    config = parse_config("upstreams:\n  https://vllm.example:443/v1/:\n", Path("c.yml"))
    assert config.tabby_model_name is None
    assert config.upstreams[0].url == "https://vllm.example:443/v1"
    assert config.upstreams[0].api_base == "https://vllm.example:443/v1"


def test_upstream_extras() -> None:
    text = "upstreams:\n  http://a:8000:\n    api_key: s3cret\n    models: [coder]\n    timeout: 30\n"
    (upstream,) = parse_config(text, Path("c.yml")).upstreams
    assert upstream.api_key is not None and upstream.api_key.get_secret_value() == "s3cret"
    assert upstream.models == ("coder",)
    assert upstream.timeout == 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("upstreams:\n  http://a:8000:\n  vllm:8000:\n", "c.yml:3: upstream 'vllm:8000' is not an http(s) URL"),
        ("upstreams:\n  ftp://a:21:\n", "c.yml:2: upstream 'ftp://a:21' is not an http(s) URL"),
        ("upstreams:\n  http://a:port:\n", "its port is not a number"),
        ("upstreams:\n", "c.yml: no upstreams"),
        ("upstreams: {}\n", "c.yml: no upstreams"),
        ("tabby:\n  model_name: x\n", "c.yml: no upstreams"),
        ("upstreams:\n  http://a:8000:\n\thttp://b:8000:\n", "c.yml:3: not valid YAML"),
        (
            "upstreams:\n  http://a:8000:\n    apikey: x\n",
            "c.yml:2: upstream 'http://a:8000' has invalid settings: apikey",
        ),
        ("upstreams:\n  http://a:8000:\nupstream: {}\n", "unknown top-level key(s) upstream"),
    ],
)
def test_errors_name_the_file_line_and_problem(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("c.yml"))
    assert expected in str(caught.value)


def test_missing_file_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yml")
    assert "config file not found" in str(caught.value)
    assert "--config" in str(caught.value) and "KODIFY_CONFIG" in str(caught.value)


def test_config_path_precedence() -> None:
    assert resolve_config_path("cli.yml", "env.yml") == Path("cli.yml")
    assert resolve_config_path(None, "env.yml") == Path("env.yml")
    assert resolve_config_path(None, None) == Path("config.yml")
