"""The analytics service's own metrics, beside the HTTP ones."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from servicekit.metrics import HttpMetrics


class AnalyticsMetrics(HttpMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.records = Counter("analytics_records_total", "Messages recorded for the first time", registry=registry)
        self.duplicates = Counter(
            "analytics_duplicates_total",
            "Records ignored because their message id was already counted",
            registry=registry,
        )
        self.database_errors = Counter(
            "analytics_database_errors_total", "Requests the database failed, by error type", ["error"], registry=registry
        )
        self.database_refused = Counter(
            "analytics_database_refused_total",
            "Requests answered 503 at once during a known database outage, without trying it",
            registry=registry,
        )
        self.database_outages = Counter("analytics_database_outages_total", "Database outages seen", registry=registry)
        self.database_up = Gauge("analytics_database_up", "1 while the database serves, 0 during an outage", registry=registry)
