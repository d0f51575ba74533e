"""Write deploy/monitoring/grafana/dashboards/kodify-proxy.json, the Grafana dashboard of kodify-proxy's metrics.

Usage: .venv/bin/python scripts/make_dashboard.py   (tests/test_monitoring.py checks the file is up to date)

Panels are described once here (title, PromQL, unit) and laid out two per row; the JSON is Grafana's dashboard
schema (schemaVersion 39), with the datasources of deploy/monitoring/grafana/provisioning: Prometheus, and the
journal's PostgreSQL for acceptance per user and per model (Prometheus labels name no user: SQL over the journal,
counted as `kodify-proxy usage` counts; tests/test_monitoring.py holds the two equal).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "deploy/monitoring/grafana/dashboards/kodify-proxy.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
JOURNAL = {"type": "postgres", "uid": "journal"}
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
        "Suggestion acceptance by client and kind (accepted / shown, 1 h)",
        "percentunit",
        [
            (
                "{{client}} {{kind}}",
                'sum by (client, kind) (increase(kodify_suggestions_total{outcome="accepted"}[1h])) / '
                'sum by (client, kind) (increase(kodify_suggestions_total{outcome="shown"}[1h]))',
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


def _counted(kind: str, outcome: str) -> str:
    return f"sum(CASE WHEN e.suggestion = '{kind}' AND e.{outcome} THEN 1 ELSE 0 END)"


def acceptance_sql(key: str) -> str:
    """Suggestions shown and accepted per `key` (an SQL expression over the event row `e` and its Tabby completion
    `c`), as `kodify-proxy usage --by` counts them (journal/report.py, load_acceptance), in the dashboard's time range.
    """
    shown, accepted = _counted("autocomplete", "shown"), _counted("autocomplete", "accepted")
    edits_shown, edits_accepted = _counted("next_edit", "shown"), _counted("next_edit", "accepted")
    return (
        f"SELECT {key} AS key, {shown} AS shown, {accepted} AS accepted, "
        f"round(100.0 * {accepted} / nullif({shown}, 0), 1) AS acceptance_percent, "
        f"{edits_shown} AS next_edits_shown, {edits_accepted} AS next_edits_accepted, "
        f"round(100.0 * {edits_accepted} / nullif({edits_shown}, 0), 1) AS next_edit_acceptance_percent "
        "FROM kodify_journal e LEFT JOIN kodify_journal c "
        "ON c.completion_id = e.completion_id AND c.event_type IS NULL "
        "WHERE e.suggestion IS NOT NULL AND $__timeFilter(e.started_at) "
        "GROUP BY 1 ORDER BY 2 DESC, 1"
    )


# The journal's panels: (title, the key per row). A Tabby event's model is its completion's.
SQL_PANELS: list[tuple[str, str]] = [
    ("Acceptance per user (journal)", "coalesce(e.user_id, '-')"),
    ("Acceptance per model (journal)", "coalesce(e.model, c.model, '-')"),
]


def sql_panel(index: int, title: str, key: str) -> dict[str, Any]:
    """One table panel of the journal's SQL."""
    return {
        "id": index + 1,
        "type": "table",
        "title": title,
        "datasource": JOURNAL,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
        "targets": [
            {
                "refId": "A",
                "datasource": JOURNAL,
                "format": "table",
                "rawQuery": True,
                "editorMode": "code",
                "rawSql": acceptance_sql(key),
            }
        ],
    }


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
        "panels": [panel(i, title, unit, targets) for i, (title, unit, targets) in enumerate(PANELS)]
        + [sql_panel(len(PANELS) + i, title, key) for i, (title, key) in enumerate(SQL_PANELS)],
    }


def render() -> str:
    """The dashboard as the JSON file holds it."""
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(OUT)
