"""Configured-once policy values, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._errors import ConfigurationError


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-attempt limits in seconds, split as httpx splits them."""

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
    """

    deadline: float = 0.5
    timeouts: Timeouts = field(default_factory=Timeouts)
    attempts: int = 3
    backoff_initial: float = 0.025
    backoff_max: float = 0.25
    retry_after_max: float = 0.25
    breaker_failures: int = 5
    breaker_reset: float = 5.0
    budget_ratio: float = 0.2
    budget_reserve: float = 10.0
    budget_refill_per_second: float = 1.0
    bulkhead: int = 100

    def __post_init__(self) -> None:
        _require(self.deadline > 0, "deadline must be > 0")
        _require(self.attempts >= 1, "attempts must be >= 1")
        _require(0 < self.backoff_initial <= self.backoff_max, "need 0 < backoff_initial <= backoff_max")
        _require(self.retry_after_max >= 0, "retry_after_max must be >= 0")
        _require(self.breaker_failures >= 1, "breaker_failures must be >= 1")
        _require(self.breaker_reset > 0, "breaker_reset must be > 0")
        _require(0 <= self.budget_ratio <= 1, "budget_ratio must be within [0, 1]")
        _require(self.budget_reserve >= 0, "budget_reserve must be >= 0")
        _require(self.budget_refill_per_second >= 0, "budget_refill_per_second must be >= 0")
        _require(self.bulkhead >= 1, "bulkhead must be >= 1")
