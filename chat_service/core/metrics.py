"""Chat metrics, including a hook that turns resilience events into counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from resilience import Event
from servicekit.metrics import LATENCY_BUCKETS, HttpMetrics, gauge

BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
MODEL_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 45.0)


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
        self.outbox_stalled = gauge(
            "chat_outbox_stalled_seconds",
            "While records wait: seconds since a batch was last delivered (0 when the outbox is empty); the worst live worker",
            registry=registry,
            mode="livemax",
        )
        self.outbox_accepting = gauge(
            "chat_outbox_accepting",
            "1 when the outbox takes records, 0 when chats get 503 (see /readyz); the lowest of the live workers",
            registry=registry,
            mode="livemin",
        )
        self.outbox_writer_busy = gauge(
            "chat_outbox_writer_busy_seconds",
            "Seconds the outbox's writer thread has been on its current job (0 when idle): a stalled disk, "
            "with every append waiting behind it; the scraped worker's (each worker has its own writer)",
            registry=registry,
            mode="livemostrecent",
        )
        self.outbox_refused = Counter(
            "chat_outbox_refused_total", "Chats answered 503 because the outbox refused", ["reason"], registry=registry
        )
        self.outbox_dead_letters = gauge(
            "chat_outbox_dead_letters",
            "Records analytics refused as invalid, set aside for a human",
            registry=registry,
            mode="livemostrecent",
        )
        self.llm_latency = Histogram("chat_llm_run_seconds", "Whole agent runs", buckets=LATENCY_BUCKETS, registry=registry)
        self.llm_errors = Counter("chat_llm_errors_total", "Failed agent runs", ["kind"], registry=registry)
        self.llm_calls = Counter(
            "chat_llm_calls_total",
            "Model calls per endpoint by outcome (ok, or why the endpoint did not answer)",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.llm_call_latency = Histogram(
            "chat_llm_call_seconds",
            "Answered model calls per endpoint, retries included (streams: until the first event)",
            ["endpoint"],
            buckets=MODEL_LATENCY_BUCKETS,
            registry=registry,
        )
        self.llm_tokens = Counter(
            "chat_llm_tokens_total", "Tokens used per endpoint (the SDK's usage)", ["endpoint", "kind"], registry=registry
        )
        self.llm_retries = Counter("chat_llm_retries_total", "Model call retries scheduled", ["endpoint"], registry=registry)
        # Set as calls start and end (not set_function, which the multiprocess collector cannot
        # read): under --workers the scrape sums the live workers' values.
        self.llm_in_flight = gauge(
            "chat_llm_in_flight", "Model calls in flight per endpoint", ["endpoint"], registry=registry, mode="livesum"
        )
        self.llm_offline_replies = Counter(
            "chat_llm_offline_replies_total", "Replies the offline model gave because no endpoint could", registry=registry
        )
        self._model_calls: dict[tuple[str, str], Counter] = {}
        self._model_latency: dict[str, Histogram] = {}
        self._model_tokens: dict[str, tuple[Counter, Counter]] = {}
        self._model_in_flight: dict[str, Gauge] = {}
        self.auth_refusals = Counter(
            "chat_auth_refusals_total", "Requests refused by end-user auth, by reason", ["reason"], registry=registry
        )
        self.jwks_fetches = Counter("chat_auth_jwks_fetches_total", "JWKS fetches by outcome", ["outcome"], registry=registry)
        self.session_store_failures = Counter(
            "chat_session_store_failures_total",
            "Session store calls that failed (chats went on without history) by operation and reason",
            ["operation", "reason"],
            registry=registry,
        )

    def on_session_failure(self, operation: str, reason: str) -> None:
        self.session_store_failures.labels(operation, reason).inc()

    def on_jwks_fetch(self, outcome: str) -> None:
        """A `JwksKeys` hook: ok, unreachable, status or invalid."""
        self.jwks_fetches.labels(outcome).inc()

    def on_resilience_event(self, event: Event) -> None:
        """A `resilience` hook for the analytics pipelines."""
        if event.name == "retry_scheduled":
            self.retries.labels(event.target).inc()
        elif event.name == "fallback":
            self.fallbacks.labels(event.target, event.fields["reason"]).inc()
        else:
            self._count_shared(event)

    def on_model_event(self, event: Event) -> None:
        """A `resilience` hook for model endpoints (pipelines named llm-<endpoint>)."""
        if event.name == "retry_scheduled":
            self.llm_retries.labels(event.target.removeprefix("llm-")).inc()
        elif event.name != "fallback":  # outcomes are counted per call, in chat_llm_calls_total
            self._count_shared(event)

    def watch_model_endpoint(self, endpoint: str, pipeline_target: str) -> None:
        """Publish an endpoint's calls in flight and its breaker from the start."""
        self.model_in_flight(endpoint, 0)
        self.watch_breaker(pipeline_target)

    def watch_breaker(self, target: str) -> None:
        """Publish a breaker as closed from the start, so dashboards and alerts see it before it ever opens."""
        self.breaker_state.labels(target).set(BREAKER_STATES["closed"])

    def model_in_flight(self, endpoint: str, calls: int) -> None:
        """A `CallObserver` method: an endpoint's calls in flight changed."""
        gauge = self._model_in_flight.get(endpoint)
        if gauge is None:
            gauge = self._model_in_flight[endpoint] = self.llm_in_flight.labels(endpoint)
        gauge.set(calls)

    def model_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        """A `CallObserver` method: one endpoint call ended."""
        # Labelled children are looked up once and kept: `labels()` costs ~3 us a call, per chat.
        calls = self._model_calls.get((endpoint, outcome))
        if calls is None:
            calls = self._model_calls[(endpoint, outcome)] = self.llm_calls.labels(endpoint, outcome)
        calls.inc()
        if outcome == "ok":
            latency = self._model_latency.get(endpoint)
            if latency is None:
                latency = self._model_latency[endpoint] = self.llm_call_latency.labels(endpoint)
            latency.observe(seconds)

    def model_tokens(self, endpoint: str, input_tokens: int, output_tokens: int) -> None:
        """A `CallObserver` method: tokens an endpoint reported for one call."""
        tokens = self._model_tokens.get(endpoint)
        if tokens is None:
            tokens = self._model_tokens[endpoint] = (
                self.llm_tokens.labels(endpoint, "input"),
                self.llm_tokens.labels(endpoint, "output"),
            )
        tokens[0].inc(input_tokens)
        tokens[1].inc(output_tokens)

    def _count_shared(self, event: Event) -> None:
        if event.name == "budget_exhausted":
            self.budget_rejections.labels(event.target).inc()
        elif event.name == "bulkhead_rejected":
            self.bulkhead_rejections.labels(event.target).inc()
        elif event.name.startswith("breaker_"):
            state = event.fields["state"]
            self.breaker_state.labels(event.target).set(BREAKER_STATES[state])
            self.breaker_transitions.labels(event.target, state).inc()
