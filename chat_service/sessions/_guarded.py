"""Every store call under a timeout and a circuit breaker: a dead store costs nothing per chat.

The breaker judges the store by its failure rate over a window, with a minimum number of calls
(resilience4j's and Polly's model, as analytics' breaker): calls that stall together fail together,
and counting failures in a row opened it for a half-second stall (three timeouts at once on a
starved machine), which cost every conversation on the worker `reset` seconds of history. A store
that is really gone still opens it after `min_calls` failures in a row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypedDict, TypeVar

from resilience import BreakerMode, CircuitBreaker, Clock, Event, SystemClock
from servicekit.logging import get_logger

T = TypeVar("T")
log = get_logger("sessions")


class StoreUnavailable(Exception):
    """The store failed, timed out, or its breaker is open; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BreakerOptions(TypedDict, total=False):
    """The session store breaker's settings, named as `resilience.CircuitBreaker` names them."""

    mode: BreakerMode
    failures: int  # consecutive mode: failures in a row that open it
    window: float  # rate mode: seconds of calls the failure rate covers
    min_calls: int  # rate mode: calls in the window before it may open (and failures in a row that open it)
    failure_rate: float  # rate mode: share of failed calls that opens it
    reset: float  # seconds open before one probe decides


DEFAULT_BREAKER = BreakerOptions(mode="rate", failures=3, window=10.0, min_calls=10, failure_rate=0.5, reset=5.0)


class Guarded:
    """Runs store calls with `timeout`; counts failures per operation and logs an outage once."""

    def __init__(
        self,
        *,
        timeout: float,
        on_failure: Callable[[str, str], None],
        emit: Callable[[Event], None],
        breaker: BreakerOptions | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.timeout = timeout
        self._on_failure = on_failure
        self.target = "sessions"  # the breaker's name in events and metrics
        options: BreakerOptions = {**DEFAULT_BREAKER, **(breaker or {})}
        self.breaker = CircuitBreaker(self.target, clock=clock or SystemClock(), emit=emit, **options)
        self._down: str | None = None

    async def call(self, operation: str, make: Callable[[], Awaitable[T]]) -> T:
        admission = self.breaker.admit()
        if admission == "reject":
            self._on_failure(operation, "breaker_open")
            raise StoreUnavailable("breaker_open")
        try:
            async with asyncio.timeout(self.timeout):
                result = await make()
        except asyncio.CancelledError:
            self.breaker.release(admission)
            raise
        except Exception as error:
            reason = "timeout" if isinstance(error, TimeoutError) else type(error).__name__
            self.breaker.record_failure(admission)
            self._on_failure(operation, reason)
            if self._down is None:  # once per outage, not once per chat
                log.warning("session_store_failed", operation=operation, reason=reason, error=str(error)[:200])
            self._down = reason
            raise StoreUnavailable(reason) from None
        self.breaker.record_success(admission)
        if self._down is not None:
            log.info("session_store_recovered", after=self._down)
            self._down = None
        return result
