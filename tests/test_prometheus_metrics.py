"""GET /metrics: the families counted from the one record per request, checked in process and by a real Prometheus
server (Debian's `prometheus`, started on a loopback port) scraping a real kodify-proxy."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kodify_proxy.acceptance import Client, continue_suggestion, tabby_suggestion
from kodify_proxy.exchange import Exchange
from kodify_proxy.prometheus_metrics import Metrics
from kodify_proxy.settings import SettingsError, load_settings
from tests.clients import abandon_sync
from tests.servers import REPO, Server, free_port, kodify_proxy, upstreams_yaml

FAMILIES = {
    "kodify_requests",
    "kodify_request_duration_seconds",
    "kodify_time_to_first_token_seconds",
    "kodify_tokens",
    "kodify_cancelled_requests",
    "kodify_upstream_up",
    "kodify_upstream_in_flight",
    "kodify_completion_events",
    "kodify_suggestions",
    "kodify_journal_queue_rows",
    "kodify_journal_spool_bytes",
    "kodify_journal_rows_written",
    "kodify_journal_unrecorded_in_flight",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def exchange(**values: Any) -> Exchange:
    base: dict[str, Any] = {"request_id": "r", "method": "POST", "route": "/v1/completions", "path": "/v1/completions"}
    base.update(started_at=None, t0=1.0, ended_at=1.04, status=200, completed=True)
    base.update(values)
    return Exchange(**base)


def test_one_record_counts_in_each_family() -> None:
    metrics = Metrics(lambda: {"m"})
    metrics.observe(exchange(model="m", stream=True, first_byte_at=1.005, prompt_tokens=5, completion_tokens=3))
    metrics.observe(exchange(model="typo-model", status=404))
    metrics.observe(exchange(model="m", disconnected=True, completed=False))
    event = {"type": "select", "completion_id": "c"}
    metrics.observe(exchange(route="/v1/events", model="m", language="python", event=event))
    found = samples(metrics.render().decode())
    route = ("route", "/v1/completions")
    assert found[("kodify_requests_total", (("model", "m"), route, ("status", "200")))] == 1
    assert found[("kodify_requests_total", (("model", "unknown"), route, ("status", "404")))] == 1  # no label per typo
    assert found[("kodify_requests_total", (("model", "m"), route, ("status", "499")))] == 1
    assert found[("kodify_cancelled_requests_total", (route,))] == 1
    assert found[("kodify_tokens_total", (("kind", "prompt"), ("model", "m")))] == 5
    assert found[("kodify_tokens_total", (("kind", "completion"), ("model", "m")))] == 3
    assert found[("kodify_time_to_first_token_seconds_count", (("model", "m"), route))] == 1
    assert found[("kodify_time_to_first_token_seconds_bucket", (("le", "0.01"), ("model", "m"), route))] == 1
    assert found[("kodify_request_duration_seconds_bucket", (("le", "0.05"), ("model", "m"), route))] == 2
    labels = (("event", "select"), ("language", "python"), ("model", "m"))
    assert found[("kodify_completion_events_total", labels)] == 1


def test_suggestions_count_every_plugin_the_same_way() -> None:
    metrics = Metrics(lambda: {"m"})
    tabby, cont = Client("Tabby", "1.9.0-dev"), Client("Continue", "1.0.5")
    for kind in ("view", "select", "dismiss"):
        metrics.observe(exchange(route="/v1/events", client=tabby, suggestion=tabby_suggestion(kind)))
    for name, data in [
        ("autocomplete", {"accepted": True}),
        ("autocomplete", {"accepted": False}),
        ("nextEditOutcome", {"accepted": True, "aborted": False}),
        ("nextEditOutcome", {"aborted": True}),
        ("tokensGenerated", {}),
    ]:
        metrics.observe(exchange(route="/v1/dev-data", client=cont, suggestion=continue_suggestion(name, data)))
    refused = continue_suggestion("autocomplete", {"accepted": True})
    metrics.observe(exchange(route="/v1/dev-data", client=Client("Kodify"), suggestion=refused, status=401))
    found = {
        tuple(value for _, value in labels): count
        for (name, labels), count in samples(metrics.render().decode()).items()
        if name == "kodify_suggestions_total"
    }
    assert found == {  # labels sorted by name: client, kind, outcome
        ("tabby", "autocomplete", "shown"): 1,
        ("tabby", "autocomplete", "accepted"): 1,
        ("continue", "autocomplete", "shown"): 2,
        ("continue", "autocomplete", "accepted"): 1,
        ("continue", "next_edit", "shown"): 1,
        ("continue", "next_edit", "accepted"): 1,
        ("continue", "next_edit", "aborted"): 1,
    }


def test_buckets_suit_autocompletion_and_chat() -> None:
    found = samples(Metrics(lambda: set()).render().decode())
    assert {key: value for key, value in found.items() if not key[0].endswith("_created")} == {
        ("kodify_journal_queue_rows", ()): 0.0,  # the journal's own families, without labels, are always there
        ("kodify_journal_spool_bytes", ()): 0.0,
        ("kodify_journal_rows_written_total", ()): 0.0,
        ("kodify_journal_unrecorded_in_flight_total", ()): 0.0,
        ("kodify_rate_limiter_errors_total", ()): 0.0,
    }  # nothing observed: no request samples
    metrics = Metrics(lambda: {"m"})
    metrics.observe(exchange(model="m"))
    bounds = sorted(
        float(dict(labels)["le"])
        for (name, labels) in samples(metrics.render().decode())
        if name == "kodify_request_duration_seconds_bucket"
    )
    assert bounds[0] == 0.005 and bounds[-2] == 30.0 and bounds[-1] == float("inf")


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, upstream: Server) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("metrics")
    server = kodify_proxy(tmp, upstreams_yaml(upstream.url), name="metrics").start()
    yield server
    server.stop()


def prometheus(tmp: Path, target: str, job: dict[str, Any] | None = None) -> subprocess.Popen[bytes]:
    """A real Prometheus scraping `target` every second, with `job`'s settings (else a plain job `kodify`)."""
    port = free_port()
    config = tmp / "prometheus.yml"
    scrape = {**(job or {"job_name": "kodify"}), "static_configs": [{"targets": [target]}]}
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape]}))
    with (tmp / "prometheus.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={tmp / 'data'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    process.port = port  # type: ignore[attr-defined]
    return process


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def query(port: int, expression: str) -> float | None:
    response = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expression}, timeout=5)
    if response.status_code == 503:  # still starting
        return None
    answer = response.json()
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def send_every_kind(client: httpx.Client, scraped: Server) -> None:
    """7 completions, 3 chat streams, a 404, a Tabby completion with its view and select, one abandoned request."""
    for i in range(7):
        assert client.post("/v1/completions", json={"model": "fake-model", "prompt": f"x{i}"}).status_code == 200
    for _ in range(3):
        chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
    assert client.post("/v1/completions", json={"model": "nope", "prompt": "x"}).status_code == 404
    tabby = {"language": "python", "segments": {"prefix": "x = ", "suffix": "\n"}}
    completion = client.post("/v1/completions", json=tabby).json()
    for kind in ("view", "select"):
        event = {"type": kind, "completion_id": completion["id"], "choice_index": 0}
        assert client.post("/v1/events", json=event).status_code == 200
    data = {"accepted": True, "modelName": "fake-model", "userAgent": "VSCode/1.96.2 (Continue/1.0.5)"}
    continued = {"name": "autocomplete", "data": data, "schema": "0.2.0", "level": "noCode"}
    assert client.post("/v1/dev-data", json=continued).status_code == 200
    abandon_sync(scraped.url + "/v1/completions", {"model": "fake-model", "prompt": "DRIP:3"}, after=0.3)
    time.sleep(0.5)


