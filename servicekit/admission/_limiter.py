"""Slots and a short queue in front of them: admit, queue with a deadline, or refuse at once."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Literal

from resilience import SystemClock, Timer, TimerClock

from ._gradient import GradientLimit
from ._lag import LoopLag
from ._policy import AdmissionPolicy

ShedReason = Literal["queue_full", "queue_timeout", "client_gone"]


class Shed(Exception):
    """The request was not admitted; `reason` says why (a metric label)."""

    def __init__(self, reason: ShedReason) -> None:
        super().__init__(reason)
        self.reason: ShedReason = reason


class Permit:
    """One admitted request's slot. `release` gives it back exactly once."""

    __slots__ = ("_limiter", "_released", "started", "uncrowded")

    def __init__(self, limiter: Limiter, started: float, uncrowded: bool) -> None:
        self._limiter = limiter
        self.started = started
        self.uncrowded = uncrowded
        self._released = False

    def release(self, *, completed: bool) -> None:
        """`completed`: the request ran to its end, so its latency says something about load."""
        if not self._released:
            self._released = True
            self._limiter._release(self, completed)


class _Waiter:
    __slots__ = ("deadline", "future")

    def __init__(self, future: asyncio.Future[Permit], deadline: float) -> None:
        self.future = future
        self.deadline = deadline


# A loop this late has left what it reads waiting longer than any chat's own latency; a GC pause
# or a neighbour's burst is a few tens of milliseconds.
SWAMPED_READ_LAG = 0.25


