"""The generated LiteLLM config: model_list from upstreams and discovery, finite timeouts, no secrets."""

from __future__ import annotations

from pathlib import Path

import yaml

from kodify_proxy.litellm_config import build_litellm_config, build_model_list, load_template, render_config
from kodify_proxy.settings import load_settings
from kodify_proxy.upstreams import parse_config

CONFIG = parse_config(
    "upstreams:\n  http://a:8000:\n    api_key: upstream-secret\n  http://b:8000:\n  http://c:8000:\n"
    "    models: [pinned]\n",
    Path("c.yml"),
)
SETTINGS = load_settings({"KODIFY_REQUEST_TIMEOUT": "30", "KODIFY_NUM_RETRIES": "2"})


def test_same_model_on_two_upstreams_is_one_group_with_retries() -> None:
    entries = build_model_list(
        CONFIG.upstreams, {"http://a:8000": ["coder"], "http://b:8000": ["coder", "chat"]}, SETTINGS
    )
    coder = [e for e in entries if e["model_name"] == "coder"]
    assert [e["litellm_params"]["api_base"] for e in coder] == ["http://a:8000/v1", "http://b:8000/v1"]
    assert all(e["litellm_params"]["num_retries"] == 2 for e in coder)
    (chat,) = [e for e in entries if e["model_name"] == "chat"]
    assert chat["litellm_params"]["num_retries"] == 0  # one upstream: fail fast, no back-off
    assert chat["litellm_params"]["model"] == "hosted_vllm/chat"
    assert chat["litellm_params"]["timeout"] == 30
    assert chat["model_info"]["id"] == "http://b:8000#chat"


def test_configured_models_need_no_discovery() -> None:
    entries = build_model_list(CONFIG.upstreams, {}, SETTINGS)
    assert [e["model_name"] for e in entries] == ["pinned"]


def test_upstream_key_goes_through_the_environment_not_the_file() -> None:
    entries = build_model_list(CONFIG.upstreams, {"http://a:8000": ["coder"]}, SETTINGS)
    assert entries[0]["litellm_params"]["api_key"] == "os.environ/KODIFY_UPSTREAM_0_API_KEY"
    rendered = render_config(build_litellm_config(load_template(), entries, SETTINGS))
    assert "upstream-secret" not in rendered


def test_template_wires_our_auth_callbacks_and_finite_timeouts() -> None:
    config = build_litellm_config(load_template(), [], SETTINGS)
    assert config["general_settings"]["custom_auth"] == "kodify_proxy.hooks.user_api_key_auth"
    assert config["general_settings"]["custom_auth_settings"] == {"mode": "auto"}
    assert config["general_settings"]["custom_auth_run_common_checks"] is True
    assert "kodify_proxy.hooks.proxy_handler" in config["litellm_settings"]["callbacks"]
    assert config["litellm_settings"]["request_timeout"] == 30
    assert config["router_settings"]["num_retries"] == 2


def test_render_masks_literal_secrets_and_keeps_env_references() -> None:
    config = {"general_settings": {"master_key": "sk-literal"}, "x": {"api_key": "os.environ/K"}}
    rendered = yaml.safe_load(render_config(config))
    assert rendered["general_settings"]["master_key"] == "***"
    assert rendered["x"]["api_key"] == "os.environ/K"