def test_a_real_prometheus_counts_what_was_sent(scraped: Server, tmp_path: Path) -> None:
    with httpx.Client(base_url=scraped.url, timeout=30) as client:
        send_every_kind(client, scraped)
    server = prometheus(tmp_path, f"127.0.0.1:{scraped.port}")
    port = server.port  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + 60
        while not ready(port) or query(port, 'kodify_requests_total{route="/v1/completions"}') is None:
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        completions = 'route="/v1/completions",model="fake-model"'
        assert query(port, f'sum(kodify_requests_total{{{completions},status="200"}})') == 8  # 7 + the Tabby one
        assert query(port, f'kodify_requests_total{{{completions},status="499"}}') == 1
        assert query(port, 'kodify_requests_total{route="/v1/completions",model="unknown",status="404"}') == 1
        assert query(port, 'kodify_requests_total{route="/v1/chat/completions",status="200"}') == 3
        assert query(port, 'kodify_cancelled_requests_total{route="/v1/completions"}') == 1
        assert query(port, 'kodify_time_to_first_token_seconds_count{route="/v1/chat/completions"}') == 3
        tokens = 'sum(kodify_tokens_total{model="fake-model",kind="completion"})'
        assert query(port, tokens) == 3 * 11  # the fake's 3 tokens, for 8 completions and 3 chats
        events = 'kodify_completion_events_total{model="fake-model",language="python"'
        assert query(port, events + ',event="view"}') == 1 and query(port, events + ',event="select"}') == 1
        suggestions = 'kodify_suggestions_total{kind="autocomplete",'
        assert query(port, suggestions + 'client="tabby",outcome="shown"}') == 1
        assert query(port, suggestions + 'client="continue",outcome="accepted"}') == 1
        assert query(port, "kodify_upstream_up") == 1
        assert query(port, "kodify_journal_queue_rows") == 0
    finally:
        server.terminate()
        server.wait(20)


