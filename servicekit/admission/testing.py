"""Deterministic time for limiter tests: a clock whose timers fire only when it is advanced."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A `resilience.TimerClock` that moves only on `advance`, firing every timer that falls due, in order.

    `late_by` makes every timer fire that much late, as on an event loop busy with other work.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.late_by = 0.0
        self._now = start
        self._timers: list[tuple[float, int, FakeTimer, Callable[[], object]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer()
        heapq.heappush(self._timers, (self._now + max(delay, 0.0) + self.late_by, next(self._order), timer, callback))
        return timer

    def advance(self, seconds: float) -> None:
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            due, _, timer, callback = heapq.heappop(self._timers)
            self._now = max(self._now, due)
            if not timer.cancelled:
                callback()
        self._now = target
