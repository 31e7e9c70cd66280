"""An asyncio-correct circuit breaker on top of pybreaker.

pybreaker cannot await (its `@breaker` on an `async def` counts nothing) and its half-open
state lets every concurrent caller through. So admission is decided here, on the event loop,
with an injectable clock and a single half-open probe; each finished attempt's outcome is
then replayed synchronously through `pybreaker.CircuitBreaker.call`, so pybreaker's own
counters, thresholds, storage and listeners keep the books.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal, TypeAlias

import pybreaker

from ._clock import Clock
from ._events import Event, Hook

State: TypeAlias = Literal["closed", "open", "half-open"]
Admission: TypeAlias = Literal["pass", "probe", "reject"]

_EVENT_FOR_STATE = {
    pybreaker.STATE_OPEN: "breaker_opened",
    pybreaker.STATE_HALF_OPEN: "breaker_half_open",
    pybreaker.STATE_CLOSED: "breaker_closed",
}


class _TransientFailure(Exception):
    """Stands in for an attempt's failure while it is replayed into pybreaker."""


def _succeed() -> None:
    return None


def _fail() -> None:
    raise _TransientFailure


class _StateListener(pybreaker.CircuitBreakerListener):
    def __init__(self, on_change: Callable[[str, str], None]) -> None:
        self._on_change = on_change

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._on_change(old_state.name if old_state else "", new_state.name)


class CircuitBreaker:
    """Opens after `failures` consecutive transient failures; probes once after `reset`.

    Only what the caller reports as transient counts: a 404 or a cancelled attempt does not.
    """

    def __init__(self, target: str, *, failures: int, reset: float, clock: Clock, emit: Hook) -> None:
        self._target = target
        self._reset = reset
        self._clock = clock
        self._emit = emit
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=failures,
            reset_timeout=reset,
            name=target,
            listeners=[_StateListener(self._state_changed)],
        )

    @property
    def state(self) -> State:
        name = self._breaker.current_state
        if name == pybreaker.STATE_OPEN:
            return "open"
        if name == pybreaker.STATE_HALF_OPEN:
            return "half-open"
        return "closed"

    @property
    def remaining_open(self) -> float:
        """Seconds until an open breaker lets its half-open probe through; 0 unless open."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._opened_at + self._reset - self._clock.monotonic())

    @property
    def consecutive_failures(self) -> int:
        return self._breaker.fail_counter

    def admit(self) -> Admission:
        """Decide, without awaiting, whether an attempt may go to the network."""
        state = self.state
        if state == "closed":
            return "pass"
        if state == "open":
            if self._clock.monotonic() - self._opened_at < self._reset:
                return "reject"
            self._breaker.half_open()
        if self._probe_in_flight:
            return "reject"
        self._probe_in_flight = True
        return "probe"

    def record_success(self, admission: Admission) -> None:
        """The peer answered (any answer that is not a transient failure)."""
        if self._counts(admission):
            self._breaker.call(_succeed)

    def record_failure(self, admission: Admission) -> None:
        """The attempt failed transiently (timeout, connect error, 5xx, 429)."""
        if self._counts(admission):
            with contextlib.suppress(_TransientFailure, pybreaker.CircuitBreakerError):
                self._breaker.call(_fail)

    def release(self, admission: Admission) -> None:
        """The attempt ended without a verdict (cancelled): free the probe, count nothing."""
        if admission == "probe":
            self._probe_in_flight = False

    def _counts(self, admission: Admission) -> bool:
        # Only the probe decides a half-open breaker, and nothing that was admitted before the
        # breaker opened may change an open one: late results of old attempts are stale.
        if admission == "probe":
            self._probe_in_flight = False
            return self.state == "half-open"
        return self.state == "closed"

    def _state_changed(self, old: str, new: str) -> None:
        if new == pybreaker.STATE_OPEN:
            self._opened_at = self._clock.monotonic()
        self._emit(
            Event(
                _EVENT_FOR_STATE[new],  # type: ignore[arg-type]
                self._target,
                {"previous": old, "state": new, "reset_after": self._reset},
            )
        )
