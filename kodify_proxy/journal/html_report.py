"""The usage report as one self-contained HTML page (`kodify-proxy usage --html`): the journal's numbers loaded
with SQL (`load_report`), drawn by a pure function as plotly charts with plotly.js inlined (`render_report_html`),
so the page opens without a network."""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from string import Template
from typing import Any

from sqlalchemy import Engine, case, func, select

from kodify_proxy.journal.models import journal
from kodify_proxy.journal.report import (
    Acceptance,
    Grouping,
    UsageRow,
    load_acceptance,
    load_usage,
    percentile,
    since_filter,
)

TOP_USERS = 10
NO_KEY = "-"  # load_usage's group of requests without a user (failed auth) or a model


@dataclass(frozen=True)
class DayCount:
    """Requests and errors on one UTC day."""

    day: str
    requests: int
    errors: int


@dataclass(frozen=True)
class RouteLatency:
    """p50/p95 latency of one route, and p50/p95 time to first token of its streams (None: no streamed ttft)."""

    route: str
    p50_ms: float | None
    p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None


@dataclass(frozen=True)
class ModelTokens:
    """Prompt and completion tokens of one model."""

    model: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class GroupAcceptance:
    """Suggestions shown and accepted in one group (a language, a user, a model), from every plugin's events."""

    key: str
    counts: Acceptance

    @property
    def acceptance(self) -> float | None:
        """Accepted per shown autocompletion; None when none was shown."""
        return self.counts.accepted / self.counts.shown if self.counts.shown else None

    @property
    def next_edit_acceptance(self) -> float | None:
        """Accepted per next edit shown; None when none was shown."""
        shown = self.counts.next_edits_shown
        return self.counts.next_edits_accepted / shown if shown else None


@dataclass(frozen=True)
class UserRequests:
    """How many requests one user made, and how many of them failed."""

    user: str
    requests: int
    errors: int


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows, for the requests from `since` on (None: all)."""

    since: datetime | None
    total: UsageRow
    days: tuple[DayCount, ...]
    routes: tuple[RouteLatency, ...]
    models: tuple[ModelTokens, ...]
    languages: tuple[GroupAcceptance, ...]
    users: tuple[UserRequests, ...]  # the TOP_USERS busiest, busiest first
    user_acceptance: tuple[GroupAcceptance, ...] = ()  # the TOP_USERS shown most suggestions, most first
    model_acceptance: tuple[GroupAcceptance, ...] = ()


def _rounded(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


_TTFT = case((journal.c.stream.is_(True), journal.c.ttft_ms))  # time to first token counts for streams only


def _routes_in_database(engine: Engine, since: datetime | None) -> list[RouteLatency]:
    """PostgreSQL: percentile_cont per route (it skips the NULL ttft of requests that did not stream)."""
    columns = [
        func.percentile_cont(fraction).within_group(value)
        for value in (journal.c.latency_ms, _TTFT)
        for fraction in (0.5, 0.95)
    ]
    query = since_filter(select(journal.c.route, *columns), since).group_by(journal.c.route)
    with engine.connect() as connection:
        return [RouteLatency(row[0], *(_rounded(v) for v in row[1:])) for row in connection.execute(query)]


def _routes_in_python(engine: Engine, since: datetime | None) -> list[RouteLatency]:
    """SQLite has no percentile_cont: fetch latencies per route and interpolate as PostgreSQL does."""
    latencies: dict[str, list[float]] = defaultdict(list)
    ttfts: dict[str, list[float]] = defaultdict(list)
    with engine.connect() as connection:
        for route, latency, ttft in connection.execute(
            since_filter(select(journal.c.route, journal.c.latency_ms, _TTFT), since)
        ):
            latencies[route].append(float(latency))
            if ttft is not None:
                ttfts[route].append(float(ttft))
    values = {route: (sorted(latencies[route]), sorted(ttfts[route])) for route in latencies}
    return [
        RouteLatency(route, *(_rounded(percentile(v, f)) for v in (lat, ttft) for f in (0.5, 0.95)))
        for route, (lat, ttft) in values.items()
    ]


def load_route_latency(engine: Engine, since: datetime | None = None) -> tuple[RouteLatency, ...]:
    """p50/p95 latency and streamed time to first token per route, ordered by route."""
    load = _routes_in_database if engine.dialect.name == "postgresql" else _routes_in_python
    return tuple(sorted(load(engine, since), key=lambda r: r.route))


def load_report(engine: Engine, since: datetime | None = None) -> ReportData:
    """The page's data: per day, route, model (requests naming none left out), language and the busiest users."""
    by_user = sorted(load_usage(engine, "user", since), key=lambda r: (-r.requests, r.key))[:TOP_USERS]
    by_model = [r for r in load_usage(engine, "model", since) if r.key != NO_KEY]
    return ReportData(
        since=since,
        total=load_usage(engine, None, since)[0],
        days=tuple(DayCount(r.key, r.requests, r.errors) for r in load_usage(engine, "day", since)),
        routes=load_route_latency(engine, since),
        models=tuple(
            sorted((ModelTokens(r.key, r.prompt_tokens, r.completion_tokens) for r in by_model), key=lambda m: m.model)
        ),
        languages=tuple(sorted(_acceptance(engine, "language", since), key=lambda g: g.key)),
        users=tuple(UserRequests(r.key, r.requests, r.errors) for r in by_user),
        user_acceptance=tuple(_most_shown(_acceptance(engine, "user", since))[:TOP_USERS]),
        model_acceptance=tuple(sorted(_acceptance(engine, "model", since), key=lambda g: g.key)),
    )


