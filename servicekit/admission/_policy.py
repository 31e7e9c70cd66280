"""The limiter's configuration: one frozen object, validated once, shared by every request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdmissionPolicy:
    """How many requests may run at once, how that number adapts, and how long one may queue.

    The defaults follow Envoy's adaptive concurrency filter (gradient controller): a 100 ms
    update interval, a no-load latency re-measured every 60 s (+-15%) at a floor of 3, a
    gradient clamped to [0.5, 2] and a sqrt(limit) headroom. The latency buffer is 50%, not
    Envoy's 25%: in one asyncio process latency grows with every request in flight, and chat's
    throughput keeps rising until about twice the latency measured at the floor; more buffer
    admits more and slows the refusals (docs/overload.md).
    """

    min_limit: int = 3
    max_limit: int = 500
    initial_limit: int = 32
    latency_tolerance: float = 0.5
    latency_allowance: float = 0.0
    congested_lag: float = 0.002
    update_interval: float = 0.1
    probe_interval: float = 60.0
    probe_jitter: float = 0.15
    probe_samples: int = 20
    probe_max_seconds: float = 1.0
    queue_timeout: float = 0.1
    queue_max: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("need 1 <= min_limit <= initial_limit <= max_limit")
        if min(self.latency_tolerance, self.latency_allowance, self.congested_lag) < 0 or not 0 <= self.probe_jitter < 1:
            raise ValueError("latency_tolerance, latency_allowance and congested_lag must be >= 0, probe_jitter in [0, 1)")
        if min(self.update_interval, self.probe_interval, self.probe_max_seconds) <= 0 or self.probe_samples < 1:
            raise ValueError("intervals must be positive and probe_samples >= 1")
        if self.queue_timeout < 0 or self.queue_max < 0:
            raise ValueError("queue_timeout and queue_max must be >= 0")
