"""Prometheus metrics of one service: HTTP requests by route and status, latency, batch sizes, queue depth, the
adapter cache (read from ``engine.store.stats()`` at each scrape) and the tasks the suite holds.

Each app has its own :class:`~prometheus_client.CollectorRegistry`, so several apps in one process (tests) never
share counters. Routes are labelled by their template (``/v1/tasks/{task_id}``), never the raw path, so label values
stay few whatever clients send.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _EngineCollector:
    """The adapter cache's counters and residency, and the suite's task count, read when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], dict[str, Any] | None]) -> None:
        self._stats = stats

    def collect(self):
        stats = self._stats()
        if stats is None:  # not loaded yet
            return
        cache = stats["cache"]
        for name, help_text in (
            ("hits", "Task module requests served from memory."),
            ("misses", "Task module requests that loaded the module from disk."),
            ("evictions", "Task modules dropped from memory (LRU budget, replacement or removal)."),
            ("failures", "Task module loads that failed (missing or corrupt module)."),
        ):
            c = CounterMetricFamily(f"scoreplex_adapter_cache_{name}", help_text)
            c.add_metric([], float(cache.get(name, 0)))
            yield c
        g = GaugeMetricFamily("scoreplex_adapters_resident", "Task modules held in memory.")
        g.add_metric([], float(cache.get("resident", 0)))
        yield g
        g = GaugeMetricFamily("scoreplex_adapters_resident_bytes", "Bytes of the task modules held in memory.")
        g.add_metric([], float(cache.get("resident_bytes", 0)))
        yield g
        g = GaugeMetricFamily("scoreplex_tasks_loaded", "Tasks the served suite holds.")
        g.add_metric([], float(stats["tasks"]))
        yield g


class ServiceMetrics:
    """The service's metrics in their own registry; render with :func:`prometheus_client.generate_latest`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "scoreplex_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "scoreplex_http_request_duration_seconds",
            "Time to answer a request, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "scoreplex_batch_rows",
            "Rows per engine call (requests gathered together).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "scoreplex_batch_requests", "Requests per engine call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "scoreplex_batch_duration_seconds", "Time of one engine call.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.rows = Counter("scoreplex_rows_scored", "Rows answered, by outcome.", ["outcome"], registry=r)
        self.rejected = Counter(
            "scoreplex_requests_rejected", "Score requests refused before scoring, by reason.", ["reason"], registry=r
        )
        self.queue_depth = Gauge("scoreplex_queue_depth", "Score requests waiting for the engine.", registry=r)
        self.rows_in_flight = Gauge("scoreplex_rows_in_flight", "Rows in the engine call now running.", registry=r)

    def watch(self, depth: Callable[[], float], in_flight: Callable[[], float], stats) -> None:
        """Read the queue, the running batch and the engine's stats at each scrape."""
        self.queue_depth.set_function(depth)
        self.rows_in_flight.set_function(in_flight)
        self.registry.register(_EngineCollector(stats))

    def observe_batch(self, rows: int, requests: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)
