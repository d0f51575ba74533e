"""The monitoring files in deploy/: Prometheus' config and every dashboard query checked by `promtool` (Debian's
prometheus package), the dashboard generated from scripts/make_dashboard.py and asking only for metrics that exist,
the compose `monitoring` profile and the Kubernetes scrape annotations."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from kodify_proxy.database import parse_url
from kodify_proxy.journal.database import journal_engine
from kodify_proxy.journal.report import Grouping, load_acceptance
from kodify_proxy.prometheus_metrics import Metrics, UpstreamsUp
from tests.journal_support import filled_journal
from tests.servers import REPO
from tests.test_deploy import compose_binary
from tests.test_journal_report import MIXED_ROWS, TABBY_ROWS

MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "kodify-proxy.json"


def test_the_prometheus_config_is_valid() -> None:
    done = subprocess.run(
        # --syntax-only: the token file is compose's secret, present only in the container
        ["promtool", "check", "config", "--syntax-only", str(MONITORING / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {
        job["job_name"]: job for job in yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert jobs["kodify-proxy"]["static_configs"][0]["targets"] == ["kodify-proxy:8000"]
    assert jobs["vllm"]["static_configs"][0]["targets"] == ["vllm:8000"]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def expressions() -> list[str]:
    """Every PromQL query of the dashboard (the journal's panels are SQL)."""
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"] if "expr" in target]


def make_dashboard() -> Any:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_dashboard
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return make_dashboard


def test_the_dashboard_file_is_what_the_script_makes() -> None:
    assert DASHBOARD.read_text() == make_dashboard().render(), "run scripts/make_dashboard.py"


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    recorded = [
        {"record": f"dashboard:query_{index}", "expr": expr.replace("$__rate_interval", "1m")}
        for index, expr in enumerate(expressions())
    ]
    rules = {"groups": [{"name": "dashboard", "rules": recorded}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_asks_only_for_metrics_that_exist() -> None:
    metrics = Metrics(lambda: {"m"})
    metrics.watch(UpstreamsUp(lambda: {"http://u": True}))
    exposed = {m.group(1) for m in re.finditer(r"^# TYPE (\S+)", metrics.render().decode(), re.MULTILINE)}
    exposed |= {name + suffix for name in exposed for suffix in ("_total", "_bucket", "_count", "_sum")}
    wanted = {name for expr in expressions() for name in re.findall(r"\b(kodify_[a-z_]+)", expr)}
    assert wanted and wanted <= exposed
    covered = {"requests", "duration", "time_to_first_token", "tokens", "completion_events", "upstream_up", "journal"}
    covered.add("suggestions")
    assert all(any(part in name for name in wanted) for part in covered)


def monitoring_model(tmp_path: Path, more_env: str = "") -> dict[str, Any]:
    """compose.yaml resolved by the real Compose with `--profile monitoring` and .env.example (plus `more_env`) as .env;
    the project stays in tmp_path/project for more runs."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "compose.yaml").write_text((REPO / "compose.yaml").read_text())
    (project / ".env").write_text((REPO / ".env.example").read_text() + more_env)
    done = subprocess.run(
        [str(compose_binary()), "--profile", "monitoring", "config", "--format", "json"],
        cwd=project,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_the_compose_monitoring_profile(tmp_path: Path) -> None:
    services = monitoring_model(tmp_path)["services"]
    assert {"prometheus", "grafana", "kodify-proxy", "vllm"} <= set(services)
    mounts = {volume["target"]: volume["source"] for volume in services["grafana"]["volumes"] if "source" in volume}
    assert mounts["/var/lib/grafana/dashboards"].endswith("deploy/monitoring/grafana/dashboards")
    plain = subprocess.run(
        [str(compose_binary()), "config", "--services"],
        cwd=tmp_path / "project",
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "prometheus" not in plain.stdout.split()  # only with the profile


def test_kubernetes_pods_are_scraped(tmp_path: Path) -> None:
    def annotations(name: str) -> dict[str, str]:
        documents = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / name).read_text()))
        deployment = next(d for d in documents if d and d["kind"] in ("Deployment", "StatefulSet"))
        return dict(deployment["spec"]["template"]["metadata"].get("annotations") or {})

    # vLLM by the usual annotations; kodify-proxy by a job that sends its token (the annotations' job can't).
    assert annotations("vllm.yaml") == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
    }
    assert "prometheus.io/scrape" not in annotations("proxy.yaml")
    config = yaml.safe_load((MONITORING / "prometheus-kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    # Debian's promtool is built without Kubernetes discovery: the rest of the job is checked with a static target.
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["kodify"]}}]
    checked = tmp_path / "prometheus-kubernetes.yml"
    static = {key: value for key, value in job.items() if key != "kubernetes_sd_configs"}
    checked.write_text(
        yaml.safe_dump({**config, "scrape_configs": [{**static, "static_configs": [{"targets": ["x:1"]}]}]})
    )
    done = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(checked)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/prometheus/secrets/kodify-metrics/token",
    }
    keep = {rule["regex"] for rule in job["relabel_configs"] if rule.get("action") == "keep"}
    assert keep == {"kodify-proxy", "http"}  # the pods' app.kubernetes.io/name and port name in proxy.yaml


def test_the_compose_prometheus_gets_the_metrics_token_as_a_secret(tmp_path: Path) -> None:
    model = monitoring_model(tmp_path, "KODIFY_METRICS_TOKEN=scrape-me\n")
    (secret,) = model["services"]["prometheus"]["secrets"]
    assert (secret["source"], secret["target"]) == ("kodify_metrics_token", "kodify-metrics-token")
    assert model["secrets"]["kodify_metrics_token"]["environment"] == "KODIFY_METRICS_TOKEN"
    jobs = yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]
    kodify = next(job for job in jobs if job["job_name"] == "kodify-proxy")
    assert kodify["authorization"]["credentials_file"] == "/run/secrets/" + secret["target"]


def test_the_journal_panels_count_acceptance_as_usage_does(database_url: str, tmp_path: Path) -> None:
    panels = [panel for panel in dashboard()["panels"] if panel["datasource"]["uid"] == "journal"]
    assert [panel["title"] for panel in panels] == ["Acceptance per user (journal)", "Acceptance per model (journal)"]
    (source,) = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/journal.yml").read_text())["datasources"]
    assert (source["uid"], source["type"]) == (panels[0]["datasource"]["uid"], panels[0]["datasource"]["type"])
    rows = [*TABBY_ROWS, *MIXED_ROWS]  # both plugins, Tabby's events with and without their completion journaled
    with filled_journal("postgresql", rows, database_url, tmp_path) as url:
        engine = journal_engine(parse_url(url))
        try:
            groupings: tuple[Grouping, ...] = ("user", "model")
            for panel, by in zip(panels, groupings, strict=True):
                # Grafana's macro, for a range holding every row
                sql = panel["targets"][0]["rawSql"].replace(
                    "$__timeFilter(e.started_at)", "e.started_at > '2000-01-01'"
                )
                with engine.connect() as connection:
                    got = {row[0]: (row[1], row[2], row[4], row[5]) for row in connection.execute(sa.text(sql))}
                want = {
                    key: (c.shown, c.accepted, c.next_edits_shown, c.next_edits_accepted)
                    for key, c in load_acceptance(engine, by).items()
                }
                assert got == want and len(want) >= 2, by
        finally:
            engine.dispose()


def test_the_compose_grafana_reads_the_journal(tmp_path: Path) -> None:
    grafana = monitoring_model(tmp_path, "LOGS=True\nLOGS_DB_PASSWORD=journal-secret\n")["services"]["grafana"]
    assert {name: grafana["environment"][name] for name in ("LOGS_DB_HOST", "LOGS_DB_NAME", "LOGS_DB_PASSWORD")} == {
        "LOGS_DB_HOST": "postgres",
        "LOGS_DB_NAME": "kodify",
        "LOGS_DB_PASSWORD": "journal-secret",
    }
