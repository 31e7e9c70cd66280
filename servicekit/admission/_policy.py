"""The limiter's configuration: one frozen object, validated once, shared by every request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdmissionPolicy:
    """How many requests may run at once, how that number adapts, and how long one may queue.

    The defaults follow Envoy's adaptive concurrency filter (gradient controller): a 100 ms
    update interval, a no-load latency re-measured every 60 s (+-15%) at a floor of 3, a
    gradient clamped to [0.5, 2] and a sqrt(limit) headroom. The latency buffer is 300%, not
    Envoy's 25%: a chat waits on analytics and on the outbox's writer thread, which other chats
    overlap, so chat's throughput keeps rising with concurrency well past the no-load latency
    (8 in flight 830-990 req/s, 32 in flight 1,070-1,120, measured). What bounds it instead is
    `lag_target`: an event loop later than 5 ms lowers the limit whatever the latency, because a
    request arriving then, a refusal included, waits that long to be read (docs/overload.md).
    """

    min_limit: int = 3
    max_limit: int = 500
    initial_limit: int = 100
    latency_tolerance: float = 3.0
    congested_lag: float = 0.002
    lag_target: float = 0.005
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
        if min(self.latency_tolerance, self.congested_lag, self.lag_target) < 0 or not 0 <= self.probe_jitter < 1:
            raise ValueError("latency_tolerance, congested_lag and lag_target must be >= 0, probe_jitter in [0, 1)")
        if min(self.update_interval, self.probe_interval, self.probe_max_seconds) <= 0 or self.probe_samples < 1:
            raise ValueError("intervals must be positive and probe_samples >= 1")
        if self.queue_timeout < 0 or self.queue_max < 0:
            raise ValueError("queue_timeout and queue_max must be >= 0")
