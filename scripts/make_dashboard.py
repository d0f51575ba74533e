"""Write deploy/monitoring/grafana/dashboards/kodify-proxy.json, the Grafana dashboard of kodify-proxy's metrics.

Usage: .venv/bin/python scripts/make_dashboard.py   (tests/test_monitoring.py checks the file is up to date)

Panels are described once here (title, PromQL, unit) and laid out two per row; the JSON is Grafana's dashboard
schema (schemaVersion 39), with the Prometheus datasource of deploy/monitoring/grafana/provisioning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "deploy/monitoring/grafana/dashboards/kodify-proxy.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "[$__rate_interval]"


def quantiles(metric: str, by: str) -> list[tuple[str, str]]:
    """p50, p95 and p99 of a histogram, per `by`."""
    return [
        (f"p{q}", f"histogram_quantile(0.{q}, sum by (le, {by}) (rate({metric}_bucket{RATE})))")
        for q in ("50", "95", "99")
    ]


PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Requests per second by route", "reqps", [("{{route}}", f"sum by (route) (rate(kodify_requests_total{RATE}))")]),
    (
        "Errors per second by route and status",
        "reqps",
        [("{{route}} {{status}}", f'sum by (route, status) (rate(kodify_requests_total{{status=~"4..|5.."}}{RATE}))')],
    ),
    ("Latency by route (to the last byte)", "s", quantiles("kodify_request_duration_seconds", "route")),
    ("Latency by model", "s", quantiles("kodify_request_duration_seconds", "model")),
    ("Time to first token by route (streams)", "s", quantiles("kodify_time_to_first_token_seconds", "route")),
    ("Time to first token by model (streams)", "s", quantiles("kodify_time_to_first_token_seconds", "model")),
    (
        "Tokens per second by model",
        "short",
        [("{{model}} {{kind}}", f"sum by (model, kind) (rate(kodify_tokens_total{RATE}))")],
    ),
    (
        "Completion acceptance by language (selected / viewed, 1 h)",
        "percentunit",
        [
            (
                "{{language}}",
                'sum by (language) (increase(kodify_completion_events_total{event="select"}[1h])) / '
                'sum by (language) (increase(kodify_completion_events_total{event="view"}[1h]))',
            )
        ],
    ),
    (
        "Requests whose client left first",
        "reqps",
        [("{{route}}", f"sum by (route) (rate(kodify_cancelled_requests_total{RATE}))")],
    ),
    (
        "Upstreams: up, and lane requests in flight",
        "short",
        [("up {{upstream}}", "kodify_upstream_up"), ("in flight {{upstream}}", "kodify_upstream_in_flight")],
    ),
    (
        "Journal backlog",
        "short",
        [
            ("rows queued", "kodify_journal_queue_rows"),
            ("spool bytes", "kodify_journal_spool_bytes"),
            ("rows written / s", f"rate(kodify_journal_rows_written_total{RATE})"),
        ],
    ),
    (
        "vLLM: requests running and tokens per second",
        "short",
        [
            ("running {{instance}}", "vllm:num_requests_running"),
            ("generated tokens / s {{instance}}", f"rate(vllm:generation_tokens_total{RATE})"),
        ],
    ),
]


def panel(index: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict[str, Any]:
    """One time-series panel."""
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + n), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for n, (legend, expr) in enumerate(targets)
        ],
    }


def dashboard() -> dict[str, Any]:
    """The whole dashboard."""
    return {
        "uid": "kodify-proxy",
        "title": "kodify-proxy",
        "tags": ["kodify"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "panels": [panel(i, title, unit, targets) for i, (title, unit, targets) in enumerate(PANELS)],
    }


def render() -> str:
    """The dashboard as the JSON file holds it."""
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(OUT)
