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

import yaml

from kodify_proxy.prometheus_metrics import Metrics, UpstreamsUp
from tests.servers import REPO
from tests.test_deploy import compose_binary

MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "kodify-proxy.json"


def test_the_prometheus_config_is_valid() -> None:
    done = subprocess.run(
        ["promtool", "check", "config", str(MONITORING / "prometheus.yml")], capture_output=True, text=True
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
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def test_the_dashboard_file_is_what_the_script_makes() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_dashboard
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert DASHBOARD.read_text() == make_dashboard.render(), "run scripts/make_dashboard.py"


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
    assert all(any(part in name for name in wanted) for part in covered)


def test_the_compose_monitoring_profile(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "compose.yaml").write_text((REPO / "compose.yaml").read_text())
    (project / ".env").write_text((REPO / ".env.example").read_text())
    done = subprocess.run(
        [str(compose_binary()), "--profile", "monitoring", "config", "--format", "json"],
        cwd=project,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert {"prometheus", "grafana", "kodify-proxy", "vllm"} <= set(services)
    mounts = {volume["target"]: volume["source"] for volume in services["grafana"]["volumes"] if "source" in volume}
    assert mounts["/var/lib/grafana/dashboards"].endswith("deploy/monitoring/grafana/dashboards")
    plain = subprocess.run(
        [str(compose_binary()), "config", "--services"],
        cwd=project,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "prometheus" not in plain.stdout.split()  # only with the profile


def test_kubernetes_pods_are_scraped() -> None:
    for name in ("proxy.yaml", "vllm.yaml"):
        documents = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / name).read_text()))
        deployment = next(d for d in documents if d and d["kind"] in ("Deployment", "StatefulSet"))
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "8000",
            "prometheus.io/path": "/metrics",
        }
