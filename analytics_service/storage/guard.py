"""Database outages answered fast and logged once, whatever the backend.

Without this, a dead database made every request wait on its driver and end in a 500 with a
traceback in the log (34 MB in 10 s). Here an error the backend classes as an outage becomes
`DatabaseUnavailable` (a 503 with Retry-After), and a `resilience.CircuitBreaker` sees each
one: after `failures` in a row it opens, and requests are refused at once, without touching the
database, until one probe every `retry_after` seconds finds it back. The log gets one line when
an outage starts (the breaker opens) and one when it ends (it closes), and metrics count the rest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from resilience import CircuitBreaker, Event, SystemClock
from servicekit.logging import get_logger

from ..core.metrics import AnalyticsMetrics
from .base import RecordResult, Store, StoreRecord

T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """The database cannot serve now; clients should come back after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"database unavailable; retry after {retry_after} s")
        self.retry_after = retry_after


class GuardedStore:
    """A `Store` whose outages fail fast as `DatabaseUnavailable`; bugs still propagate."""

    def __init__(self, store: Store, *, metrics: AnalyticsMetrics, failures: int = 3, retry_after: float = 2.0) -> None:
        self.store = store
        self._metrics = metrics
        self._retry_after = retry_after
        self._clock = SystemClock()
        self._log = get_logger("database")
        self._outage_started = 0.0
        self._refused = 0
        self._last_error = ""
        self.breaker = CircuitBreaker(
            "database", mode="consecutive", failures=failures, reset=retry_after, clock=self._clock, emit=self._on_event
        )
        metrics.database_up.set(1)

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()

    async def ping(self) -> None:
        await self._guarded(self.store.ping)

    async def count(self, user_id: str) -> int | None:
        return await self._guarded(lambda: self.store.count(user_id))

    async def record(self, records: Sequence[StoreRecord]) -> list[RecordResult]:
        return await self._guarded(lambda: self.store.record(records))

    def is_unavailable(self, error: BaseException) -> bool:
        return isinstance(error, DatabaseUnavailable) or self.store.is_unavailable(error)

    async def _guarded(self, operation: Callable[[], Awaitable[T]]) -> T:
        admission = self.breaker.admit()
        if admission == "reject":
            self._refused += 1
            self._metrics.database_refused.inc()
            raise DatabaseUnavailable(self._seconds_to_probe())
        try:
            result = await operation()
        except BaseException as error:
            if not self.store.is_unavailable(error):
                self.breaker.release(admission)  # a bug or a cancellation says nothing of the database
                raise
            self._last_error = f"{type(error).__name__}: {error}"[:300]
            self._metrics.database_errors.labels(type(error).__name__).inc()
            self.breaker.record_failure(admission)
            raise DatabaseUnavailable(self._seconds_to_probe()) from error
        self.breaker.record_success(admission)
        return result

    def _seconds_to_probe(self) -> int:
        if self.breaker.state != "open":
            return 1
        return max(1, math.ceil(self._retry_after))

    def _on_event(self, event: Event) -> None:
        # Only the edges of an outage are logged: a probe that fails re-opens the breaker
        # every `retry_after` seconds, and that is not news.
        if event.name == "breaker_opened" and event.fields["previous"] == "closed":
            self._outage_started = time.monotonic()
            self._refused = 0
            self._metrics.database_up.set(0)
            self._metrics.database_outages.inc()
            self._log.error("database_unavailable", error=self._last_error, retry_after=self._retry_after)
        elif event.name == "breaker_closed":
            self._metrics.database_up.set(1)
            self._log.warning(
                "database_recovered",
                outage_seconds=round(time.monotonic() - self._outage_started, 2),
                refused=self._refused,
            )
