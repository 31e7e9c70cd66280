"""Deterministic time for tests: a clock that only moves when told to or when slept on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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
        self._timers: list[_FakeTimer] = []

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for pending in [t for t in self._timeouts if t.when is not None and t.when <= self.now]:
            pending.expire()
        for timer in [t for t in self._timers if t.when <= self.now]:
            timer.fire()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)

    def timeout(self, seconds: float | None) -> _FakeTimeout:
        return _FakeTimeout(self, None if seconds is None else self.now + seconds)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> _FakeTimer:
        timer = _FakeTimer(self, self.now + seconds, callback)
        self._timers.append(timer)
        if timer.when <= self.now:
            timer.fire()
        return timer

    @property
    def pending_timeouts(self) -> int:
        """Timeouts and timers now pending (a test can wait for an attempt to be under way)."""
        return len(self._timeouts) + len(self._timers)


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


class _FakeTimer:
    """`loop.call_later` on a `FakeClock`: the callback runs on the loop's next turn once due."""

    def __init__(self, clock: FakeClock, when: float, callback: Callable[[], object]) -> None:
        self._clock = clock
        self.when = when
        self._callback = callback
        self._cancelled = False

    def fire(self) -> None:
        self._clock._timers.remove(self)
        asyncio.get_running_loop().call_soon(self._run)

    def cancel(self) -> None:
        # As with a loop's timer handle: a cancelled callback never runs, even if already due.
        self._cancelled = True
        if self in self._clock._timers:
            self._clock._timers.remove(self)

    def _run(self) -> None:
        if not self._cancelled:
            self._callback()