class Limiter:
    """An adaptive concurrency limit with a FIFO queue whose wait is bounded twice.

    A request joins the queue only if, at the current service time and limit, its turn is
    expected within half of `queue_timeout` (Little's law: position * latency / limit); otherwise it
    is refused at once, which is what keeps refusals fast. A queued request still gives up at
    its deadline. One timer, armed for the head of the queue, expires waiters: FIFO order
    means the head always has the earliest deadline. No locks: asyncio runs each method
    without yielding.
    """

    def __init__(self, policy: AdmissionPolicy | None = None, *, clock: TimerClock | None = None) -> None:
        self.policy = policy or AdmissionPolicy()
        self._clock = clock or SystemClock()
        self.loop_lag = LoopLag(self._clock)
        self._gradient = GradientLimit(self.policy, self._clock.monotonic(), loop_lag=self.loop_lag.take)
        self._in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self._timer: Timer | None = None
        self._latency = 0.0  # smoothed service time, for the expected wait

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def limit(self) -> int:
        return self._gradient.limit

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def min_latency(self) -> float | None:
        return self._gradient.min_latency

    def close(self) -> None:
        """Stop the loop-lag timer and the queue's expiry timer (at shutdown)."""
        self.loop_lag.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def try_acquire(self) -> Permit | None:
        """A permit if a slot is free now and nobody is queued ahead, else None."""
        self.loop_lag.start()
        now = self._clock.monotonic()
        self._tick(now)
        if self._waiters or self._in_flight >= self._gradient.limit or self._swamped():
            self._gradient.held_back()
            return None
        self._in_flight += 1
        return Permit(self, now, self._in_flight <= self.policy.min_limit)

    def would_shed(self, ahead: int = 0) -> bool:
        """Whether a request arriving now would be refused at once (`queue_full`); no side effects.

        The same decision as `try_acquire` then `enqueue`, without taking a slot or starting the
        lag timer: the server's protocol asks it before building a request (`ShedGate`). `ahead`
        counts requests let through that have not asked for their slot yet: they come first.
        """
        if self._swamped():
            return True
        in_line = self._in_flight + ahead
        if not self._waiters and in_line < self._gradient.limit:
            return False
        # Those ahead that find no free slot queue before this one (all of them, once the limit
        # is below what runs: a cut limit frees no slot until enough have finished).
        return not self._worth_queueing(ahead if self._waiters else in_line - max(self._in_flight, self._gradient.limit))

    def refused_at_door(self) -> None:
        """The server refused a request on `would_shed` without asking for a slot: demand the limit held back.

        It also keeps the limit's time: once the door refuses everything, nothing else asks.
        """
        self._gradient.held_back()
        self._tick(self._clock.monotonic())

    def read_late(self) -> None:
        """The server read a request that had waited in the kernel too long to serve (`ShedGate`)."""
        self._gradient.read_late()

    def _tick(self, now: float) -> None:
        limit = self._gradient.limit
        self._gradient.tick(now, self._in_flight)
        if self._waiters and self._gradient.limit > limit:
            self._wake(now)  # the limit grew on the clock: the queue goes first

    async def acquire(self) -> Permit:
        """A permit, waiting in the queue if that is expected to be short; `Shed` otherwise."""
        return self.try_acquire() or await self.wait(self.enqueue())

    def enqueue(self) -> asyncio.Future[Permit]:
        """A place in the queue, or `Shed("queue_full")` at once if the wait would pass the deadline."""
        if not self._worth_queueing():
            raise Shed("queue_full")
        waiter = _Waiter(asyncio.get_running_loop().create_future(), self._clock.monotonic() + self.policy.queue_timeout)
        self._waiters.append(waiter)
        if self._timer is None:
            self._arm_timer()
        return waiter.future

    async def wait(self, place: asyncio.Future[Permit]) -> Permit:
        """The permit for a place in the queue; `Shed("queue_timeout")` at its deadline."""
        try:
            return await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled() and place.exception() is None:
                place.result().release(completed=False)  # handed a slot while being cancelled
            raise

    def _swamped(self) -> bool:
        # The loop ran its last timer this late: whatever it reads now has waited that long in the
        # kernel, and after a stall most of it comes from clients about to give up. Admitted, such
        # runs were cancelled by the thousand when their clients left, and the loop took seconds
        # to come back (docs/overload.md, stop 27). Refused, the backlog clears at a door
        # refusal's cost, and admission resumes at the first timer that runs on time.
        return self.loop_lag.latest >= SWAMPED_READ_LAG

    def _worth_queueing(self, ahead: int = 0) -> bool:
        waiting = len(self._waiters) + ahead
        if waiting >= self.policy.queue_max or self.policy.queue_timeout == 0 or self._swamped():
            return False
        expected_wait = (waiting + 1) * self._latency / max(self._gradient.limit, 1)
        # Half the deadline: the estimate is an average, and a request that waits in vain costs
        # its client the whole deadline for a refusal it could have had at once.
        return expected_wait <= self.policy.queue_timeout / 2

    def _release(self, permit: Permit, completed: bool) -> None:
        now = self._clock.monotonic()
        self._in_flight -= 1
        try:
            if completed:
                latency = now - permit.started
                self._latency = latency if self._latency == 0.0 else 0.9 * self._latency + 0.1 * latency
                self._gradient.observe(latency, self._in_flight + 1, uncrowded=permit.uncrowded, now=now)
        finally:
            # The freed slot goes to the next in line even if the limit's arithmetic fails: a
            # division by a zero latency once raised here and left the queue to its deadlines.
            self._wake(now)

    def _wake(self, now: float) -> None:
        while self._waiters and self._in_flight < self._gradient.limit:
            waiter = self._waiters.popleft()
            if waiter.future.done():
                continue  # its request went away while queued
            self._in_flight += 1
            waiter.future.set_result(Permit(self, now, self._in_flight <= self.policy.min_limit))

    def _arm_timer(self) -> None:
        while self._waiters and self._waiters[0].future.done():
            self._waiters.popleft()
        self._timer = None
        if self._waiters:
            delay = self._waiters[0].deadline - self._clock.monotonic()
            self._timer = self._clock.call_later(delay, self._expire)

    def _expire(self) -> None:
        now = self._clock.monotonic()
        while self._waiters and self._waiters[0].deadline <= now:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(Shed("queue_timeout"))
        self._arm_timer()