def _acceptance(engine: Engine, by: Grouping, since: datetime | None) -> list[GroupAcceptance]:
    return [GroupAcceptance(key, counts) for key, counts in load_acceptance(engine, by, since).items()]


def _most_shown(groups: list[GroupAcceptance]) -> list[GroupAcceptance]:
    return sorted(groups, key=lambda g: (-(g.counts.shown + g.counts.next_edits_shown), g.key))


def _labels(values: Sequence[str]) -> list[str]:
    # plotly reads chart text as its own HTML subset (<b>, <a href>, <span style>): escaped, a name shows as written.
    return [html.escape(value, quote=False) for value in values]  # it decodes &lt; &gt; &amp;, not &quot;


def _figure(traces: Sequence[Any], empty: bool, **layout: Any) -> Any:
    """A plotly figure in the page's style; with no data, empty axes and a 'no data' note."""
    import plotly.graph_objects as go

    figure = go.Figure(data=list(traces))
    figure.update_layout(
        template="plotly_white", height=380, margin={"l": 70, "r": 20, "t": 20, "b": 70}, legend={"orientation": "h"}
    )
    figure.update_layout(**layout)
    if empty:
        figure.add_annotation(
            text="no data", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 18}
        )
    return figure


def _bars(name: str, x: Sequence[Any], y: Sequence[Any], **options: Any) -> Any:
    import plotly.graph_objects as go

    return go.Bar(name=name, x=list(x), y=list(y), **options)


_CATEGORY = {"type": "category"}  # days, routes and names are labels, never numbers or dates to scale


def _requests_figure(data: ReportData) -> Any:
    days = [d.day for d in data.days]
    traces = [
        _bars("requests", days, [d.requests for d in data.days]),
        _bars("errors", days, [d.errors for d in data.days]),
    ]
    return _figure(traces, not days, xaxis=_CATEGORY, yaxis_title="requests", barmode="group")


def _latency_figure(data: ReportData) -> Any:
    routes = _labels([r.route for r in data.routes])
    series = {
        "latency p50": [r.p50_ms for r in data.routes],
        "latency p95": [r.p95_ms for r in data.routes],
        "ttft p50": [r.ttft_p50_ms for r in data.routes],
        "ttft p95": [r.ttft_p95_ms for r in data.routes],
    }
    traces = [_bars(name, routes, values) for name, values in series.items()]
    return _figure(traces, not routes, xaxis=_CATEGORY, yaxis_title="ms", barmode="group")


def _tokens_figure(data: ReportData) -> Any:
    models = _labels([m.model for m in data.models])
    traces = [
        _bars("prompt", models, [m.prompt_tokens for m in data.models]),
        _bars("completion", models, [m.completion_tokens for m in data.models]),
    ]
    return _figure(traces, not models, xaxis=_CATEGORY, yaxis_title="tokens", barmode="stack")


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value * 100, 1)


def _acceptance_figure(groups: Sequence[GroupAcceptance]) -> Any:
    """Autocompletions and next edits accepted per shown, one pair of bars per group, `accepted/shown` on each."""
    names = _labels([g.key for g in groups])
    traces = [
        _bars(
            "autocompletions",
            names,
            [_rate(g.acceptance) for g in groups],
            text=[f"{g.counts.accepted}/{g.counts.shown}" for g in groups],
            textposition="outside",
        ),
        _bars(
            "next edits",
            names,
            [_rate(g.next_edit_acceptance) for g in groups],
            text=[f"{g.counts.next_edits_accepted}/{g.counts.next_edits_shown}" for g in groups],
            textposition="outside",
        ),
    ]
    axis = {"title": "accepted per shown", "ticksuffix": "%", "range": [0, 115]}
    return _figure(traces, not groups, xaxis=_CATEGORY, yaxis=axis, barmode="group")


