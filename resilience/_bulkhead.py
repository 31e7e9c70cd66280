"""A cap on calls in flight that rejects at once instead of queueing."""

from __future__ import annotations


class Bulkhead:
    """Counts calls in flight; `try_enter` fails immediately when `limit` are running.

    No lock is needed: asyncio runs `try_enter` and `leave` without yielding.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def limit(self) -> int:
        return self._limit

    def try_enter(self) -> bool:
        if self._in_flight >= self._limit:
            return False
        self._in_flight += 1
        return True

    def leave(self) -> None:
        self._in_flight -= 1
