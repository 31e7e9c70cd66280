"""How late the event loop runs a timer: the queueing for the CPU inside this process."""

from __future__ import annotations

from collections.abc import Callable

from resilience import Timer, TimerClock

INTERVAL = 0.025  # seconds between readings: 40 cheap callbacks a second


class LoopLag:
    """The worst lateness of a repeating timer since the last `take`.

    A request's latency rises both when this process queues for the CPU and when something it
    waits on (the model, analytics) is slower; only the first is ours to fix by admitting less.
    A loop that runs its timers on time is not queueing, whatever the latency says.
    """

    def __init__(self, clock: TimerClock) -> None:
        self._clock = clock
        self.on_tick: Callable[[], None] | None = None  # called after each reading (metrics refresh)
        self._worst = 0.0
        self.last = 0.0  # the worst lateness of the previous window, for the metrics
        self.latest = 0.0  # the lateness of the latest reading: how long a request read now has waited
        self._timer: Timer | None = None
        self._due = 0.0

    @property
    def running(self) -> bool:
        return self._timer is not None

    def start(self) -> None:
        """Start measuring (needs the running loop); idempotent."""
        if self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        self._due = self._clock.monotonic() + INTERVAL
        self._timer = self._clock.call_later(INTERVAL, self._tick)

    def _tick(self) -> None:
        self.latest = self._clock.monotonic() - self._due
        self._worst = max(self._worst, self.latest)
        self._schedule()
        if self.on_tick is not None:
            self.on_tick()

    def take(self) -> float:
        """The worst lateness since the last call, and start a new window."""
        self.last, self._worst = self._worst, 0.0
        return self.last

    def stop(self) -> None:
        self.latest = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
