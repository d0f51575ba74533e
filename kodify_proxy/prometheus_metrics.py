"""GET /metrics: Prometheus families counted from the one record per client request (lane and LiteLLM alike),
plus live gauges read at scrape time from the monitor and the journal. No user ids or tokens in labels."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kodify_proxy.exchange import STATUS_CLIENT_CLOSED, Exchange

# Autocompletion answers in tens of milliseconds, chat streams for many seconds.
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
UNKNOWN: Final = "unknown"


class LiveState(Collector):
    """Gauges read when Prometheus scrapes: upstream health and the journal's backlog."""

    def __init__(self, upstreams: Callable[[], dict[str, bool]], journal: Callable[[], dict[str, Any] | None]) -> None:
        self._upstreams = upstreams
        self._journal = journal

    def collect(self) -> Iterator[Metric]:
        """The current values."""
        up = GaugeMetricFamily("kodify_upstream_up", "1 when the upstream answers GET /v1/models", labels=["upstream"])
        for url, healthy in self._upstreams().items():
            up.add_metric([url], 1.0 if healthy else 0.0)
        yield up
        status = self._journal() or {}
        yield GaugeMetricFamily(
            "kodify_journal_queue_rows", "Journal rows waiting in memory", value=float(status.get("buffered_rows", 0))
        )
        yield GaugeMetricFamily(
            "kodify_journal_spool_bytes",
            "Bytes in the journal's local spool",
            value=float(status.get("spooled_bytes", 0)),
        )
        written = CounterMetricFamily("kodify_journal_rows_written", "Journal rows stored in the database")
        written.add_metric([], float(status.get("stored_rows", 0)))
        yield written


class Metrics:
    """The metric families of one server process."""

    def __init__(self, served_models: Callable[[], Collection[str]]) -> None:
        self.registry = CollectorRegistry()
        self._served = served_models
        route_model = ["route", "model"]
        self.requests = Counter(
            "kodify_requests",
            "Client requests by route, model and status",
            [*route_model, "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kodify_request_duration_seconds",
            "Time to the last byte",
            route_model,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "kodify_time_to_first_token_seconds",
            "Streams: time to the first byte of the answer",
            route_model,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter("kodify_tokens", "Tokens by model and kind", ["model", "kind"], registry=self.registry)
        self.cancelled = Counter(
            "kodify_cancelled_requests", "Requests whose client left first", ["route"], registry=self.registry
        )
        self.in_flight = Gauge(
            "kodify_upstream_in_flight", "Lane requests open at an upstream", ["upstream"], registry=self.registry
        )
        self.events = Counter(
            "kodify_completion_events",
            "Tabby completion events (view, select, dismiss)",
            ["model", "language", "event"],
            registry=self.registry,
        )

    def watch(self, collector: Collector) -> None:
        """Add the live gauges (once the monitor and journal exist)."""
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
        if exchange.event is not None and status < 400:
            language = exchange.language or UNKNOWN
            self.events.labels(model, language, str(exchange.event.get("type"))).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))
