"""Configured-once policy values, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._breaker import BreakerMode
from ._errors import ConfigurationError


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-attempt limits in seconds, split as httpx splits them.

    `read` is also what the pipeline allows one attempt of any kind when another attempt could
    follow it; the last attempt the deadline and the retry budget allow may use all the time
    left before the deadline instead (a slow peer is not a dead one).
    """

    connect: float = 0.1
    read: float = 0.2
    write: float = 0.1
    pool: float = 0.05

    def __post_init__(self) -> None:
        for name in ("connect", "read", "write", "pool"):
            _require(getattr(self, name) > 0, f"timeouts.{name} must be > 0")


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the pipeline needs to know about one target.

    Defaults suit a chat hot path calling a service on the same network: a whole call,
    retries and backoff included, ends within `deadline` (0.5 s).

    The breaker opens, in `breaker_mode="rate"`, when at least `breaker_failure_rate` of the
    attempts of the last `breaker_window` seconds failed and there were at least
    `breaker_min_calls` of them; in `"consecutive"` mode, after `breaker_failures` transient
    failures in a row. It stays open `breaker_reset` seconds, then one probe decides.

    `hedge_delay` (off when None) hedges idempotent calls: an attempt still unanswered after
    that many seconds is not cut short; a second copy starts beside it, the first answer wins
    and the other is cancelled. Each copy is an attempt and spends a retry token.
    """

    deadline: float = 0.5
    timeouts: Timeouts = field(default_factory=Timeouts)
    attempts: int = 3
    backoff_initial: float = 0.025
    backoff_max: float = 0.25
    retry_after_max: float = 0.25
    breaker_mode: BreakerMode = "rate"
    breaker_failures: int = 5
    breaker_window: float = 10.0
    breaker_min_calls: int = 20
    breaker_failure_rate: float = 0.5
    breaker_reset: float = 5.0
    budget_ratio: float = 0.2
    budget_reserve: float = 10.0
    budget_refill_per_second: float = 1.0
    bulkhead: int = 100
    hedge_delay: float | None = None

    def __post_init__(self) -> None:
        _require(self.deadline > 0, "deadline must be > 0")
        _require(self.attempts >= 1, "attempts must be >= 1")
        _require(0 < self.backoff_initial <= self.backoff_max, "need 0 < backoff_initial <= backoff_max")
        _require(self.retry_after_max >= 0, "retry_after_max must be >= 0")
        _require(self.breaker_mode in ("rate", "consecutive"), "breaker_mode must be 'rate' or 'consecutive'")
        _require(self.breaker_failures >= 1, "breaker_failures must be >= 1")
        _require(self.breaker_window > 0, "breaker_window must be > 0")
        _require(self.breaker_min_calls >= 1, "breaker_min_calls must be >= 1")
        _require(0 < self.breaker_failure_rate <= 1, "breaker_failure_rate must be within (0, 1]")
        _require(self.breaker_reset > 0, "breaker_reset must be > 0")
        _require(0 <= self.budget_ratio <= 1, "budget_ratio must be within [0, 1]")
        _require(self.budget_reserve >= 0, "budget_reserve must be >= 0")
        _require(self.budget_refill_per_second >= 0, "budget_refill_per_second must be >= 0")
        _require(self.bulkhead >= 1, "bulkhead must be >= 1")
        _require(self.hedge_delay is None or self.hedge_delay > 0, "hedge_delay must be > 0 (or None: no hedging)")
