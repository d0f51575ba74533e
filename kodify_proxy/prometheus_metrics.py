"""GET /metrics: Prometheus families counted from the one record per client request (lane and LiteLLM alike),
plus live gauges read at scrape time from the monitor and the journal. No user ids or tokens in labels."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from kodify_proxy.acceptance import Client, Suggestion
from kodify_proxy.exchange import STATUS_CLIENT_CLOSED, Exchange

# Autocompletion answers in tens of milliseconds, chat streams for many seconds.
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
UNKNOWN: Final = "unknown"
# Set by `serve --workers N` before any worker imports prometheus_client: its values then live in files there.
MULTIPROCESS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


class UpstreamsUp(Collector):
    """`kodify_upstream_up`, read when Prometheus scrapes from the answering process's monitor (every worker holds
    the server's one view, kodify_proxy.upstream_board)."""

    def __init__(self, upstreams: Callable[[], dict[str, bool]]) -> None:
        self._upstreams = upstreams

    def collect(self) -> Iterator[Metric]:
        """The current values."""
        up = GaugeMetricFamily("kodify_upstream_up", "1 when the upstream answers GET /v1/models", labels=["upstream"])
        for url, healthy in self._upstreams().items():
            up.add_metric([url], 1.0 if healthy else 0.0)
        yield up


class Metrics:
    """The metric families of the server: one process's, or with `multiprocess_dir` (`serve --workers N`, set as
    PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported) every worker's, summed and merged at scrape."""

    def __init__(self, served_models: Callable[[], Collection[str]], multiprocess_dir: str | None = None) -> None:
        own = CollectorRegistry()  # where this process's metrics live; exposed as is with one process
        self.registry = own
        if multiprocess_dir is not None:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, multiprocess_dir)  # type: ignore[no-untyped-call]
        self._served = served_models
        route_model = ["route", "model"]
        self.requests = Counter(
            "kodify_requests",
            "Client requests by route, model and status",
            [*route_model, "status"],
            registry=own,
        )
        self.duration = Histogram(
            "kodify_request_duration_seconds",
            "Time to the last byte",
            route_model,
            buckets=BUCKETS,
            registry=own,
        )
        self.ttft = Histogram(
            "kodify_time_to_first_token_seconds",
            "Streams: time to the first byte of the answer",
            route_model,
            buckets=BUCKETS,
            registry=own,
        )
        self.tokens = Counter("kodify_tokens", "Tokens by model and kind", ["model", "kind"], registry=own)
        self.cancelled = Counter(
            "kodify_cancelled_requests", "Requests whose client left first", ["route"], registry=own
        )
        self.in_flight = Gauge(
            "kodify_upstream_in_flight",
            "Lane requests open at an upstream",
            ["upstream"],
            registry=own,
            multiprocess_mode="livesum",
        )
        self.events = Counter(
            "kodify_completion_events",
            "Tabby completion events (view, select, dismiss)",
            ["model", "language", "event"],
            registry=own,
        )
        self.suggestions = Counter(
            "kodify_suggestions",
            "Suggestions the IDE plugins showed, by client, kind (autocomplete, next_edit) and outcome (shown, "
            "accepted, aborted), from Tabby's events and Continue's dev data",
            ["client", "kind", "outcome"],
            registry=own,
        )
        self.journal_queue = Gauge(
            "kodify_journal_queue_rows", "Journal rows waiting in memory", registry=own, multiprocess_mode="livesum"
        )
        self.journal_spool = Gauge(
            "kodify_journal_spool_bytes",
            "Bytes in the journal's local spool",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.journal_written = Counter(
            "kodify_journal_rows_written", "Journal rows stored in the database", registry=own
        )
        self.journal_unrecorded = Counter(
            "kodify_journal_unrecorded_in_flight",
            "Requests begun while the journal's in-flight table was full: had their worker died, their rows were lost",
            registry=own,
        )
        self._counted: dict[str, int] = {}
        self._in_flight: dict[str, Gauge] = {}
        self.rate_limited = Counter(
            "kodify_rate_limited",
            "Requests refused by a limit (429), by route and limit",
            ["route", "limit"],
            registry=own,
        )
        self.limiter_errors = Counter(
            "kodify_rate_limiter_errors",
            "Limit checks that could not reach the counts (Redis) and let the request through",
            registry=own,
        )

    def note_in_flight(self, upstream: str, step: int) -> None:
        """A lane request opened (+1) or closed (-1) at `upstream` (its labelled child kept: `labels()` costs ~5 us)."""
        child = self._in_flight.get(upstream)
        if child is None:
            child = self._in_flight[upstream] = self.in_flight.labels(upstream)
        child.inc(step)

    def note_journal(self, status: dict[str, Any]) -> None:
        """The journal writer's state (`JournalWriter.status()`): kept current every second and at each scrape."""
        self.journal_queue.set(status.get("buffered_rows", 0))
        self.journal_spool.set(status.get("spooled_bytes", 0))
        self._count_up(self.journal_written, "stored_rows", status)
        self._count_up(self.journal_unrecorded, "unrecorded_in_flight", status)

    def _count_up(self, counter: Counter, key: str, status: dict[str, Any]) -> None:
        """A counter follows a running total the journal keeps."""
        total, counted = int(status.get(key, 0)), self._counted.get(key, 0)
        if total > counted:
            counter.inc(total - counted)
            self._counted[key] = total

    def watch(self, collector: Collector) -> None:
        """Add gauges read at scrape time (once the monitor exists)."""
        self.registry.register(collector)

    def _model(self, model: str | None) -> str:
        """A served model's name; anything else (a typo, a probe) is `unknown`, so labels stay few."""
        return model if model is not None and model in self._served() else UNKNOWN

    def observe(self, exchange: Exchange) -> None:
        """Count one finished request."""
        route, model, status = exchange.route, self._model(exchange.model), exchange.final_status()
        self.requests.labels(route, model, str(status)).inc()
        if exchange.ended_at is not None:
            self.duration.labels(route, model).observe(max(0.0, exchange.ended_at - exchange.t0))
        if exchange.stream and exchange.first_byte_at is not None and status < 400:
            self.ttft.labels(route, model).observe(max(0.0, exchange.first_byte_at - exchange.t0))
        for kind, count in (("prompt", exchange.prompt_tokens), ("completion", exchange.completion_tokens)):
            if count:
                self.tokens.labels(model, kind).inc(count)
        if status == STATUS_CLIENT_CLOSED:
            self.cancelled.labels(route).inc()
        if exchange.rate_limited is not None:
            self.rate_limited.labels(route, exchange.rate_limited).inc()
        if exchange.event is not None and status < 400:
            language = exchange.language or UNKNOWN
            self.events.labels(model, language, str(exchange.event.get("type"))).inc()
        if exchange.suggestion is not None and status < 400:
            self._note_suggestion(exchange.suggestion, exchange.client)

    def _note_suggestion(self, suggestion: Suggestion, client: Client | None) -> None:
        """One event about a suggestion, in kodify_suggestions_total (acceptance.py says what it counts as)."""
        name = client.metric_label if client is not None else "other"
        for outcome in suggestion.outcomes():
            self.suggestions.labels(name, suggestion.kind, outcome).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))
