"""Deterministic time for tests: a clock that only moves when told to or when slept on."""

from __future__ import annotations

import asyncio


class FakeClock:
    """A `Clock` whose `sleep` advances time at once instead of waiting.

    `sleeps` records every requested sleep, so tests can assert on backoff.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
