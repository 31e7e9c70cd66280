"""Resilience for asyncio callers: deadline, bulkhead, retry budget, retries or hedging, circuit breaker.

Build one `Pipeline` per target from a `Policy` and share it; every call gets fresh retry
state and returns `Ok(value)` or a `Fallback` that names its reason. See `_pipeline` for the
order of the layers and `_errors` for the exception tree.
"""

from ._breaker import BreakerMode, CircuitBreaker, SlidingWindow
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._classify import TRANSIENT_STATUSES, Classifier, Failure, classify_httpx, parse_retry_after
from ._clock import Clock, SystemClock, Timer, TimerClock
from ._errors import ConfigurationError, FallbackError, InvalidResponseError, ResilienceError
from ._events import Event, EventName, Hook, log_event
from ._http import IDEMPOTENCY_HEADER, is_idempotent, send
from ._outcome import Fallback, Ok, Outcome, Reason
from ._pipeline import Attempt, Pipeline
from ._policy import Policy, Timeouts

__all__ = [
    "IDEMPOTENCY_HEADER",
    "TRANSIENT_STATUSES",
    "Attempt",
    "BreakerMode",
    "Bulkhead",
    "CircuitBreaker",
    "Classifier",
    "Clock",
    "ConfigurationError",
    "Event",
    "EventName",
    "Failure",
    "Fallback",
    "FallbackError",
    "Hook",
    "InvalidResponseError",
    "Ok",
    "Outcome",
    "Pipeline",
    "Policy",
    "Reason",
    "ResilienceError",
    "RetryBudget",
    "SlidingWindow",
    "SystemClock",
    "Timer",
    "TimerClock",
    "Timeouts",
    "classify_httpx",
    "is_idempotent",
    "log_event",
    "parse_retry_after",
    "send",
]
