"""Deterministic time for tests: a clock that only moves when told to or when slept on."""

from __future__ import annotations

import asyncio
from types import TracebackType


class FakeClock:
    """A `Clock` whose `sleep` advances time at once instead of waiting.

    `sleeps` records every requested sleep, so tests can assert on backoff. Timeouts opened
    with `timeout()` fire when `advance` or `sleep` moves the clock to or past them (the body
    is cancelled on the next turn of the event loop and `TimeoutError` is raised, exactly as
    with `asyncio.timeout`), so a test decides when an attempt times out.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._timeouts: list[_FakeTimeout] = []

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for pending in [t for t in self._timeouts if t.when is not None and t.when <= self.now]:
            pending.expire()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)

    def timeout(self, seconds: float | None) -> _FakeTimeout:
        return _FakeTimeout(self, None if seconds is None else self.now + seconds)

    @property
    def pending_timeouts(self) -> int:
        """Timeouts now open (a test can wait for an attempt to be under way)."""
        return len(self._timeouts)


class _FakeTimeout:
    """`asyncio.timeout` whose expiry is decided by a `FakeClock` instead of the event loop."""

    def __init__(self, clock: FakeClock, when: float | None) -> None:
        self._clock = clock
        self.when = when
        self._inner = asyncio.timeout(None)

    async def __aenter__(self) -> _FakeTimeout:
        await self._inner.__aenter__()
        self._clock._timeouts.append(self)
        if self.when is not None and self.when <= self._clock.now:
            self.expire()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self in self._clock._timeouts:
            self._clock._timeouts.remove(self)
        await self._inner.__aexit__(kind, error, traceback)

    def expire(self) -> None:
        # Fires once: a deadline at or before the loop's "now" makes asyncio cancel the body on
        # its next turn, and raise TimeoutError when the body exits.
        self._clock._timeouts.remove(self)
        self._inner.reschedule(asyncio.get_running_loop().time())
