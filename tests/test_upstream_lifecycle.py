"""Upstreams that stop, come back, time out or serve new models, while the real proxy process runs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import REPO, Server, fake_upstream, free_port, kodify_proxy, upstreams_yaml

CHAT = "/v1/chat/completions"


def _chat(model: str, text: str = "hi") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def _eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def _model_ids(proxy: Server) -> set[str]:
    return {m["id"] for m in httpx.get(proxy.url + "/v1/models").json()["data"]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Two upstreams serving `shared`, one serving `solo`, a proxy with a 1 s request timeout."""
    tmp = tmp_path_factory.mktemp("cluster")
    servers = {
        "a": fake_upstream(tmp, ("shared",)).start(),
        "b": fake_upstream(tmp, ("shared",)).start(),
        "solo": fake_upstream(tmp, ("solo",)).start(),
    }
    config = upstreams_yaml(servers["a"].url, servers["b"].url, servers["solo"].url)
    servers["proxy"] = kodify_proxy(tmp, config, env={"KODIFY_REQUEST_TIMEOUT": "1"}).start()
    yield servers
    for server in servers.values():
        server.stop()


def test_upstream_timeout_is_504_naming_the_upstream(cluster: dict[str, Server]) -> None:
    response = httpx.post(cluster["proxy"].url + CHAT, json=_chat("solo", "SLEEP:3 timeout-probe"), timeout=30)
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["type"] == "timeout_error" and cluster["solo"].url in error["message"]
    # One attempt only: a lone upstream is not retried, so the client hears back after one timeout.
    assert httpx.get(cluster["solo"].url + "/_count", params={"contains": "timeout-probe"}).json() == 1


def test_failover_when_one_of_two_upstreams_stops(cluster: dict[str, Server]) -> None:
    proxy, a = cluster["proxy"], cluster["a"]
    a.stop()
    statuses = [httpx.post(proxy.url + CHAT, json=_chat("shared")).status_code for _ in range(10)]
    assert statuses == [200] * 10
    # The monitor finds the stopped upstream at its next look (KODIFY_DISCOVERY_INTERVAL=1 here), or at once when a
    # request was refused by it: with affinity the lane may not have tried it at all.
    _eventually(lambda: {u["url"]: u["healthy"] for u in proxy.health()["upstreams"]}[a.url] is False)
    assert proxy.health()["status"] == "degraded"
    a.start()
    _eventually(lambda: all(u["healthy"] for u in proxy.health()["upstreams"]))


def test_stopped_only_upstream_fails_fast_then_recovers(cluster: dict[str, Server]) -> None:
    proxy, solo = cluster["proxy"], cluster["solo"]
    solo.stop()
    for _ in range(3):
        response = httpx.post(proxy.url + CHAT, json=_chat("solo"))
        assert response.status_code in (502, 503), response.text
        assert solo.url in response.json()["error"]["message"]
    _eventually(lambda: httpx.post(proxy.url + CHAT, json=_chat("solo")).status_code == 503)
    solo.start()
    _eventually(lambda: httpx.post(proxy.url + CHAT, json=_chat("solo")).status_code == 200)


def test_new_model_appears_without_restart(cluster: dict[str, Server]) -> None:
    proxy, solo = cluster["proxy"], cluster["solo"]
    assert "late-model" not in _model_ids(proxy)
    solo.stop()
    replacement = fake_upstream(solo.log_path.parent, ("solo", "late-model"), port=solo.port).start()
    try:
        _eventually(lambda: "late-model" in _model_ids(proxy))
        assert httpx.post(proxy.url + CHAT, json=_chat("late-model")).status_code == 200
    finally:
        replacement.stop()
        solo.start()


