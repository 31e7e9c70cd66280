"""The analytics service's own metrics, beside the HTTP ones."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

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