def _users_figure(data: ReportData) -> Any:
    users = _labels([u.user for u in data.users])
    traces = [
        _bars("requests", [u.requests for u in data.users], users, orientation="h"),
        _bars("errors", [u.errors for u in data.users], users, orientation="h"),
    ]
    axis = {"type": "category", "autorange": "reversed"}  # the busiest user on top
    return _figure(traces, not users, yaxis=axis, xaxis_title="requests", barmode="group")


def build_figures(data: ReportData) -> list[tuple[str, str, Any]]:
    """(id, title, plotly figure) of each chart on the page, in order."""
    return [
        ("requests", "Requests and errors per day (UTC)", _requests_figure(data)),
        ("latency", "Latency and time to first token (streams) per route", _latency_figure(data)),
        ("tokens", "Tokens per model", _tokens_figure(data)),
        ("acceptance", "Acceptance per language, every plugin (accepted / shown)", _acceptance_figure(data.languages)),
        ("users", f"Top {TOP_USERS} users by requests", _users_figure(data)),
        (
            "user_acceptance",
            f"Acceptance per user (the {TOP_USERS} shown most suggestions)",
            _acceptance_figure(data.user_acceptance),
        ),
        ("model_acceptance", "Acceptance per model", _acceptance_figure(data.model_acceptance)),
    ]


# Collects the page's own script errors, failed loads and refused fetches into #page-errors, where a reader (and
# a browser test reading the DOM) sees them.
_ERROR_RECORDER = """(function () {
  var errors = [];
  function show() { var box = document.getElementById("page-errors"); if (box) box.textContent = errors.join("\\n"); }
  function record(message) { errors.push(String(message)); show(); }
  window.addEventListener("error", function (e) {
    record(e.message || "could not load " + (e.target && (e.target.src || e.target.href)));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { record("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) {
    record("refused " + e.blockedURI + " (" + e.violatedDirective + ")");
  });
  var consoleError = console.error;
  console.error = function () {
    record(Array.prototype.join.call(arguments, " "));
    consoleError.apply(console, arguments);
  };
  document.addEventListener("DOMContentLoaded", show);
})();"""

# Everything is inline; the policy makes the browser refuse any fetch, so the page never reaches for a network.
_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; \
style-src 'unsafe-inline'; img-src data:; font-src data:">
<title>kodify-proxy usage</title>
<style>
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
/* Two fixed tracks: each chart is drawn while the page is parsed, at the width its section has then. */
main { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 24px; }
@media (max-width: 1100px) { main { grid-template-columns: minmax(0, 1fr); } }
.chart { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; }
.chart h2 { font-size: 16px; margin: 4px 0 8px; }
.note { background: #fff6d5; padding: 8px 12px; border-radius: 6px; }
#page-errors { color: #b00020; white-space: pre-wrap; }
#page-errors:empty { display: none; }
</style>
<script>$recorder</script>
</head>
<body>
<h1>kodify-proxy usage</h1>
<p class="summary">$summary</p>
$note
<pre id="page-errors"></pre>
<script>$plotlyjs</script>
<main>
$charts
</main>
</body>
</html>
""")


def render_summary(data: ReportData) -> str:
    """The line above the charts: the period and its totals."""
    scope = "All requests" if data.since is None else f"Requests since {data.since.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    total = data.total
    return (
        f"{scope}: {total.requests} ({total.errors} with an error), {total.prompt_tokens} prompt and "
        f"{total.completion_tokens} completion tokens; {total.shown} autocompletions shown, {total.accepted} "
        f"accepted; {total.next_edits_shown} next edits shown, {total.next_edits_accepted} accepted."
    )


def render_report_html(data: ReportData) -> str:
    """The whole page: a summary line, then one chart per figure of `build_figures`, plotly.js inlined."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    config = {"displaylogo": False, "responsive": True}
    charts = [
        f'<section class="chart" id="chart-{name}"><h2>{html.escape(title)}</h2>'
        + str(pio.to_html(figure, include_plotlyjs=False, full_html=False, div_id=f"plot-{name}", config=config))
        + "</section>"
        for name, title, figure in build_figures(data)
    ]
    empty = '<p class="note">The journal holds no requests for this period: the charts are empty.</p>'
    return _PAGE.substitute(
        recorder=_ERROR_RECORDER,
        summary=html.escape(render_summary(data)),
        note=empty if data.total.requests == 0 else "",
        plotlyjs=get_plotlyjs(),
        charts="\n".join(charts),
    )
