"""Every store call under a timeout and a circuit breaker: a dead store costs nothing per chat."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from resilience import CircuitBreaker, Event, SystemClock
from servicekit.logging import get_logger

T = TypeVar("T")
log = get_logger("sessions")


class StoreUnavailable(Exception):
    """The store failed, timed out, or its breaker is open; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Guarded:
    """Runs store calls with `timeout`; counts failures per operation and logs an outage once."""

    def __init__(
        self,
        *,
        timeout: float,
        on_failure: Callable[[str, str], None],
        emit: Callable[[Event], None],
        breaker_failures: int = 3,
        breaker_reset: float = 5.0,
    ) -> None:
        self.timeout = timeout
        self._on_failure = on_failure
        self.target = "sessions"  # the breaker's name in events and metrics
        self.breaker = CircuitBreaker(
            self.target, reset=breaker_reset, clock=SystemClock(), emit=emit, mode="consecutive", failures=breaker_failures
        )
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
