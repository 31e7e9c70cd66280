"""Named instrumentation events and the hooks that receive them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import structlog

EventName: TypeAlias = Literal[
    "attempt_failed",
    "breaker_closed",
    "breaker_half_open",
    "breaker_opened",
    "budget_exhausted",
    "bulkhead_rejected",
    "fallback",
    "hedge_skipped",
    "hedge_started",
    "retry_scheduled",
]


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a call to `target`; `fields` carries the details."""

    name: EventName
    target: str
    fields: dict[str, Any] = field(default_factory=dict)


Hook: TypeAlias = Callable[[Event], None]


def log_event(event: Event) -> None:
    """The default hook: one structlog line per event (breaker changes at warning level)."""
    logger = structlog.get_logger(component="resilience")
    level = "warning" if event.name.startswith("breaker_") else "info"
    if event.name in ("attempt_failed", "hedge_skipped", "hedge_started", "retry_scheduled"):
        level = "debug"
    getattr(logger, level)(event.name, target=event.target, **event.fields)
