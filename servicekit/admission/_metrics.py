"""Prometheus view of admission: in flight, limit, queue, no-load latency, and what was shed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from ..metrics import gauge, multiprocess_dir
from ._limiter import Limiter


class AdmissionMetrics:
    """Gauges read the limiter when scraped (`bind` it in the lifespan); counters come from `on_event`."""

    def __init__(self, registry: CollectorRegistry, *, prefix: str) -> None:
        # Limits are per process: under --workers the sums and per-worker series say so.
        self.in_flight = gauge(f"{prefix}_admission_in_flight", "Admitted requests running", registry=registry, mode="livesum")
        self.limit = gauge(f"{prefix}_admission_limit", "Current adaptive concurrency limit", registry=registry, mode="liveall")
        self.queued = gauge(f"{prefix}_admission_queued", "Requests waiting for a slot", registry=registry, mode="livesum")
        self.min_latency = gauge(
            f"{prefix}_admission_min_latency_seconds",
            "Latency without load, as last measured",
            registry=registry,
            mode="liveall",
        )
        self.loop_lag = gauge(
            f"{prefix}_event_loop_lag_seconds",
            "Worst lateness of the loop's timers in the last update",
            registry=registry,
            mode="livemax",
        )
        self.shed = Counter(
            f"{prefix}_admission_shed_total",
            "Requests not run: queue_full, queue_timeout and read_late answered 503, client_gone left while queued",
            ["reason"],
            registry=registry,
        )
        self.cancelled = Counter(
            f"{prefix}_admission_cancelled_total", "Runs cancelled because their client left", registry=registry
        )
        # Each reason's child bound at its first use (a series appears once it counts something):
        # under overload every refusal counts, and a label look-up costs more than the increment.
        self._events: dict[str, Counter] = {"cancelled": self.cancelled}

    def bind(self, limiter: Limiter) -> None:
        if multiprocess_dir() is None:  # one process: read the limiter when scraped, at no cost per request
            self.in_flight.set_function(lambda: limiter.in_flight)
            self.limit.set_function(lambda: limiter.limit)
            self.queued.set_function(lambda: limiter.queued)
            self.min_latency.set_function(lambda: limiter.min_latency or 0.0)
            self.loop_lag.set_function(lambda: limiter.loop_lag.last)
            return

        # Under --workers the scrape reads the values each worker wrote to its files: write them
        # on the loop-lag timer (40 times a second while requests come), and once now.
        def write() -> None:
            self.in_flight.set(limiter.in_flight)
            self.limit.set(limiter.limit)
            self.queued.set(limiter.queued)
            self.min_latency.set(limiter.min_latency or 0.0)
            self.loop_lag.set(limiter.loop_lag.last)

        limiter.loop_lag.on_tick = write
        write()

    def on_event(self, name: str) -> None:
        """An `AdmissionMiddleware` and `ShedGate` hook."""
        counter = self._events.get(name)
        if counter is None:
            counter = self._events[name] = self.shed.labels(name)
        counter.inc()