def test_upstream_down_at_start_is_added_when_it_comes_up(tmp_path: Path) -> None:
    port = free_port()
    proxy = kodify_proxy(tmp_path, upstreams_yaml(f"http://127.0.0.1:{port}")).start()
    try:
        response = httpx.get(proxy.url + "/health")
        assert response.status_code == 503
        assert response.json()["reason"] == "no upstream answers GET /v1/models"
        assert "is down at start" in proxy.log_text()
        error = httpx.post(proxy.url + CHAT, json=_chat("fake-model")).json()["error"]
        assert "no upstream has answered yet" in error["message"]
        upstream = fake_upstream(tmp_path, ("fake-model",), port=port).start()
        try:
            _eventually(lambda: httpx.post(proxy.url + CHAT, json=_chat("fake-model")).status_code == 200)
            assert httpx.get(proxy.url + "/health").status_code == 200
        finally:
            upstream.stop()
    finally:
        proxy.stop()


def _serve(tmp: Path, config: str, env: dict[str, str]) -> Server:
    return kodify_proxy(tmp, config, env=env)


def test_wait_vllm_gives_up_after_the_attempts(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = {"WAIT_VLLM": "1", "WAIT_VLLM_ATTEMPTS": "3", "WAIT_VLLM_TIMEOUT": "0.2"}
    proxy = _serve(tmp_path, upstreams_yaml(url), env).start(expect_ready=False)
    assert proxy.wait_exit() == 1
    log = proxy.log_text()
    assert [f"attempt {i}/3 failed" in log for i in (1, 2, 3)] == [True, True, True]
    assert f"Upstream {url} did not answer GET /v1/models after 3 attempts" in log


def test_wait_vllm_waits_for_a_late_upstream(tmp_path: Path) -> None:
    port = free_port()
    env = {"WAIT_VLLM": "true", "WAIT_VLLM_ATTEMPTS": "30", "WAIT_VLLM_TIMEOUT": "0.5"}
    proxy = _serve(tmp_path, upstreams_yaml(f"http://127.0.0.1:{port}"), env).start(expect_ready=False)
    upstream = fake_upstream(tmp_path, ("fake-model",), port=port)
    try:
        _eventually(lambda: "attempt 1/30 failed" in proxy.log_text(), timeout=60)
        upstream.start()
        proxy.wait_ready(90)
        assert "is up (attempt" in proxy.log_text()
        assert httpx.post(proxy.url + CHAT, json=_chat("fake-model")).status_code == 200
    finally:
        proxy.stop()
        upstream.stop()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "kodify_proxy.cli", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=REPO,
        timeout=120,
    )


def test_invalid_environment_stops_serve_naming_each_variable(tmp_path: Path) -> None:
    (tmp_path / "c.yml").write_text(upstreams_yaml("http://127.0.0.1:9"))
    result = _cli(
        "serve",
        "--config",
        str(tmp_path / "c.yml"),
        env={"MAX_N": "abc", "WAIT_VLLM_ATTEMPTS": "-1", "AUTH_TYPE": "LDAP"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert {line.split("=")[0].removeprefix("error: ") for line in lines} == {
        "MAX_N",
        "WAIT_VLLM_ATTEMPTS",
        "AUTH_TYPE",
    }


def test_bad_config_stops_serve_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.yml").write_text("upstreams:\n  vllm:8000:\n")
    result = _cli("serve", "--config", str(tmp_path / "c.yml"))
    assert result.returncode == 2
    assert f"{tmp_path / 'c.yml'}:2: upstream 'vllm:8000' is not an http(s) URL" in result.stderr


def test_render_config_prints_discovered_models_without_secrets(tmp_path: Path, upstream: Server) -> None:
    (tmp_path / "c.yml").write_text(f"upstreams:\n  {upstream.url}:\n    api_key: upstream-secret-value\n")
    result = _cli("render-config", env={"KODIFY_CONFIG": str(tmp_path / "c.yml"), "LITELLM_MASTER_KEY": "sk-mk-1"})
    assert result.returncode == 0, result.stderr
    assert "model_name: fake-model" in result.stdout
    assert f"api_base: {upstream.url}/v1" in result.stdout
    assert "upstream-secret-value" not in result.stdout + result.stderr
    assert "sk-mk-1" not in result.stdout
