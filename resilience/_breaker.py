"""An asyncio-correct circuit breaker: failure rate over a sliding window, or consecutive failures.

Admission is decided on the event loop without awaiting, with an injectable clock and a single
half-open probe. Two ways to decide when to open (resilience4j's and Polly v8's models):

- `"rate"` (the default): the share of failed attempts over the last `window` seconds, once at
  least `min_calls` attempts were seen, or `min_calls` failures in a row. A peer that fails 30%
  of the time keeps the breaker closed (retries absorb that); a peer that is down opens it.
- `"consecutive"`: `failures` transient failures in a row (pybreaker's and Dapr's model). It
  reacts after a handful of calls at low traffic, but a flaky peer under load opens it again and
  again, because some run of failures in a row is bound to happen.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from ._clock import Clock
from ._events import Event, Hook

State: TypeAlias = Literal["closed", "open", "half-open"]
Admission: TypeAlias = Literal["pass", "probe", "reject"]
BreakerMode: TypeAlias = Literal["rate", "consecutive"]

_EVENT_FOR_STATE: dict[State, Literal["breaker_opened", "breaker_half_open", "breaker_closed"]] = {
    "open": "breaker_opened",
    "half-open": "breaker_half_open",
    "closed": "breaker_closed",
}


class SlidingWindow:
    """Attempts and failures over the last `seconds`, kept in `buckets` equal slices.

    Recording costs O(1) (a slice that time has left behind is emptied when the window moves
    past it); the totals are kept as running sums, so reading the rate is O(1) too.
    """

    def __init__(self, seconds: float, *, buckets: int = 10) -> None:
        self._width = seconds / buckets
        self._calls = [0] * buckets
        self._failures = [0] * buckets
        self._head = 0  # the absolute number of the newest slice
        self.calls = 0
        self.failures = 0

    def record(self, now: float, *, failed: bool) -> None:
        slot = int(now / self._width)
        if slot != self._head:
            self._move_to(slot)
        index = slot % len(self._calls)
        self._calls[index] += 1
        self.calls += 1
        if failed:
            self._failures[index] += 1
            self.failures += 1

    def clear(self) -> None:
        self._calls = [0] * len(self._calls)
        self._failures = [0] * len(self._failures)
        self.calls = self.failures = 0

    def _move_to(self, slot: int) -> None:
        size = len(self._calls)
        for step in range(self._head + 1, self._head + 1 + min(slot - self._head, size)):
            index = step % size
            self.calls -= self._calls[index]
            self.failures -= self._failures[index]
            self._calls[index] = self._failures[index] = 0
        self._head = slot


class CircuitBreaker:
    """Opens on failures, rejects while open, then lets exactly one probe decide after `reset`.

    Only what the caller reports as transient counts: a 404 or a cancelled attempt does not.
    Results of attempts admitted before the breaker opened are stale and change nothing.
    """

    def __init__(
        self,
        target: str,
        *,
        reset: float,
        clock: Clock,
        emit: Hook,
        mode: BreakerMode = "rate",
        failures: int = 5,
        window: float = 10.0,
        min_calls: int = 20,
        failure_rate: float = 0.5,
    ) -> None:
        self._target = target
        self._reset = reset
        self._clock = clock
        self._emit = emit
        self.mode: BreakerMode = mode
        self._failures = failures
        self._min_calls = min_calls
        self._failure_rate = failure_rate
        self._window = SlidingWindow(window)
        self._state: State = "closed"
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._consecutive = 0

    @property
    def state(self) -> State:
        return self._state

    @property
    def remaining_open(self) -> float:
        """Seconds until an open breaker lets its half-open probe through; 0 unless open."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._opened_at + self._reset - self._clock.monotonic())

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def window_calls(self) -> int:
        """Attempts counted in the sliding window (rate mode; 0 in consecutive mode)."""
        return self._window.calls

    @property
    def failure_rate(self) -> float:
        """Share of failed attempts in the sliding window (0.0 when it is empty)."""
        return self._window.failures / self._window.calls if self._window.calls else 0.0

    def admit(self) -> Admission:
        """Decide, without awaiting, whether an attempt may go to the network."""
        state = self._state
        if state == "closed":
            return "pass"
        if state == "open":
            if self._clock.monotonic() - self._opened_at < self._reset:
                return "reject"
            self._transition("half-open")
        if self._probe_in_flight:
            return "reject"
        self._probe_in_flight = True
        return "probe"

    def record_success(self, admission: Admission) -> None:
        """The peer answered (any answer that is not a transient failure)."""
        if admission == "probe":  # only the probe moves a breaker out of half-open
            self._probe_in_flight = False
            self._transition("closed")
        elif self._state == "closed":
            self._consecutive = 0
            if self.mode == "rate":
                self._window.record(self._clock.monotonic(), failed=False)

    def record_failure(self, admission: Admission) -> None:
        """The attempt failed transiently (timeout, connect error, 5xx, 429)."""
        if admission == "probe":
            self._probe_in_flight = False
            self._transition("open")
        elif self._state == "closed":
            self._consecutive += 1
            if self.mode == "rate":
                self._window.record(self._clock.monotonic(), failed=True)
            if self._tripped():
                self._transition("open")

    def release(self, admission: Admission) -> None:
        """The attempt ended without a verdict (cancelled): free the probe, count nothing."""
        if admission == "probe":
            self._probe_in_flight = False

    def _tripped(self) -> bool:
        if self.mode == "consecutive":
            return self._consecutive >= self._failures
        # A run of `min_calls` failures in a row opens it too: a peer that dies after a busy,
        # healthy spell fails slowly (timeouts), and the window's old successes would outweigh
        # its failures for seconds. A 30%-flaky peer makes a run of 20 once in ~10^10 attempts.
        calls = self._window.calls
        return self._consecutive >= self._min_calls or (
            calls >= self._min_calls and self._window.failures >= self._failure_rate * calls
        )

    def _transition(self, state: State) -> None:
        previous, self._state = self._state, state
        fields: dict[str, object] = {"previous": previous, "state": state, "reset_after": self._reset}
        if state == "open":
            self._opened_at = self._clock.monotonic()
            if previous == "closed":
                fields.update(
                    mode=self.mode,
                    consecutive_failures=self._consecutive,
                    window_calls=self._window.calls,
                    failure_rate=round(self.failure_rate, 3),
                )
        elif state == "closed":
            # A recovered peer starts with a clean record: failures from before the outage
            # must not count against it.
            self._consecutive = 0
            self._window.clear()
        self._emit(Event(_EVENT_FOR_STATE[state], self._target, fields))