def test_no_user_or_token_is_a_label(scraped: Server) -> None:
    text = httpx.get(scraped.url + "/metrics").text
    assert {family.name for family in text_string_to_metric_families(text)} >= FAMILIES
    labels = {name for family in text_string_to_metric_families(text) for s in family.samples for name in s.labels}
    assert labels <= {"route", "model", "status", "kind", "upstream", "language", "event", "le", "client", "outcome"}
    assert "anonymous" not in text


METRICS_TOKEN = "prometheus-only-token"


@pytest.mark.parametrize(
    "env",
    [
        {"VLLM_API_KEY": "client-token"},  # one shared token
        {"KODIFY_METRICS_AUTH": "true"},  # dummy auth, metrics closed anyway
    ],
    ids=["one token", "dummy auth with KODIFY_METRICS_AUTH"],
)
def test_metrics_need_their_credential_whenever_auth_is_on(
    tmp_path: Path, upstream: Server, env: dict[str, str]
) -> None:
    server = kodify_proxy(tmp_path, upstreams_yaml(upstream.url), env={**env, "KODIFY_METRICS_TOKEN": METRICS_TOKEN})
    server.start()
    try:
        for headers in ({}, {"Authorization": "Bearer client-token"}, {"Authorization": "Bearer wrong"}):
            refused = httpx.get(server.url + "/metrics", headers=headers)
            assert refused.status_code == 401, headers
            error = refused.json()["error"]
            assert "KODIFY_METRICS_TOKEN" in error["message"] and error["code"] == "invalid_api_key"
            assert "kodify_upstream_up" not in refused.text and upstream.url not in refused.text
        for token in (METRICS_TOKEN, server.master_key()):
            response = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
            assert "kodify_upstream_up" in response.text
        assert json.loads(httpx.get(server.url + "/health").text)["status"] == "ok"  # /health stays open
        # The metrics token is Prometheus' only: it is not a client token.
        chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        as_client = httpx.post(
            server.url + "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert as_client.status_code == (401 if "VLLM_API_KEY" in env else 200)
    finally:
        server.stop()


def test_a_metrics_token_equal_to_the_client_token_is_refused() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({"VLLM_API_KEY": "same", "KODIFY_METRICS_TOKEN": "same"})
    assert refused.value.problems == [
        "KODIFY_METRICS_TOKEN=<hidden> equals VLLM_API_KEY: give Prometheus a token of its own (openssl rand -hex 32)"
    ]


def test_the_shipped_prometheus_job_scrapes_with_the_metrics_token(tmp_path: Path, upstream: Server) -> None:
    env = {"VLLM_API_KEY": "client-token", "KODIFY_METRICS_TOKEN": METRICS_TOKEN}
    server = kodify_proxy(tmp_path, upstreams_yaml(upstream.url), env=env, name="scraped").start()
    shipped = yaml.safe_load((REPO / "deploy/monitoring/prometheus.yml").read_text())["scrape_configs"]
    job = next(job for job in shipped if job["job_name"] == "kodify-proxy")
    token = tmp_path / "kodify-metrics-token"  # compose's secret file, here
    token.write_text(METRICS_TOKEN)
    job["authorization"]["credentials_file"] = str(token)
    scraper = prometheus(tmp_path, f"127.0.0.1:{server.port}", job)
    port = scraper.port  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + 60
        while not ready(port) or query(port, "kodify_upstream_up") is None:
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        assert query(port, 'up{job="kodify-proxy"}') == 1
        token.write_text("not-the-token")  # Prometheus rereads the file at each scrape
        deadline = time.monotonic() + 30
        while query(port, 'up{job="kodify-proxy"}') != 0:
            assert time.monotonic() < deadline, "a wrong token still scraped"
            time.sleep(0.5)
    finally:
        scraper.terminate()
        scraper.wait(20)
        server.stop()
