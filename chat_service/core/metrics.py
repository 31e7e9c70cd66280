"""Chat metrics, including a hook that turns resilience events into counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from resilience import Event
from servicekit.metrics import LATENCY_BUCKETS, HttpMetrics, gauge

BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}


class ChatMetrics(HttpMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.analytics_calls = Counter(
            "chat_analytics_calls_total",
            "Analytics calls by operation and outcome (ok or fallback reason)",
            ["operation", "outcome"],
            registry=registry,
        )
        self.retries = Counter("chat_analytics_retries_total", "Retries scheduled", ["target"], registry=registry)
        self.fallbacks = Counter("chat_analytics_fallbacks_total", "Fallbacks by reason", ["target", "reason"], registry=registry)
        self.budget_rejections = Counter(
            "chat_retry_budget_exhausted_total", "Retries refused by the budget", ["target"], registry=registry
        )
        self.bulkhead_rejections = Counter(
            "chat_bulkhead_rejected_total", "Calls refused by a full bulkhead", ["target"], registry=registry
        )
        # Each worker has its own breakers: one series per worker (a `pid` label under workers).
        self.breaker_state = gauge(
            "chat_breaker_state", "Breaker state: 0 closed, 1 half-open, 2 open", ["target"], registry=registry, mode="liveall"
        )
        self.breaker_transitions = Counter(
            "chat_breaker_transitions_total", "Breaker state changes", ["target", "state"], registry=registry
        )
        # Workers on a host share one outbox file: the scraped worker's fresh reading is the answer.
        self.outbox_depth = gauge("chat_outbox_depth", "Records waiting for analytics", registry=registry, mode="livemostrecent")
        self.outbox_dead_letters = gauge(
            "chat_outbox_dead_letters",
            "Records analytics refused as invalid, set aside for a human",
            registry=registry,
            mode="livemostrecent",
        )
        self.llm_latency = Histogram("chat_llm_run_seconds", "Whole agent runs", buckets=LATENCY_BUCKETS, registry=registry)
        self.llm_errors = Counter("chat_llm_errors_total", "Failed agent runs", ["kind"], registry=registry)

    def on_resilience_event(self, event: Event) -> None:
        """A `resilience` hook."""
        if event.name == "retry_scheduled":
            self.retries.labels(event.target).inc()
        elif event.name == "fallback":
            self.fallbacks.labels(event.target, event.fields["reason"]).inc()
        elif event.name == "budget_exhausted":
            self.budget_rejections.labels(event.target).inc()
        elif event.name == "bulkhead_rejected":
            self.bulkhead_rejections.labels(event.target).inc()
        elif event.name.startswith("breaker_"):
            state = event.fields["state"]
            self.breaker_state.labels(event.target).set(BREAKER_STATES[state])
            self.breaker_transitions.labels(event.target, state).inc()
